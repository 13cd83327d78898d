"""The verifier (`station-agent verify`) on synthetic signed recordings in the upload layout:
each kind of tampering gets its verdict and a non-zero exit; honest gaps verify as gaps."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest

from agent.cli import main
from agent.core.keys import generate_private_key, public_key_text
from agent.spool.manifest import (
    NOTE_LOST,
    NOTE_START,
    ManifestSigner,
    SegmentFacts,
    read_manifest,
)
from agent.tools.verify_files import VerifyInputError, keys_file_line, read_keys_file
from tests.peers.signed import write_recording

STATION, OTHER = "AZ-0001", "AZ-0002"
REC, REC2 = "20261123T061502Z-3fa9c2", "20261123T101502Z-77aa01"
KEY, OTHER_KEY = generate_private_key(), generate_private_key()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pub(key: object = KEY) -> str:
    return public_key_text(key.public_key())  # type: ignore[attr-defined]


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["verify", *args])
    return code, capsys.readouterr().out


def verify_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code, out = verify(capsys, *args, "--json")
    return code, json.loads(out)


def verdicts(data: dict) -> dict[int, str]:
    return {s["seq"]: s["verdict"] for s in data["segments"]}


@pytest.fixture
def station(tmp_path: Path) -> Path:
    folder = tmp_path / STATION
    write_recording(folder, KEY, STATION, REC, 30)
    return folder


def test_an_untouched_recording_verifies_ok_with_full_coverage(
    station: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = verify(capsys, str(station), "--key", pub())
    assert code == 0, out
    assert "00000000-00000029 OK " in out
    assert "recorded 1m00s (100.0 %), missing 0.0s in 0 gap(s)" in out
    assert out.splitlines()[-1] == "verdict: OK"
    assert max(len(line) for line in out.splitlines()) <= 80
    code, data = verify_json(capsys, str(station), "--key", pub())
    assert code == 0 and data["verdict"] == "OK" and data["coverage"] == 1.0
    assert set(verdicts(data).values()) == {"OK"} and len(data["segments"]) == 30


def test_one_recording_folder_and_a_key_file_work_too(
    station: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "AZ-0001.pub"
    key_file.write_text(pub() + "\n")
    code, out = verify(capsys, str(station / REC), "--key", str(key_file))
    assert code == 0, out
    assert out.startswith(f"station {STATION}  key ")


def flip(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def test_each_kind_of_tampering_gets_its_verdict_and_a_failing_exit(
    station: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = station / REC
    flip(rec / "00000003.ts")  # a byte in a segment
    flip(rec / "00000005.json", 40)  # a byte in a manifest
    (rec / "00000008.ts").unlink()  # a segment deleted
    (rec / "00000010.json").unlink()  # a manifest deleted
    for name in ("00000012.ts", "00000013.ts"):  # two segments swapped
        (rec / name).rename(rec / f"{name}.x")
    (rec / "00000012.ts.x").rename(rec / "00000013.ts")
    (rec / "00000013.ts.x").rename(rec / "00000012.ts")
    other = write_recording(tmp_path / OTHER, OTHER_KEY, OTHER, REC, 30)  # another station
    for suffix in (".ts", ".json"):
        shutil.copy(other / f"00000016{suffix}", rec / f"00000016{suffix}")
    again = write_recording(tmp_path / "again", KEY, STATION, REC2, 30)  # another recording
    for suffix in (".ts", ".json"):
        shutil.copy(again / f"00000018{suffix}", rec / f"00000018{suffix}")
    for seq in (27, 28, 29):  # the chain truncated at the end (the playlist still lists them)
        (rec / f"{seq:08d}.ts").unlink()
        (rec / f"{seq:08d}.json").unlink()
    code, data = verify_json(capsys, str(station), "--key", pub())
    assert code == 1
    got = verdicts(data)
    assert {seq: got[seq] for seq in (3, 5, 8, 10, 12, 13, 16, 18, 27, 28, 29)} == {
        3: "NOT OK", 5: "NOT OK", 8: "MISSING", 10: "MISSING", 12: "NOT OK", 13: "NOT OK",
        16: "FOREIGN", 18: "FOREIGN", 27: "MISSING", 28: "MISSING", 29: "MISSING",
    }  # fmt: skip
    assert {v for seq, v in got.items() if seq not in (3, 5, 8, 10, 12, 13, 16, 18)} - {
        "MISSING"
    } == {"OK"}
    reasons = {s["seq"]: s["reason"] for s in data["segments"]}
    assert "SHA-256" in reasons[3] and "manifest" in reasons[5]
    assert reasons[10] == "manifest absent" and reasons[8].startswith("segment absent")
    assert OTHER in reasons[16] and REC2 in reasons[18]
    assert data["verdict"] == "NOT OK"
    assert data["missing_s"] > 0
    code, out = verify(capsys, str(station), "--key", pub())
    assert code == 1 and max(len(line) for line in out.splitlines()) <= 80
    assert out.splitlines()[-1].startswith("verdict: NOT OK (")


def test_a_wrong_key_fails_every_segment_and_a_known_other_key_is_foreign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    station = tmp_path / STATION
    write_recording(station, OTHER_KEY, STATION, REC, 10)  # signed with a key not AZ-0001's
    keys = tmp_path / "keys.csv"
    keys.write_text(
        f"station_id,public_key,fingerprint\n{keys_file_line(STATION, KEY.public_key())}\n"
    )
    code, data = verify_json(capsys, str(station), "--keys", str(keys))
    assert code == 1 and set(verdicts(data).values()) == {"NOT OK"}
    assert "signature" in data["segments"][0]["reason"]
    with keys.open("a") as fh:
        fh.write(keys_file_line(OTHER, OTHER_KEY.public_key()) + "\n")
    code, data = verify_json(capsys, str(station), "--keys", str(keys))
    assert code == 1 and set(verdicts(data).values()) == {"FOREIGN"}


def test_a_loss_the_agent_reported_is_a_gap_with_its_reason_not_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    station = tmp_path / STATION
    reason = "spool full: evicted before upload"
    note = {
        "kind": NOTE_LOST,
        "first_seq": 10,
        "last_seq": 11,
        "cause": "evicted",
        "reason": reason,
    }
    write_recording(station, KEY, STATION, REC, 20, skip=[10, 11], notes={12: [note]})
    code, data = verify_json(capsys, str(station), "--key", pub())
    assert code == 0, data
    assert verdicts(data)[10] == verdicts(data)[11] == "LOST"
    [gap] = data["gaps"]
    assert gap["seconds"] == pytest.approx(4.0)
    assert gap["reasons"] == [f"segments 10-11 lost: {reason}"]
    code, out = verify(capsys, str(station), "--key", pub())
    assert f"segments 10-11 lost: {reason}" in out
    assert out.splitlines()[-1] == "verdict: OK; 2 reported lost by the agent"


def test_a_restart_gap_verifies_with_the_agents_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    station = tmp_path / STATION
    note = {"kind": NOTE_START, "previous_stop": "unclean", "at_utc": "2026-11-23T06:15:50Z"}
    write_recording(station, KEY, STATION, REC, 20, pauses_s={12: 7.0}, notes={12: [note]})
    code, data = verify_json(capsys, str(station), "--key", pub())
    assert code == 0
    [gap] = data["gaps"]
    assert gap["seconds"] == pytest.approx(7.0)
    assert "without a clean shutdown" in gap["reasons"][0]
    assert data["recorded_s"] == pytest.approx(40.0)


def test_segments_without_manifests_are_unsigned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = write_recording(tmp_path / STATION, KEY, STATION, REC, 5)
    for manifest in rec.glob("*.json"):
        manifest.unlink()
    code, data = verify_json(capsys, str(tmp_path / STATION), "--key", pub())
    assert code == 1 and set(verdicts(data).values()) == {"UNSIGNED"}


def test_segments_before_signing_began_are_unsigned_and_the_rest_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    note = {"kind": NOTE_START, "previous_stop": "unknown", "at_utc": "2026-11-23T06:15:10Z"}
    write_recording(tmp_path / STATION, KEY, STATION, REC, 10, first_signed=4, notes={4: [note]})
    code, data = verify_json(capsys, str(tmp_path / STATION), "--key", pub())
    assert code == 1
    assert verdicts(data) == {seq: "UNSIGNED" if seq < 4 else "OK" for seq in range(10)}


def test_a_fork_in_the_chain_is_not_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_recording(tmp_path / STATION, KEY, STATION, REC, 10)
    six = read_manifest((rec / "00000006.json").read_bytes())
    data = (rec / "00000007.ts").read_bytes()
    facts = SegmentFacts(REC, 7, "2026-11-23T06:15:16.000Z", 2.0, len(data), sha256_hex(data))
    # a second history: segment 7 signed again after 5, as if 6 had never been
    (rec / "00000007.json").write_bytes(
        ManifestSigner(KEY, STATION, "test").sign(facts, six.prev_sha256, [])
    )
    code, result = verify_json(capsys, str(tmp_path / STATION), "--key", pub())
    assert code == 1 and verdicts(result)[7] == "NOT OK" and verdicts(result)[6] == "OK"
    assert "fork" in result["segments"][7]["reason"]


def test_two_recordings_of_a_station_and_the_gap_between_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    station = tmp_path / STATION
    write_recording(station, KEY, STATION, REC, 10)  # 06:15:02 .. 06:15:22
    note = {"kind": NOTE_START, "previous_stop": "none", "at_utc": "2026-11-23T06:16:00Z"}
    write_recording(
        station, KEY, STATION, REC2, 10, start_utc="2026-11-23T06:16:02.000Z", notes={0: [note]}
    )
    code, data = verify_json(capsys, str(station), "--key", pub())
    assert code == 0 and data["recordings"] == [REC, REC2]
    [gap] = data["gaps"]
    assert gap["seconds"] == pytest.approx(40.0)
    assert "new recording" in gap["reasons"][0] and "between two recordings" in gap["detail"]


def test_a_coverage_window_counts_what_is_outside_the_recording(
    station: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = verify_json(
        capsys, str(station), "--key", pub(),
        "--from", "2026-11-23T06:15:00Z", "--until", "2026-11-23T06:17:02Z",
    )  # fmt: skip
    assert code == 0
    assert [g["seconds"] for g in data["gaps"]] == pytest.approx([2.0, 60.0])
    assert data["coverage"] == pytest.approx(60 / 122, abs=1e-4)


def test_report_over_many_stations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "stations"
    write_recording(root / STATION, KEY, STATION, REC, 10)
    rec = write_recording(root / OTHER, OTHER_KEY, OTHER, REC, 10)
    (rec / "00000004.ts").unlink()
    keys = tmp_path / "keys.csv"
    third = generate_private_key()
    # two technicians' files concatenated: repeated headers are fine
    keys.write_text(
        "station_id,public_key,fingerprint\n"
        + keys_file_line(STATION, KEY.public_key()) + "\n"
        + "station_id,public_key,fingerprint\n"
        + keys_file_line(OTHER, OTHER_KEY.public_key()) + "\n"
        + keys_file_line("AZ-0003", third.public_key()) + "\n"
    )  # fmt: skip
    code, out = verify(capsys, "--report", "csv", "--keys", str(keys), str(root))
    assert code == 1
    rows = {r["station_id"]: r for r in csv.DictReader(io.StringIO(out))}
    assert rows[STATION]["verdict"] == "OK" and float(rows[STATION]["coverage"]) == 1.0
    assert rows[OTHER]["verdict"] == "NOT OK" and rows[OTHER]["missing"] == "1"
    assert float(rows[OTHER]["longest_gap_s"]) == pytest.approx(2.0)
    assert rows["AZ-0003"]["verdict"] == "NO DATA"
    code, out = verify(capsys, "--report", "json", "--keys", str(keys), str(root))
    assert [r["station_id"] for r in json.loads(out)] == [STATION, OTHER, "AZ-0003"]


def test_keys_file_problems_name_the_line() -> None:
    line = keys_file_line(STATION, KEY.public_key())
    assert set(read_keys_file(f"# collected 2026-11-20\n{line}\n", "k")) == {STATION}
    wrong_fingerprint = line.rsplit(",", 1)[0] + ",AAAA-AAAA-AAAA-AAAA"
    with pytest.raises(VerifyInputError, match="line 1: AZ-0001: the fingerprint"):
        read_keys_file(wrong_fingerprint, "k")
    with pytest.raises(VerifyInputError, match="two different keys"):
        read_keys_file(f"{line}\n{keys_file_line(STATION, OTHER_KEY.public_key())}\n", "k")
    with pytest.raises(VerifyInputError, match="line 1"):
        read_keys_file("AZ-0001,not-a-key\n", "k")


def test_unreadable_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path / "nowhere"), "--key", pub()]) == 2
    assert main(["verify", str(tmp_path), "--key", "garbage"]) == 2
    assert "error:" in capsys.readouterr().err
