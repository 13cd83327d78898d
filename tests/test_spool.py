"""The spool: quota and eviction policy, hash chain, recovery of leftovers, verify."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.adapt.ladder import Rung
from agent.core.events import RecordingSink
from agent.encode.segmenter import EncodedSegment
from agent.spool.eviction import StoredSegment, choose_evictions
from agent.spool.store import Spool
from agent.tools.spool_cli import verify_spool

RUNG = Rung(320, 240, 15, 300_000)


def segment(nbytes: int, tag: int) -> EncodedSegment:
    data = bytes([tag % 256]) * nbytes
    return EncodedSegment(data, "2026-11-23T10:00:00.000Z", tag * 90_000, 1.0, RUNG, 15, "x", False)


def open_spool(path: Path, max_bytes: int, sink: RecordingSink, free: int = 10**12) -> Spool:
    spool = Spool(path, ["http"], max_bytes, min_free_bytes=0, sink=sink, disk_free=lambda p: free)
    spool.open()
    return spool


def on_disk(spool: Spool) -> int:
    return sum(p.stat().st_size for p in spool.segment_dir.glob("*.ts"))


def test_quota_evicts_uploaded_first_then_pending_with_loss_reported(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = open_spool(tmp_path, max_bytes=3_500, sink=sink)
    for tag in range(3):
        spool.add(segment(1_000, tag))
    spool.mark_uploaded(1, "http")  # 0 and 2 still pending
    spool.add(segment(1_000, 3))  # over quota: the uploaded one (1) goes, nothing is lost
    assert on_disk(spool) <= 3_500
    assert [r.seq for r in spool.pending("http")] == [0, 2, 3]
    assert spool.lost() == [] and "segment_dropped" not in sink.kinds()
    spool.add(segment(1_000, 4))  # nothing uploaded is left: the oldest pending one is lost
    assert on_disk(spool) <= 3_500
    assert [seq for seq, _, _ in spool.lost()] == [0]
    dropped = sink.wait_for("segment_dropped", timeout_s=0)
    assert dropped is not None and dropped.fields["seq"] == 0 and dropped.severity == "critical"
    assert verify_spool(tmp_path, spool) == []


def test_free_disk_floor_is_kept(tmp_path: Path) -> None:
    sink = RecordingSink()
    disk_bytes = 8_000  # a tiny disk: what the segments do not use is free
    spool = Spool(
        tmp_path, [], 10**9, min_free_bytes=5_000, sink=sink,
        disk_free=lambda p: disk_bytes - on_disk(spool), disk_total=lambda p: disk_bytes,
    )  # fmt: skip
    spool.open()
    for tag in range(6):
        spool.add(segment(1_000, tag))
        assert disk_bytes - on_disk(spool) >= 5_000
    assert len([r for r in spool.segments() if not r.evicted]) == 3
    # no uplink: each evicted segment was the only copy, and that loss is recorded and said
    assert [seq for seq, _, _ in spool.lost()] == [0, 1, 2]
    dropped = [e for e in sink.events if e.kind == "segment_dropped"]
    assert [e.fields["seq"] for e in dropped] == [0, 1, 2]
    assert all("only copy" in e.fields["reason"] for e in dropped)
    assert sink.kinds().count("disk_low") == 1  # once per episode, not once per segment


def test_sequence_and_hash_chain_continue_across_restart(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = open_spool(tmp_path, 10**9, sink)
    first = spool.add(segment(500, 1))
    spool.close()
    spool = open_spool(tmp_path, 10**9, sink)
    second = spool.add(segment(700, 2))
    assert second.seq == first.seq + 1
    assert second.prev_sha256 == first.sha256 == hashlib.sha256(bytes([1]) * 500).hexdigest()
    assert verify_spool(tmp_path, spool) == []


def test_leftovers_are_reported_and_unreadable_ones_quarantined_on_open(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = open_spool(tmp_path, 10**9, sink)
    spool.add(segment(500, 1))
    spool.close()
    (tmp_path / "segments" / "00000001.ts.tmp").write_bytes(b"half")  # killed mid-write
    (tmp_path / "segments" / "00000001.ts").write_bytes(b"renamed, row never committed")
    spool = Spool(tmp_path, ["http"], 10**9, 0, sink, disk_free=lambda p: 10**12)
    report = spool.open()
    assert report.removed_temp_files == ["00000001.ts.tmp"]
    # not a segment PyAV can read: kept in quarantine, recorded as lost (never just deleted)
    assert report.quarantined == [f"{spool.recording_id}-00000001.ts"]
    assert (tmp_path / "quarantine" / report.quarantined[0]).read_bytes().startswith(b"renamed")
    assert [seq for seq, _, _ in spool.lost()] == [1]
    assert "spool_recovered" in sink.kinds() and "segment_dropped" in sink.kinds()
    assert spool.next_seq() == 2 and verify_spool(tmp_path, spool) == []


def test_verify_finds_corruption_and_broken_chain(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, 10**9, RecordingSink())
    for tag in range(3):
        spool.add(segment(400, tag))
    path = tmp_path / "segments" / "00000001.ts"
    path.write_bytes(b"X" + path.read_bytes()[1:])
    spool.db.execute("UPDATE segments SET prev_sha256 = ? WHERE seq = 2", ("f" * 64,))
    (tmp_path / "segments" / "00000099.ts").write_bytes(b"stray")
    problems = verify_spool(tmp_path, spool)
    assert any("segment 1" in p and "SHA-256" in p for p in problems)
    assert any("segment 2" in p and "chain" in p for p in problems)
    assert any("00000099.ts" in p for p in problems)


segments_strategy = st.lists(
    st.tuples(st.integers(1, 5_000), st.booleans()), min_size=0, max_size=40
).map(lambda xs: [StoredSegment(seq, n, up) for seq, (n, up) in enumerate(xs)])


@given(
    segments_strategy,
    st.integers(0, 100_000),
    st.integers(0, 100_000),
    st.integers(0, 50_000),
)
def test_eviction_never_drops_pending_while_uploaded_remains(
    segments: list[StoredSegment], max_bytes: int, free_bytes: int, min_free: int
) -> None:
    chosen = choose_evictions(segments, max_bytes, free_bytes, min_free)
    chosen_seqs = {s.seq for s in chosen}
    kept_uploaded = [s for s in segments if s.uploaded and s.seq not in chosen_seqs]
    if any(not s.uploaded for s in chosen):
        assert kept_uploaded == [], "a pending segment went while an uploaded one stayed"
    # oldest first within each class
    for kind in (True, False):
        seqs = [s.seq for s in chosen if s.uploaded is kind]
        assert seqs == sorted(seqs)
    # enough is freed (or everything went), and no more than needed
    total = sum(s.nbytes for s in segments)
    freed = sum(s.nbytes for s in chosen)
    excess = max(total - max_bytes, min_free - free_bytes, 0)
    assert freed >= excess or len(chosen) == len(segments)
    if chosen:
        assert freed - chosen[-1].nbytes < excess


def test_missing_file_of_an_uploaded_segment_is_not_a_loss(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = open_spool(tmp_path, 10**9, sink)
    spool.add(segment(500, 1))
    spool.add(segment(500, 2))
    spool.mark_uploaded(0, "http")
    spool.close()
    # a power cut after an eviction deleted the file of 0; 1 vanished before its upload
    (tmp_path / "segments" / "00000000.ts").unlink()
    (tmp_path / "segments" / "00000001.ts").unlink()
    spool = Spool(tmp_path, ["http"], 10**9, 0, sink, disk_free=lambda p: 10**12)
    report = spool.open()
    assert report.missing_files == [0, 1]
    assert [seq for seq, _, _ in spool.lost()] == [1]
    dropped = [e for e in sink.events if e.kind == "segment_dropped"]
    assert [e.fields["seq"] for e in dropped] == [1]
    assert verify_spool(tmp_path, spool) == []


def test_sqlite_full_is_survived(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = open_spool(tmp_path, 10**9, sink)
    spool.add(segment(500, 1))
    pages = spool.db.execute("PRAGMA page_count").fetchone()[0]
    spool.db.execute(f"PRAGMA max_page_count = {pages}")  # the index cannot grow: SQLITE_FULL
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for tag in range(2, 200):
            spool.add(segment(5_000, tag))
    spool.db.execute("PRAGMA max_page_count = 1073741823")  # room again
    record = spool.add(segment(500, 3))
    assert verify_spool(tmp_path, spool) == []
    assert record.prev_sha256 == spool.get(record.seq - 1).sha256


def test_records_come_a_page_at_a_time_in_order_within_the_range(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_bytes=10**9, sink=RecordingSink())
    for tag in range(10):
        spool.add(segment(100, tag))
    every = [r.seq for r in spool.segments()]
    assert every == list(range(10))
    assert [r.seq for r in spool.iter_segments(page=3)] == every  # 3 + 3 + 3 + 1
    assert [r.seq for r in spool.iter_segments(2, 8, page=3)] == list(range(2, 9))
    assert [r.seq for r in spool.iter_segments(3, 5, page=3)] == [3, 4, 5]  # an exact page
    assert [r.seq for r in spool.segments(4, 6)] == [4, 5, 6]
    assert list(spool.iter_segments(10)) == [] and list(spool.iter_segments(5, 4)) == []
    assert list(spool.iter_segments(page=4)) == spool.segments()
