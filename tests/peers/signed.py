"""Synthetic signed recordings in the upload layout, for verifier tests and the signing bench.

    folder = write_recording(tmp / "AZ-0001", key, "AZ-0001", "20261123T061502Z-3fa9c2", 50)

writes `{folder}/{recording_id}/{seq:08d}.ts` (random bytes), `{seq:08d}.json` (signed with
`key` by the same ManifestSigner the agent uses, chained) and `archive.m3u8`, plus
`{folder}/recordings.json`. `notes` adds signed notes to chosen manifests; `skip` leaves seqs out
(times go on, as if the agent had lost them).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core.clock import parse_utc, utc_iso
from agent.spool.manifest import GENESIS_SHA256, ManifestSigner, SegmentFacts, file_sha256

START_UTC = "2026-11-23T06:15:02.000Z"
SEGMENT_S = 2.0


def signed_chain(
    key: Ed25519PrivateKey,
    station_id: str,
    recording_id: str,
    count: int,
    segment_bytes: int = 2_000,
    *,
    start_utc: str = START_UTC,
    notes: Mapping[int, list[dict[str, Any]]] | None = None,
    skip: Iterable[int] = (),
    pauses_s: Mapping[int, float] | None = None,
    first_signed: int = 0,
) -> list[tuple[int, bytes | None, bytes | None]]:
    """(seq, segment bytes or None when skipped, manifest bytes or None before `first_signed`)
    for a whole chain. A seq in `pauses_s` starts that many seconds late (a restart)."""
    signer = ManifestSigner(key, station_id, "test")
    skipped = set(skip)
    start_s = parse_utc(start_utc)
    prev, out = GENESIS_SHA256, []
    for seq in range(count):
        start_s += (pauses_s or {}).get(seq, 0.0)
        data = os.urandom(segment_bytes)
        facts = SegmentFacts(
            recording_id, seq, utc_iso(start_s), SEGMENT_S, len(data),
            hashlib.sha256(data).hexdigest(),
        )  # fmt: skip
        manifest = None
        if seq >= first_signed:
            manifest = signer.sign(facts, prev, list((notes or {}).get(seq, [])))
            prev = file_sha256(manifest)
        out.append((seq, None if seq in skipped else data, manifest))
        start_s += SEGMENT_S
    return out


def write_recording(
    station_dir: Path,
    key: Ed25519PrivateKey,
    station_id: str,
    recording_id: str,
    count: int,
    **options: Any,
) -> Path:
    """One recording under `station_dir` (see the module doc); returns its folder. Skipped
    seqs have neither segment nor manifest upstream, as the agent uploads neither."""
    folder = station_dir / recording_id
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["#EXTM3U", "#EXT-X-VERSION:8", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0"]
    chain = signed_chain(key, station_id, recording_id, count, **options)
    for seq, data, manifest in chain:
        if data is not None:
            (folder / f"{seq:08d}.ts").write_bytes(data)
            if manifest is not None:
                (folder / f"{seq:08d}.json").write_bytes(manifest)
        else:
            lines.append("#EXT-X-GAP")
        lines += [f"#EXTINF:{SEGMENT_S:.3f},", f"{seq:08d}.ts"]
    (folder / "archive.m3u8").write_text("\n".join(lines) + "\n")
    _add_to_index(station_dir, station_id, recording_id, count)
    return folder


def _add_to_index(station_dir: Path, station_id: str, recording_id: str, count: int) -> None:
    index = station_dir / "recordings.json"
    document: dict[str, Any] = {"format": 1, "station_id": station_id, "recordings": []}
    if index.exists():
        document = json.loads(index.read_text())
    document["recordings"].append(
        {
            "recording_id": recording_id,
            "first_seq": 0,
            "last_seq": count - 1,
            "archive": f"{recording_id}/archive.m3u8",
        }
    )
    index.write_text(json.dumps(document))
