"""What the uploader relies on: a recording id made once per spool (object names never repeat
across spools), and `read_verified`, which hands out only whole segments and records every
segment it cannot hand out as lost, once."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import pytest

from agent.adapt.ladder import Rung
from agent.core.events import RecordingSink
from agent.encode.segmenter import EncodedSegment
from agent.spool.store import (
    QUARANTINE_DIR,
    SegmentCorrupt,
    SegmentMissing,
    SegmentUnavailable,
    Spool,
    SpoolError,
)
from agent.tools.spool_cli import verify_spool

RUNG = Rung(320, 240, 15, 300_000)
RECORDING_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def segment(nbytes: int, tag: int) -> EncodedSegment:
    data = bytes([tag % 256]) * nbytes
    start = f"2026-11-23T10:00:{tag:02d}.000Z"
    return EncodedSegment(data, start, tag * 90_000, 1.0, RUNG, 15, "x", False)


def open_spool(path: Path, sink: RecordingSink) -> Spool:
    spool = Spool(path, ["http"], 10**9, 0, sink, disk_free=lambda p: 10**12)
    spool.open()
    return spool


def test_recording_id_is_made_once_and_kept_across_restarts(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = open_spool(tmp_path / "a", sink)
    recording_id = spool.recording_id
    assert RECORDING_ID.match(recording_id), recording_id
    record = spool.add(segment(500, 1))
    assert record.recording_id == recording_id
    assert record.object_name == f"{recording_id}/00000000.ts"
    assert record.file_name == "00000000.ts"  # the local name stays the sequence number
    spool.close()
    spool = open_spool(tmp_path / "a", sink)
    assert spool.recording_id == recording_id
    assert spool.add(segment(500, 2)).object_name == f"{recording_id}/00000001.ts"
    assert Spool.open_read_only(tmp_path / "a").recording_id == recording_id
    other = open_spool(tmp_path / "b", sink)  # a replaced box: a fresh spool, same station
    assert other.recording_id != recording_id
    assert other.add(segment(500, 1)).object_name != record.object_name


def test_an_index_from_before_recording_ids_gets_one(tmp_path: Path) -> None:
    (tmp_path / "segments").mkdir()
    (tmp_path / "segments" / "00000000.ts").write_bytes(b"\x01" * 500)
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.executescript(OLD_SCHEMA)
    db.execute(
        "INSERT INTO segments VALUES (0, '2026-11-23T10:00:00.000Z', 1.0, 500, ?, ?,"
        " 320, 240, 15, 300000, 'x', 1, 0, '2026-11-23T10:00:01.000Z')",
        (hashlib.sha256(b"\x01" * 500).hexdigest(), "0" * 64),
    )
    db.commit()
    db.close()
    assert Spool.open_read_only(tmp_path).segments()[0].recording_id == ""  # not migrated yet
    spool = open_spool(tmp_path, RecordingSink())
    assert RECORDING_ID.match(spool.recording_id)
    assert spool.read_verified(0) == b"\x01" * 500
    assert spool.add(segment(500, 1)).prev_sha256 == spool.get(0).sha256
    assert verify_spool(tmp_path, spool) == []


def test_read_verified_hands_out_whole_segments(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = open_spool(tmp_path, sink)
    spool.add(segment(1_000, 1))
    assert spool.read_verified(0) == bytes([1]) * 1_000
    assert sink.kinds() == [] and spool.lost() == []


def test_a_missing_file_is_recorded_as_lost_once(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = open_spool(tmp_path, sink)
    spool.add(segment(1_000, 1))
    spool.add(segment(1_000, 2))
    (spool.segment_dir / "00000000.ts").unlink()
    with pytest.raises(SegmentMissing) as first:
        spool.read_verified(0)
    assert isinstance(first.value, SegmentUnavailable) and isinstance(first.value, SpoolError)
    assert "missing" in first.value.reason and first.value.seq == 0
    assert [(seq, reason) for seq, reason, _ in spool.lost()] == [(0, first.value.reason)]
    assert [r.seq for r in spool.pending("http")] == [1]
    dropped = [e for e in sink.events if e.kind == "segment_dropped"]
    assert len(dropped) == 1 and dropped[0].severity == "critical"
    assert dropped[0].fields["seq"] == 0 and dropped[0].fields["reason"] == first.value.reason
    with pytest.raises(SegmentMissing) as again:  # asked again: the same answer, no new event
        spool.read_verified(0)
    assert again.value.reason == first.value.reason
    assert sink.kinds().count("segment_dropped") == 1
    assert verify_spool(tmp_path, spool) == []


def test_a_loss_report_names_its_recording(tmp_path: Path) -> None:
    """Every recording numbers its segments from 0 (a replaced box, spool or index): a
    segment_dropped event says which recording's segment was lost, not only its seq."""
    sink = RecordingSink()
    spools = [open_spool(tmp_path / name, sink) for name in ("old", "new")]
    for spool in spools:
        spool.add(segment(1_000, 1))
        (spool.segment_dir / "00000000.ts").unlink()
        with pytest.raises(SegmentMissing):
            spool.read_verified(0)
    dropped = [e.fields for e in sink.events if e.kind == "segment_dropped"]
    assert [(f["recording_id"], f["seq"]) for f in dropped] == [
        (spools[0].recording_id, 0),
        (spools[1].recording_id, 0),
    ]


