"""Recovery that keeps video: orphan segment files are re-indexed (never deleted), unreadable
ones quarantined and recorded as lost, a damaged or lost index replaced by a new recording
without a restart loop, an interrupted eviction finished with its loss on record."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.adapt.ladder import Rung
from agent.core.events import RecordingSink
from agent.encode.encoder import PTS_HZ, VideoEncoder
from agent.encode.segmenter import EncodedSegment, SegmentWriter
from agent.spool import store
from agent.spool.recovery import Recovery, RecoveryReport
from agent.spool.store import Spool
from agent.tools.spool_cli import verify_spool

RUNG = Rung(160, 120, 10, 200_000)
FRAMES = 10  # one second a segment


def real_segments(count: int, first_tag: int = 0) -> list[EncodedSegment]:
    """Real H.264 MPEG-TS segments (libx264), noise pictures, one second each."""
    encoder = VideoEncoder("libx264", RUNG, "ultrafast", 1, gop=FRAMES)
    writer = SegmentWriter()
    rng = np.random.default_rng(first_tag)
    segments = []
    step = PTS_HZ // RUNG.fps
    for k in range(count):
        start = (first_tag + k) * FRAMES * step
        writer.begin(RUNG, f"2026-11-23T10:00:{first_tag + k:02d}.000Z", start, "libx264", k == 0)
        for f in range(FRAMES):
            i420 = rng.integers(0, 255, (RUNG.height * 3 // 2, RUNG.width), dtype=np.uint8)
            writer.add(encoder.encode(i420, start + f * step, keyframe=f == 0))
        writer.add(encoder.flush() if k == count - 1 else [])
        segments.append(writer.finish(start + FRAMES * step))
    return segments


def open_spool(path: Path, sink: RecordingSink, uplinks: tuple[str, ...] = ("http",)) -> Spool:
    spool = Spool(path, uplinks, 10**9, 0, sink, disk_free=lambda p: 10**12)
    spool.open()
    return spool


def test_a_segment_whose_row_never_committed_is_reindexed_not_deleted(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = open_spool(tmp_path, sink)
    first, second, orphan, after = real_segments(4)
    spool.add(first)
    spool.add(second)
    spool.close()
    # kill -9 between the rename and the row's commit: a whole file with no row
    (tmp_path / "segments" / "00000002.ts").write_bytes(orphan.data)
    spool = open_spool(tmp_path, sink)
    assert spool.recovery is not None and spool.recovery.reindexed == [2]
    record = spool.get(2)
    assert record.recovered and record.discontinuity and not record.evicted
    assert "estimated" in record.note
    assert record.sha256 == hashlib.sha256(orphan.data).hexdigest()
    assert record.prev_sha256 == spool.get(1).sha256 and record.nbytes == len(orphan.data)
    assert (record.rung.width, record.rung.height, record.rung.fps) == (160, 120, 10)
    assert record.duration_s == pytest.approx(1.0, abs=0.15)
    assert record.started_utc >= spool.get(1).started_utc  # never before the segment before it
    assert spool.lost() == [] and [r.seq for r in spool.pending("http")] == [0, 1, 2]
    recovered = sink.wait_for("spool_recovered", 0)
    assert recovered is not None and recovered.fields["reindexed_segments"] == 1
    assert recovered.severity == "info"
    assert spool.read_verified(2) == orphan.data  # whole, so it can go upstream
    assert spool.add(after).prev_sha256 == record.sha256  # the chain goes on through it
    assert verify_spool(tmp_path, spool) == []


def test_an_interrupted_eviction_keeps_its_loss_on_record(tmp_path: Path) -> None:
    """kill -9 right after the eviction committed, before the file was unlinked (a real
    process, killed at that exact point): the loss is on record, the next start finishes it."""
    script = textwrap.dedent(
        f"""
        import os, pathlib, sys
        sys.path.insert(0, {str(Path.cwd())!r})
        from agent.core.events import RecordingSink
        from agent.spool.store import Spool
        from tests.test_spool_recovery import real_segments
        spool = Spool(pathlib.Path(sys.argv[1]), ["http"], 1, 0, RecordingSink())
        spool.open()
        first, second = real_segments(2)
        spool.add(first)
        real_unlink = pathlib.Path.unlink
        def killed(self, missing_ok=False):
            if self.suffix == ".ts":
                os.kill(os.getpid(), 9)  # the eviction committed; the unlink never happens
            real_unlink(self, missing_ok=missing_ok)
        pathlib.Path.unlink = killed
        spool.add(second)  # over the 1-byte quota: segment 0 is evicted, never uploaded
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, timeout=60
    )
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    assert (tmp_path / "segments" / "00000000.ts").exists()
    sink = RecordingSink()
    spool = Spool(tmp_path, ["http"], 10**9, 0, sink)
    report = spool.open()
    assert report.finished_evictions == [0]
    assert not (tmp_path / "segments" / "00000000.ts").exists()
    assert [seq for seq, _, _ in spool.lost()] == [0]  # committed with the eviction
    assert "evicted" in spool.lost()[0][1]
    assert verify_spool(tmp_path, spool) == []


