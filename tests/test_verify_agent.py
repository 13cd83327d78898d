"""The real agent signs what it uploads: a recording made through a real nginx (with a kill -9
and a restart in the middle) verifies OK over HTTP and from a copy, with the restart's gap given
the agent's own reason; each kind of tampering with a copy gets its verdict and a failing exit.

The recording is made once for the module (it takes ~30 s of real video) and copied per test.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cli import main
from agent.core.keys import generate_private_key, public_key_text
from agent.spool.manifest import ManifestSigner, SegmentFacts, read_manifest
from agent.tools.station_key import load_or_make_key, write_key_files
from tests.peers.agent import AgentProcess, wait_until
from tests.peers.config import STATION, agent_config, write_toml
from tests.peers.nginx import Nginx, check_installed
from tests.peers.signed import write_recording

FIRST_RUN_MANIFESTS = 5  # uploaded before the kill -9
SECOND_RUN_MANIFESTS = 5  # after the restart
UPLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Recorded:
    nginx: Nginx
    station_url: str
    upstream: Path  # a copy of the station's folder, taken after a clean stop
    public_key: str
    key_dir: Path  # the station key's folder (its private key signs replayed manifests)


def manifests(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/*.json"))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    check_installed()
    base = tmp_path_factory.mktemp("signed-agent")
    nginx = Nginx(base)
    nginx.start()
    try:
        key_dir = base / "etc"
        key_dir.mkdir()
        key, new = load_or_make_key(key_dir)
        write_key_files(key_dir, key, new, owner=None)
        data = agent_config(
            base,
            spool={"signing_key_file": str(key_dir / "signing-key")},
            uplink={"http": {"url": nginx.url, "archive_interval_s": 1}},
        )
        config = write_toml(base / "station.toml", data)
        station_dir = nginx.root / STATION
        agent = AgentProcess(config).start()
        try:
            assert wait_until(
                lambda: len(manifests(station_dir)) >= FIRST_RUN_MANIFESTS, UPLOAD_TIMEOUT_S
            ), agent.stderr()[-2000:]
            agent.kill()  # kill -9 in the middle of the recording
            before = len(manifests(station_dir))
            agent = AgentProcess(config).start()
            assert wait_until(
                lambda: len(manifests(station_dir)) >= before + SECOND_RUN_MANIFESTS,
                UPLOAD_TIMEOUT_S,
            ), agent.stderr()[-2000:]
            assert agent.terminate() == 0, agent.stderr()[-2000:]
        finally:
            agent.kill()
        upstream = base / "copy" / STATION
        shutil.copytree(station_dir, upstream)
        yield Recorded(
            nginx, f"{nginx.url}/{STATION}", upstream, public_key_text(key.public_key()), key_dir
        )
    finally:
        nginx.stop()


@pytest.fixture
def copy(recorded: Recorded, tmp_path: Path) -> Path:
    """A fresh copy of the recorded station folder to tamper with."""
    target = tmp_path / STATION
    shutil.copytree(recorded.upstream, target)
    return target


def verify_json(capsys: pytest.CaptureFixture[str], where: str, *args: str) -> tuple[int, dict]:
    code = main(["verify", where, *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def by_seq(report: dict) -> dict[int, dict]:
    return {s["seq"]: s for s in report["segments"]}


def test_the_real_agents_recording_verifies_with_the_restart_gap_explained(
    recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    for where in (recorded.station_url, str(recorded.upstream)):  # over HTTP, and a copy
        code, report = verify_json(capsys, where, "--key", recorded.public_key)
        assert code == 0, report
        assert {s["verdict"] for s in report["segments"]} == {"OK"}
        assert len(report["segments"]) >= FIRST_RUN_MANIFESTS + SECOND_RUN_MANIFESTS
        reasons = [r for gap in report["gaps"] for r in gap["reasons"]]
        assert any("without a clean shutdown" in r for r in reasons), report["gaps"]
        assert report["coverage"] > 0.5
    code = main(["verify", str(recorded.upstream), "--key", recorded.public_key])
    out = capsys.readouterr().out
    assert code == 0 and out.splitlines()[-1].startswith("verdict: OK")
    assert max(len(line) for line in out.splitlines()) <= 80


def recording(folder: Path) -> Path:
    [one] = [p for p in folder.iterdir() if p.is_dir()]
    return one


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def swap(a: Path, b: Path) -> None:
    tmp = a.with_suffix(".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def replay_from(source: Path, rec: Path, seq: int) -> None:
    for suffix in (".ts", ".json"):
        shutil.copy(source / f"{seq:08d}{suffix}", rec / f"{seq:08d}{suffix}")


Tamper = Callable[[Path, Recorded], dict[int, str]]


def flip_segment(rec: Path, _: Recorded) -> dict[int, str]:
    flip(rec / "00000002.ts")
    return {2: "NOT OK"}


def flip_manifest(rec: Path, _: Recorded) -> dict[int, str]:
    flip(rec / "00000002.json")
    return {2: "NOT OK"}


def delete_segment(rec: Path, _: Recorded) -> dict[int, str]:
    (rec / "00000002.ts").unlink()
    return {2: "MISSING"}


def delete_manifest(rec: Path, _: Recorded) -> dict[int, str]:
    (rec / "00000002.json").unlink()
    return {2: "MISSING"}


def swap_segments(rec: Path, _: Recorded) -> dict[int, str]:
    swap(rec / "00000001.ts", rec / "00000002.ts")
    return {1: "NOT OK", 2: "NOT OK"}


def replay_other_station(rec: Path, recorded: Recorded) -> dict[int, str]:
    other = write_recording(
        rec.parent.parent / "other", generate_private_key(), "TEST-0002", rec.name, 4
    )
    replay_from(other, rec, 2)
    return {2: "FOREIGN"}


def replay_other_recording(rec: Path, recorded: Recorded) -> dict[int, str]:
    key, _ = load_or_make_key(recorded.key_dir)  # the station's own key, another recording
    other = write_recording(rec.parent.parent / "other", key, STATION, "20250101T000000Z-0000aa", 4)
    replay_from(other, rec, 2)
    return {2: "FOREIGN"}


def sign_with_another_key(rec: Path, _: Recorded) -> dict[int, str]:
    manifest = read_manifest((rec / "00000002.json").read_bytes())
    facts = SegmentFacts(
        manifest.recording_id, manifest.seq, manifest.started_utc, manifest.duration_s,
        manifest.nbytes, manifest.segment_sha256,
    )  # fmt: skip
    forger = ManifestSigner(generate_private_key(), STATION, "forged")
    (rec / "00000002.json").write_bytes(forger.sign(facts, manifest.prev_sha256, []))
    return {2: "NOT OK"}


def truncate_end(rec: Path, _: Recorded) -> dict[int, str]:
    last = max(int(p.stem) for p in rec.glob("*.json"))
    for seq in (last - 1, last):
        (rec / f"{seq:08d}.ts").unlink()
        (rec / f"{seq:08d}.json").unlink()
    return {last - 1: "MISSING", last: "MISSING"}  # the archive playlist still lists them


@pytest.mark.parametrize(
    "tamper",
    [
        flip_segment, flip_manifest, delete_segment, delete_manifest, swap_segments,
        replay_other_station, replay_other_recording, sign_with_another_key, truncate_end,
    ],
)  # fmt: skip
def test_tampering_with_the_real_agents_recording_is_seen(
    tamper: Tamper, recorded: Recorded, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = tamper(recording(copy), recorded)
    code, report = verify_json(capsys, str(copy), "--key", recorded.public_key)
    assert code == 1
    got = by_seq(report)
    assert {seq: got[seq]["verdict"] for seq in expected} == expected
    others = {s["verdict"] for seq, s in got.items() if seq not in expected}
    assert others == {"OK"}, report["segments"]


def test_another_key_fails_every_segment(
    recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = public_key_text(generate_private_key().public_key())
    code, report = verify_json(capsys, str(recorded.upstream), "--key", wrong, "--station", STATION)
    assert code == 1 and {s["verdict"] for s in report["segments"]} == {"NOT OK"}
