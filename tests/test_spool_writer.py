"""SpoolWriter on a real spool: segments stored in order, a broken disk retried, and what
cannot be stored by shutdown reported, never silently lost."""

from __future__ import annotations

import queue
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.adapt.ladder import Rung
from agent.core.events import RecordingSink
from agent.encode.segmenter import EncodedSegment
from agent.spool.store import Spool
from agent.spool.writer import SegmentQueue, SpoolWriter

RUNG = Rung(320, 240, 15, 300_000)
TIMEOUT_S = 30.0


def segment(k: int) -> EncodedSegment:
    started = f"2026-11-23T10:00:{k:02d}.000Z"
    return EncodedSegment(bytes([k]) * 2_000, started, k * 90_000, 1.0, RUNG, 15, "x", k == 0)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[tuple[Spool, RecordingSink]]:
    sink = RecordingSink()
    spool = Spool(tmp_path / "spool", ["http"], 10**9, 0, sink)
    spool.open()
    yield spool, sink
    spool.close()


def break_disk(spool: Spool) -> None:
    """A file where the segment directory was: every segment write fails with an OSError."""
    shutil.rmtree(spool.segment_dir)
    spool.segment_dir.write_bytes(b"")


def repair_disk(spool: Spool) -> None:
    spool.segment_dir.unlink()
    spool.segment_dir.mkdir()


def test_segments_are_stored_in_order_and_counted(spool: tuple[Spool, RecordingSink]) -> None:
    store, sink = spool
    writer = SpoolWriter(store, sink)
    writer.start()
    for k in range(3):
        writer.put(segment(k))
    writer.stop()
    assert writer.segments_stored == 3 and writer.queue_empty
    assert [r.started_utc for r in store.segments()] == [segment(k).started_utc for k in range(3)]
    assert sink.kinds() == []


def test_a_disk_that_recovers_loses_nothing(spool: tuple[Spool, RecordingSink]) -> None:
    store, sink = spool
    writer = SpoolWriter(store, sink)
    writer.start()
    break_disk(store)
    writer.put(segment(0))
    failed = sink.wait_for("spool_write_failed", TIMEOUT_S)
    assert failed is not None and failed.severity == "critical"
    repair_disk(store)
    assert store.wait_for_segment(-1, TIMEOUT_S), "the retried segment was not stored"
    writer.stop()
    assert writer.segments_stored == 1
    assert "segment_dropped" not in sink.kinds()


def test_a_segment_unstorable_at_shutdown_is_reported_dropped(
    spool: tuple[Spool, RecordingSink],
) -> None:
    store, sink = spool
    writer = SpoolWriter(store, sink)
    writer.start()
    break_disk(store)
    writer.put(segment(7))
    assert sink.wait_for("spool_write_failed", TIMEOUT_S) is not None
    writer.stop()  # a few last tries, then the segment is given up and reported
    dropped = sink.wait_for("segment_dropped", 0)
    assert dropped is not None and dropped.severity == "critical"
    assert dropped.fields["started_utc"] == segment(7).started_utc
    assert dropped.fields["recording_id"] == store.recording_id  # seqs repeat across recordings
    assert dropped.fields["bytes"] == 2_000
    assert writer.segments_stored == 0 and store.segments() == []
    assert sink.kinds().count("spool_write_failed") == 1  # reported once, not per attempt


def locked_index(store: Spool) -> sqlite3.Connection:
    """Another connection holding the index's write lock (a technician's sqlite3 shell, a
    stuck `spool` command): every write of the spool waits, then fails."""
    locker = sqlite3.connect(store.path / "index.sqlite", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    return locker


def accounted(store: Spool, sink: RecordingSink, count: int) -> None:
    """Every segment put is stored or reported dropped (with its recording time), once."""
    stored = [r.started_utc for r in store.segments()]
    dropped = [e.fields["started_utc"] for e in sink.events if e.kind == "segment_dropped"]
    assert sorted(stored + dropped) == [segment(k).started_utc for k in range(count)]
    assert store.stats()["unstored_segments"] == len(dropped)
    assert store.stats()["lost_segments"] == len(dropped)  # the heartbeat tells the truth


def test_a_locked_index_at_stop_loses_nothing_unreported(tmp_path: Path) -> None:
    sink = RecordingSink()
    store = Spool(tmp_path / "spool", ["http"], 10**9, 0, sink, busy_timeout_s=1.0)
    store.open()
    writer = SpoolWriter(store, sink, drain_s=3.0)
    writer.start()
    locker = locked_index(store)
    for k in range(8):
        writer.put(segment(k))
    assert sink.wait_for("spool_write_failed", TIMEOUT_S) is not None
    writer.stop()
    locker.execute("ROLLBACK")
    locker.close()
    accounted(store, sink, 8)
    assert writer.segments_dropped == 8 and writer.segments_stored == 0
    writer.put(segment(8))  # after the stop: reported at once, not left in a queue
    accounted(store, sink, 9)
    assert list(store.segment_dir.iterdir()) == []  # no file that a restart would re-index
    store.close()


def test_a_writer_stuck_in_the_index_is_given_up_and_its_segments_reported(
    tmp_path: Path,
) -> None:
    sink = RecordingSink()
    # one write waits longer on the lock than the stop can: the thread is given up
    store = Spool(tmp_path / "spool", ["http"], 10**9, 0, sink, busy_timeout_s=6.0)
    store.open()
    writer = SpoolWriter(store, sink, drain_s=0.5)
    writer.start()
    locker = locked_index(store)
    for k in range(4):
        writer.put(segment(k))
    writer.stop()
    accounted(store, sink, 4)
    assert writer.segments_dropped == 4
    assert sink.wait_for("spool_write_failed", TIMEOUT_S) is not None  # the stuck write failed
    locker.execute("ROLLBACK")
    locker.close()
    accounted(store, sink, 4)  # and was not reported a second time
    store.close()


def sized(k: int, nbytes: int) -> EncodedSegment:
    at = "2026-11-23T10:00:00.000Z"
    return EncodedSegment(bytes([k]) * nbytes, at, 0, 1.0, RUNG, 15, "x", False)


def test_the_queue_is_bounded_by_bytes_and_always_takes_one() -> None:
    """A slow disk holds back at most max_bytes of segments; one larger than that still goes
    in when the queue is empty (the encoder never deadlocks on a big segment)."""
    q = SegmentQueue(10_000)
    q.put(sized(1, 4_000))
    q.put(sized(2, 4_000))
    blocked = threading.Event()
    done = threading.Event()

    def put_third() -> None:
        blocked.set()
        q.put(sized(3, 4_000))  # 12 kB > 10 kB: waits for the disk
        done.set()

    threading.Thread(target=put_third, daemon=True).start()
    assert blocked.wait(TIMEOUT_S)
    assert not done.wait(0.2) and q.nbytes == 8_000
    assert q.get(timeout=1).data[0] == 1  # in order
    assert done.wait(TIMEOUT_S) and q.nbytes == 8_000
    assert [q.get_nowait().data[0], q.get_nowait().data[0]] == [2, 3] and q.empty()
    q.put(sized(4, 50_000))  # larger than the bound, the queue empty: taken
    assert q.nbytes == 50_000
    assert q.get(timeout=1).data[0] == 4
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