@pytest.mark.parametrize("damage", ["not a database", "malformed pages"])
def test_a_damaged_index_is_moved_aside_and_recording_goes_on(tmp_path: Path, damage: str) -> None:
    sink = RecordingSink()
    spool = open_spool(tmp_path, sink)
    segments = real_segments(4)
    for segment in segments[:3]:
        spool.add(segment)
    spool.mark_uploaded(0, "http")
    old_id = spool.recording_id
    spool.close()
    index = tmp_path / "index.sqlite"
    if damage == "not a database":
        index.write_bytes(b"this is not a database" * 300)
    else:  # keep the header, break the pages behind it
        data = bytearray(index.read_bytes())
        data[4096:] = os.urandom(len(data) - 4096)
        index.write_bytes(bytes(data))
    damaged_bytes = index.read_bytes()
    spool = open_spool(tmp_path, sink)  # no exception, no exit 2, no restart loop
    event = sink.wait_for("spool_index_damaged", 0)
    assert event is not None and event.severity == "critical"
    assert event.fields["segment_files"] == 3 and event.fields["recording_id"] == spool.recording_id
    kept = tmp_path / event.fields["moved_to"]
    assert kept.name.startswith("index.damaged-") and kept.read_bytes() == damaged_bytes
    assert spool.recording_id != old_id  # a new recording: no object name can repeat
    assert spool.recovery is not None and spool.recovery.reindexed == [0, 1, 2]
    assert [r.seq for r in spool.pending("http")] == [0, 1, 2]  # all kept, all to upload
    assert spool.lost() == []
    assert [spool.read_verified(seq) for seq in range(3)] == [s.data for s in segments[:3]]
    assert spool.add(segments[3]).seq == 3
    assert verify_spool(tmp_path, spool) == []
    spool.close()
    again = RecordingSink()
    spool = open_spool(tmp_path, again)  # the next start is an ordinary one
    assert "spool_index_damaged" not in again.kinds() and spool.recovery is not None
    assert spool.recovery.clean


def test_a_lost_index_is_rebuilt_from_the_files(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = open_spool(tmp_path, sink)
    for segment in real_segments(2):
        spool.add(segment)
    spool.close()
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    spool = open_spool(tmp_path, sink)
    event = sink.wait_for("spool_index_damaged", 0)
    assert event is not None and "missing" in event.fields["error"]
    assert spool.recovery is not None and spool.recovery.reindexed == [0, 1]
    assert verify_spool(tmp_path, spool) == []


def four_stored_then_index_lost(
    tmp_path: Path, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> list[EncodedSegment]:
    """Six real segments; the first four stored, then the index destroyed, with the whole
    re-index left for the background at the next open. Returns the six."""
    spool = open_spool(tmp_path, sink)
    segments = real_segments(6)
    for segment in segments[:4]:
        spool.add(segment)
    spool.close()
    (tmp_path / "index.sqlite").write_bytes(b"garbage" * 1000)
    monkeypatch.setattr(store, "REINDEX_AT_OPEN_S", 0.0)  # everything left for the background
    return segments


def test_a_big_reindex_goes_on_in_the_background_while_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = RecordingSink()
    segments = four_stored_then_index_lost(tmp_path, sink, monkeypatch)
    spool = open_spool(tmp_path, sink)
    assert spool.next_seq() == 4  # new segments go after every file waiting to be re-indexed
    live = spool.add(segments[4])
    assert live.seq == 4
    assert spool.wait_recovered(30)
    assert spool.recovery is not None and sorted(spool.recovery.reindexed) == [0, 1, 2, 3]
    assert spool.add(segments[5]).seq == 5
    assert verify_spool(tmp_path, spool) == []  # the re-entries link; the chain holds
    recovered = sink.wait_for("spool_recovered", 0)
    assert recovered is not None and recovered.fields["reindexed_segments"] == 4


def test_a_segment_stored_midway_through_the_background_reindex_keeps_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live segment is stored after the background re-index wrote 0..2 but before 3: it
    links to 2's hash, and `spool verify` must accept that link into the re-indexed run."""
    sink = RecordingSink()
    segments = four_stored_then_index_lost(tmp_path, sink, monkeypatch)
    first_three, live_stored = threading.Event(), threading.Event()
    reindex = Recovery.reindex

    def paced(self: Recovery, seq: int, report: RecoveryReport) -> None:
        if seq == 3:
            first_three.set()
            assert live_stored.wait(30)
        reindex(self, seq, report)

    monkeypatch.setattr(Recovery, "reindex", paced)
    spool = open_spool(tmp_path, sink)
    assert first_three.wait(30)
    live = spool.add(segments[4])
    live_stored.set()
    assert spool.wait_recovered(30)
    assert live.prev_sha256 == spool.get(2).sha256  # the case this test is about
    assert spool.add(segments[5]).seq == 5
    assert verify_spool(tmp_path, spool) == []


def test_verify_and_ls_show_the_recording(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, RecordingSink())
    spool.add(real_segments(1)[0])
    recording_id = spool.recording_id
    spool.close()
    ls = subprocess.run(
        [sys.executable, "-m", "agent", "spool", "ls", "--spool", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ls.returncode == 0, ls.stderr
    assert recording_id in ls.stdout
    verify = subprocess.run(
        [sys.executable, "-m", "agent", "spool", "verify", "--spool", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verify.returncode == 0 and recording_id in verify.stdout, verify.stdout