@pytest.mark.parametrize("damage", ["truncated", "changed"])
def test_a_damaged_file_is_quarantined_and_recorded_as_lost_once(
    tmp_path: Path, damage: str
) -> None:
    sink = RecordingSink()
    spool = open_spool(tmp_path, sink)
    spool.add(segment(1_000, 1))
    spool.add(segment(1_000, 2))
    file = spool.segment_dir / "00000001.ts"
    data = file.read_bytes()
    bad = data[:600] if damage == "truncated" else data[:10] + b"X" + data[11:]
    file.write_bytes(bad)
    with pytest.raises(SegmentCorrupt) as first:
        spool.read_verified(1)
    assert ("600 bytes" if damage == "truncated" else "SHA-256") in first.value.reason
    assert not file.exists()
    kept = list((tmp_path / QUARANTINE_DIR).iterdir())
    assert [p.read_bytes() for p in kept] == [bad]  # kept as found, for a person to look at
    assert kept[0].name in first.value.reason and spool.recording_id in kept[0].name
    assert [seq for seq, _, _ in spool.lost()] == [1]
    assert [r.seq for r in spool.pending("http")] == [0]
    with pytest.raises(SegmentCorrupt):
        spool.read_verified(1)
    assert sink.kinds().count("segment_dropped") == 1
    assert spool.read_verified(0) == bytes([1]) * 1_000  # the others are untouched
    assert verify_spool(tmp_path, spool) == []


def test_an_evicted_uploaded_segment_is_missing_without_a_loss(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = Spool(tmp_path, ["http"], 2_500, 0, sink, disk_free=lambda p: 10**12)
    spool.open()
    spool.add(segment(1_000, 1))
    spool.mark_uploaded(0, "http")
    spool.add(segment(1_000, 2))
    spool.add(segment(1_000, 3))  # over the quota: 0 (uploaded) goes
    with pytest.raises(SegmentMissing, match="evicted after upload"):
        spool.read_verified(0)
    assert spool.lost() == [] and "segment_dropped" not in sink.kinds()


OLD_SCHEMA = """
CREATE TABLE segments (
    seq INTEGER PRIMARY KEY, started_utc TEXT NOT NULL, duration_s REAL NOT NULL,
    bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, prev_sha256 TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, fps INTEGER NOT NULL,
    bitrate_bps INTEGER NOT NULL, encoder TEXT NOT NULL, discontinuity INTEGER NOT NULL,
    evicted INTEGER NOT NULL DEFAULT 0, created_utc TEXT NOT NULL
);
CREATE TABLE uploads (
    seq INTEGER NOT NULL, uplink TEXT NOT NULL, uploaded_utc TEXT NOT NULL,
    PRIMARY KEY (seq, uplink)
);
CREATE TABLE lost (
    seq INTEGER PRIMARY KEY, bytes INTEGER NOT NULL, reason TEXT NOT NULL,
    lost_utc TEXT NOT NULL
);
"""


def timed(start: str, tag: int) -> EncodedSegment:
    return EncodedSegment(bytes([tag]) * 100, start, 0, 2.0, RUNG, 30, "x", False)


def test_segment_times_never_go_backwards_in_the_index(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, RecordingSink())
    assert spool.last_segment_end_utc() is None  # a new spool: nothing recorded before
    starts = [
        "2026-11-23T10:00:00.000Z",
        "2026-11-23T10:00:02.000Z",
        "2026-11-23T09:00:04.000Z",  # the wall clock stepped back an hour
        "2026-11-23T09:00:06.000Z",
        "2026-11-23T11:00:08.000Z",  # and forward two hours
    ]
    records = [spool.add(timed(start, k)) for k, start in enumerate(starts)]
    assert [r.started_utc for r in records] == [
        "2026-11-23T10:00:00.000Z",
        "2026-11-23T10:00:02.000Z",
        "2026-11-23T10:00:04.000Z",  # clamped to the previous end...
        "2026-11-23T10:00:06.000Z",  # ...and the next continues from there
        "2026-11-23T11:00:08.000Z",
    ]
    # the step is marked once, where the index's timeline breaks from the clock's
    assert [r.discontinuity for r in records] == [False, False, True, False, False]
    assert "09:00:04" in records[2].note and "clamped" in records[3].note
    assert records[4].note == ""
    assert spool.last_segment_end_utc() == "2026-11-23T11:00:10.000Z"
    spool.close()
    assert open_spool(tmp_path, RecordingSink()).last_segment_end_utc() == (
        "2026-11-23T11:00:10.000Z"
    )
