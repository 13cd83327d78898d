"""What signing costs (issue 14 targets: under 1 ms per segment, under 1 % of upload bytes) and
how fast a 14-hour recording verifies.

    .venv/bin/python -m bench.signing [--segments 25000] [--repeats 400]

1. Segments: real 2-second segments from the agent's encoder (libx264 veryfast, the VBV cap,
   MPEG-TS) of a room scene with people walking and sensor noise, at the lowest and the top
   rung of the default ladder for a 720p camera.
2. Signing cost per segment, paired with the SHA-256 of the same segment in the same loop (the
   spool hashes every segment anyway): ManifestSigner.sign alone, and ManifestChain.append as
   the spool runs it (sign, hash the manifest, look up the previous one, insert it, inside a
   transaction on a real SQLite file in WAL mode). Medians over --repeats rounds.
3. Bytes: a manifest's size as a share of what is uploaded per segment (segment + manifest
   bodies), and with the HTTP request heads of both PUTs (what httpx sends for them).
4. Verification: a synthetic chain of --segments signed manifests and 1 KB segments on disk,
   read and checked by the verifier's own code (station-agent verify), against the floor of
   reading and hashing the same files.

Exit 1 when signing takes over 1 ms per segment or manifests exceed 1 % of the upload bytes at
either rung.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import cv2
import httpx

from agent.adapt.ladder import LADDER_16_9, Rung
from agent.core.keys import generate_private_key
from agent.encode.encoder import PTS_HZ, open_video_encoder
from agent.encode.segmenter import SegmentWriter
from agent.spool.chain import ManifestChain
from agent.spool.manifest import ManifestSigner, SegmentFacts
from agent.tools.verify import KeyRing, verify_station
from agent.tools.verify_files import FolderStore, read_station_or_recording
from tests.peers.signed import write_recording
from tests.peers.video import SceneVideo

T = TypeVar("T")
STATION = "AZ-0001"
RECORDING = "20261123T061502Z-3fa9c2"
SEGMENT_S = 2
SEGMENTS_ENCODED = 4  # per rung; the first one carries no special cost (every segment has an IDR)
LOWEST, TOP = LADDER_16_9[0], LADDER_16_9[6]  # 240p10 150k and 720p30 2.5M (a 720p camera)
SIGN_TARGET_US = 1000.0
BYTES_TARGET = 0.01
TABLES = """
CREATE TABLE IF NOT EXISTS segments (seq INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS lost (seq INTEGER PRIMARY KEY, reason TEXT, cause TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def encoded_segments(rung: Rung) -> list[bytes]:
    encoder = open_video_encoder("libx264", rung, "veryfast", 0, rung.fps * SEGMENT_S)
    scene = SceneVideo("camera", rung.width, rung.height)
    writer, out = SegmentWriter(), []
    step, per_segment = PTS_HZ // rung.fps, rung.fps * SEGMENT_S
    for k in range(per_segment * SEGMENTS_ENCODED):
        if k % per_segment == 0:
            if writer.open:
                out.append(writer.finish(k * step).data)
            writer.begin(rung, "2026-11-23T06:00:00.000Z", k * step, "libx264", False)
        i420 = cv2.cvtColor(scene.frame(k / rung.fps), cv2.COLOR_BGR2YUV_I420)
        writer.add(encoder.encode(i420, k * step, keyframe=k % per_segment == 0))
    writer.add(encoder.flush())
    out.append(writer.finish(per_segment * SEGMENTS_ENCODED * step).data)
    return out


def timed_us(work: Callable[[], T]) -> tuple[T, float]:
    """What `work()` returns, and how long it took in microseconds."""
    start = time.perf_counter_ns()
    result = work()
    return result, (time.perf_counter_ns() - start) / 1000


def signing_costs(segment: bytes, repeats: int, db_path: Path) -> dict[str, float]:
    """Median µs per segment: SHA-256 of the segment, sign, and the spool's append."""
    signer = ManifestSigner(generate_private_key(), STATION, "0.1.0")
    chain = ManifestChain(signer)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(TABLES)
    chain.open(db)
    sha_us, sign_us, append_us = [], [], []
    for seq in range(repeats):
        digest, took_us = timed_us(lambda: hashlib.sha256(segment).hexdigest())
        sha_us.append(took_us)
        facts = SegmentFacts(RECORDING, seq, "2026-11-23T06:15:02.133Z", 2.0, len(segment), digest)
        sign_us.append(timed_us(lambda: signer.sign(facts, "0" * 64, []))[1])  # noqa: B023
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO segments (seq) VALUES (?)", (seq,))
        append_us.append(timed_us(lambda: chain.append(db, facts))[1])  # noqa: B023
        db.execute("COMMIT")
    db.close()
    return {
        "sha256_us": statistics.median(sha_us),
        "sign_us": statistics.median(sign_us),
        "append_us": statistics.median(append_us),
    }


def request_head_bytes(name: str, body: bytes, content_type: str, sha256: str | None) -> int:
    """The request line and headers httpx sends for the uploader's PUT of `name`."""
    headers = {
        "Authorization": "Bearer " + "t" * 43,  # a 32-byte token in base64url
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "User-Agent": "station-agent",
    }
    if sha256:
        headers["X-Content-SHA256"] = sha256
    url = f"https://ingest.example.org/stations/{STATION}/{RECORDING}/{name}"
    with httpx.Client(headers={"User-Agent": "station-agent"}) as client:
        request = client.build_request("PUT", url, content=body, headers=headers)
    head = f"PUT {request.url.raw_path.decode()} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.multi_items()) + "\r\n"
    return len(head.encode())


def rung_figures(rung: Rung, repeats: int, tmp: Path) -> dict[str, float]:
    segments = encoded_segments(rung)
    segment = sorted(segments, key=len)[len(segments) // 2]  # the median-size segment
    costs = signing_costs(segment, repeats, tmp / f"index-{rung.height}.sqlite")
    signer = ManifestSigner(generate_private_key(), STATION, "0.1.0")
    sha = hashlib.sha256(segment).hexdigest()
    facts = SegmentFacts(RECORDING, 12345, "2026-11-23T06:15:02.133Z", 2.0, len(segment), sha)
    manifest = signer.sign(facts, "0" * 64, [])
    head_ts = request_head_bytes("00012345.ts", segment, "video/mp2t", sha)
    head_json = request_head_bytes("00012345.json", manifest, "application/json", None)
    body_share = len(manifest) / (len(segment) + len(manifest))
    wire = len(manifest) + head_json
    wire_share = wire / (len(segment) + head_ts + wire)
    return costs | {
        "segment_bytes": len(segment),
        "manifest_bytes": len(manifest),
        "body_share": body_share,
        "wire_share": wire_share,
    }


def verification_speed(count: int, tmp: Path) -> dict[str, float]:
    key = generate_private_key()
    station = tmp / STATION
    made_s = time.perf_counter()
    write_recording(station, key, STATION, RECORDING, count, segment_bytes=1000)
    made_s = time.perf_counter() - made_s
    floor_s = time.perf_counter()
    for path in sorted((station / RECORDING).iterdir()):
        hashlib.sha256(path.read_bytes()).hexdigest()
    floor_s = time.perf_counter() - floor_s
    verify_s = time.perf_counter()
    layout = read_station_or_recording(FolderStore(station), STATION)
    result = verify_station(STATION, layout.recordings, KeyRing({STATION: key.public_key()}))
    verify_s = time.perf_counter() - verify_s
    if not result.ok or result.counts()["OK"] != count:
        raise RuntimeError(f"the synthetic chain did not verify: {result.counts()}")
    return {"made_s": made_s, "floor_s": floor_s, "verify_s": verify_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=25_000, help="chain length to verify")
    parser.add_argument("--repeats", type=int, default=400, help="signing rounds per rung")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-signing-"))
    failed, worst_wire = [], 0.0
    try:
        print(f"{'rung':<22} {'segment':>9} {'manifest':>8} {'share':>6} {'+heads':>6} "
              f"{'sha256':>8} {'sign':>7} {'append':>7} {'ratio':>6}")  # fmt: skip
        for label, rung in (("lowest", LOWEST), ("top", TOP)):
            f = rung_figures(rung, args.repeats, tmp)
            ratio = f["append_us"] / f["sha256_us"]
            worst_wire = max(worst_wire, f["wire_share"])
            print(
                f"{label + ' ' + rung.name:<22} {f['segment_bytes']:>9,} "
                f"{f['manifest_bytes']:>8} {100 * f['body_share']:>5.2f}% "
                f"{100 * f['wire_share']:>5.2f}% {f['sha256_us']:>6.0f}us "
                f"{f['sign_us']:>5.0f}us {f['append_us']:>5.0f}us {ratio:>5.2f}x"
            )
            if f["append_us"] > SIGN_TARGET_US:
                failed.append(f"{label}: signing {f['append_us']:.0f} us > 1 ms per segment")
            if f["body_share"] > BYTES_TARGET:
                failed.append(f"{label}: manifests {100 * f['body_share']:.2f} % > 1 % of bytes")
        print(
            "share: manifest / (segment + manifest) bodies; +heads: with both PUTs' request "
            "heads;\nratio: append / SHA-256 of the same segment (medians, same loop)"
        )
        v = verification_speed(args.segments, tmp)
        per_us = 1e6 * v["verify_s"] / args.segments
        print(
            f"verify {args.segments:,} segments (1 KB each): {v['verify_s']:.2f} s "
            f"({per_us:.0f} us a segment); reading and hashing the same files alone: "
            f"{v['floor_s']:.2f} s ({v['verify_s'] / v['floor_s']:.1f}x); writing the chain "
            f"took {v['made_s']:.1f} s"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        print("TARGET MISSED: " + "; ".join(failed))
        sys.exit(1)
    print(
        "targets met: signing < 1 ms per segment, manifest bytes < 1 % of upload bytes "
        f"(counting the manifest PUT's request head too: up to {100 * worst_wire:.2f} %)"
    )


if __name__ == "__main__":
    main()
