"""Recovery at start that keeps video: the spool's folder and its index brought back in
agreement, deleting nothing whole.

- a temp file (never renamed, so never stored) is removed;
- a segment file without a row (kill -9 between the rename and the row's commit, or a replaced
  index) is re-indexed: hash recomputed, duration and picture read with PyAV, start estimated
  from the file time, marked a discontinuity, linked into the hash chain;
- a file that cannot be read goes to quarantine/ and its row is recorded as lost;
- a file whose row says evicted (the eviction committed, the unlink did not happen) is removed:
  its loss, if any, was recorded with the eviction;
- a row whose file is gone is recorded as lost (unless every uplink had it).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av

from agent.adapt.ladder import Rung
from agent.core.clock import utc_iso
from agent.core.durable import TEMP_SUFFIX, fsync_directory
from agent.core.events import Event, EventSink
from agent.spool import index
from agent.spool.index import CAUSE_CORRUPT, CAUSE_MISSING, GENESIS_SHA256, Previous, Row
from agent.spool.layout import QUARANTINE_DIR, SEGMENT_DIR, segment_file_name

log = logging.getLogger(__name__)

INDEX_SIDE_FILES = ("-wal", "-shm")  # SQLite's companions of an index, moved with it
FALLBACK_FPS = 25  # when a stream states no frame rate (one frame then counts 1/25 s)
# A re-indexed segment's rung must be a valid Rung: its measured bitrate is kept within it.
MIN_RUNG_BPS, MAX_RUNG_FPS = 32_000, 60
PLACEHOLDER_RUNG = Rung(16, 16, 1, MIN_RUNG_BPS)  # a quarantined file's, with no segment before


class UnreadableSegment(Exception):
    """A file that is not a segment PyAV can read; `reason` says why, for the loss report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SegmentProbe:
    """What a segment file says about itself, for re-indexing it."""

    duration_s: float
    width: int
    height: int
    fps: int
    codec: str
    frames: int


def probe_segment(path: Path) -> SegmentProbe:
    """Duration, picture size and frame rate read from the file's video packets (the duration
    from their timestamps: first to last, plus one frame). Raises UnreadableSegment."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableSegment("no video stream in the file")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate or Fraction(FALLBACK_FPS)
            pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size]
            time_base = stream.time_base or Fraction(1, 90_000)
            width, height, codec = ctx.width, ctx.height, ctx.name
    except av.FFmpegError as exc:
        raise UnreadableSegment(f"not a readable MPEG-TS segment ({exc})") from exc
    if not pts:
        raise UnreadableSegment("no video frames in the file")
    if width <= 0 or height <= 0:
        raise UnreadableSegment("the video stream states no picture size")
    duration_s = float((max(pts) - min(pts)) * time_base + 1 / rate)
    return SegmentProbe(duration_s, width, height, round(float(rate)), codec, len(pts))


def file_time_s(path: Path) -> float:
    """When the file was last written (the end of its segment, roughly), in Unix seconds."""
    return path.stat().st_mtime


def quarantine_file(file: Path, quarantine_dir: Path, prefix: str = "") -> Path:
    """Move `file` into `quarantine_dir` (made if needed), never over an earlier one; returns
    where it went. `prefix` (e.g. the recording id) keeps files of different recordings with
    the same name apart."""
    quarantine_dir.mkdir(exist_ok=True)
    base = f"{prefix}-{file.name}" if prefix else file.name
    target = quarantine_dir / base
    n = 1
    while target.exists():
        target = quarantine_dir / f"{base}.{n}"
        n += 1
    file.rename(target)
    fsync_directory(quarantine_dir)
    fsync_directory(file.parent)
    log.warning("moved %s to %s", file, target)
    return target


def move_index_aside(index: Path) -> Path | None:
    """Rename a damaged index and its -wal/-shm to index.damaged-<UTC>.sqlite(-wal, -shm),
    kept for forensics; returns the new name of the index (None when only companions were
    there). Nothing is deleted."""
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    target = index.with_name(f"{index.stem}.damaged-{stamp}{index.suffix}")
    n = 1
    while target.exists():
        target = index.with_name(f"{index.stem}.damaged-{stamp}.{n}{index.suffix}")
        n += 1
    moved = None
    if index.exists():
        index.rename(target)
        moved = target
    for suffix in INDEX_SIDE_FILES:
        side = index.with_name(index.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    fsync_directory(index.parent)
    log.error("moved the damaged spool index aside as %s", target)
    return moved


@dataclass
class RecoveryReport:
    """What the start found and did; filled in further while re-indexing goes on in the
    background (`reindex_pending`)."""

    removed_temp_files: list[str] = field(default_factory=list)  # never renamed: never stored
    reindexed: list[int] = field(default_factory=list)  # whole segments that had no row
    quarantined: list[str] = field(default_factory=list)  # names now in quarantine/
    finished_evictions: list[int] = field(default_factory=list)  # row evicted, file still there
    missing_files: list[int] = field(default_factory=list)
    damaged_index: str | None = None  # what was wrong with the index it replaced
    moved_index_to: str | None = None
    reindex_pending: int = 0

    @property
    def clean(self) -> bool:
        return not (
            self.removed_temp_files or self.reindexed or self.quarantined
            or self.finished_evictions or self.missing_files or self.damaged_index
            or self.reindex_pending
        )  # fmt: skip


class Recovery:
    """One start's recovery of the spool at `folder` against its open index."""

    def __init__(
        self, spool_index: index.SpoolIndex, folder: Path, recording_id: str, uplinks: int,
        sink: EventSink,
    ) -> None:  # fmt: skip
        self._index = spool_index
        self._segment_dir = folder / SEGMENT_DIR
        self._quarantine_dir = folder / QUARANTINE_DIR
        self._recording_id = recording_id
        self._uplinks = uplinks
        self._sink = sink

    def scan(self, report: RecoveryReport) -> list[int]:
        """Everything but the re-indexing (quick: no file is read); returns the sequence
        numbers of the files to re-index, oldest first."""
        with self._index.lock:
            indexed = {
                seq: bool(evicted)
                for seq, evicted in self._index.db.execute("SELECT seq, evicted FROM segments")
            }
        orphans: list[int] = []
        for entry in sorted(self._segment_dir.iterdir()):
            if entry.name.endswith(TEMP_SUFFIX):
                entry.unlink()
                report.removed_temp_files.append(entry.name)
            elif entry.suffix != ".ts":
                continue  # not ours; `spool verify` lists it
            elif not entry.stem.isdigit():
                report.quarantined.append(quarantine_file(entry, self._quarantine_dir).name)
            elif int(entry.stem) not in indexed:
                orphans.append(int(entry.stem))
            elif indexed[int(entry.stem)]:
                entry.unlink()
                report.finished_evictions.append(int(entry.stem))
        fsync_directory(self._segment_dir)
        for seq, evicted in sorted(indexed.items()):
            if not evicted and not (self._segment_dir / segment_file_name(seq)).exists():
                report.missing_files.append(seq)
        self._settle_missing(report.missing_files)
        report.reindex_pending = len(orphans)
        return orphans

    def _settle_missing(self, missing: list[int]) -> None:
        uploaded = [seq for seq in missing if self._index.uploaded_everywhere(seq, self._uplinks)]

        def gone(db: sqlite3.Connection) -> None:  # the upstream has them: nothing is lost
            db.executemany(
                "UPDATE segments SET evicted = 1 WHERE seq = ?", [(s,) for s in uploaded]
            )

        self._index.commit(gone)
        for seq in sorted(set(missing) - set(uploaded)):
            self._index.record_loss(seq, "file missing at start (disk failure?)", CAUSE_MISSING)

    def reindex(self, seq: int, report: RecoveryReport) -> None:
        """Index a whole segment file that has no row; one that cannot be read goes to
        quarantine and is recorded as lost. The file is read, hashed and looked into outside
        the index's lock: recording goes on meanwhile."""
        file = self._segment_dir / segment_file_name(seq)
        data = b""
        try:
            data = file.read_bytes()
            found = _look_into(file, len(data))
        except OSError as exc:
            found = f"cannot be read ({exc})"
        sha = hashlib.sha256(data).hexdigest() if data else ""
        with self._index.lock:
            prev = self._index.previous(seq)
            if isinstance(found, str):
                self._quarantine(seq, file, found, sha, prev, report)
            else:
                row = _reindexed_row(seq, sha, prev, found)
                self._index.commit(lambda db: self._index.insert_segment(db, row))
                report.reindexed.append(seq)
            report.reindex_pending -= 1

    def _quarantine(
        self, seq: int, file: Path, problem: str, sha: str, prev: Previous | None,
        report: RecoveryReport,
    ) -> None:  # fmt: skip
        """A row for the unreadable file (so the sequence and the chain have no hole; its rung
        and duration are the previous segment's, as a guess), recorded as lost."""
        nbytes = file.stat().st_size if file.exists() else 0
        moved = quarantine_file(file, self._quarantine_dir, self._recording_id)
        report.quarantined.append(moved.name)
        reason = (
            f"segment file unreadable at start: {problem}; kept as {QUARANTINE_DIR}/{moved.name}"
        )
        row = Row(
            seq, utc_iso(file_time_s(moved)), prev.duration_s if prev else 0.0,
            nbytes, sha, prev.sha256 if prev else GENESIS_SHA256,
            prev.rung if prev else PLACEHOLDER_RUNG, "unknown", discontinuity=True,
            note="quarantined at start; rung and duration copied from the previous segment",
            recovered=True, evicted=True,
        )  # fmt: skip

        def book(db: sqlite3.Connection) -> None:
            self._index.insert_segment(db, row)
            self._index.insert_loss(db, seq, reason, CAUSE_CORRUPT)

        self._index.commit(book)
        self._index.report_loss(seq, nbytes, reason)

    def done(self, report: RecoveryReport) -> None:
        """The `spool_recovered` event, once everything found at start is settled."""
        if report.clean:
            return
        log.warning(
            "spool recovery: %d segment(s) re-indexed, %d file(s) quarantined, %d temp file(s) "
            "removed, %d eviction(s) finished, %d segment(s) missing",
            len(report.reindexed), len(report.quarantined), len(report.removed_temp_files),
            len(report.finished_evictions), len(report.missing_files),
        )  # fmt: skip
        worse = report.quarantined or report.missing_files or report.damaged_index
        self._sink.emit(
            Event(
                "spool_recovered",
                "warning" if worse else "info",
                f"spool recovered after an unclean stop: {len(report.reindexed)} segment(s) "
                f"re-indexed, {len(report.quarantined)} file(s) quarantined, "
                f"{len(report.missing_files)} missing; nothing complete was deleted",
                {
                    "removed_temp_files": len(report.removed_temp_files),
                    "reindexed_segments": len(report.reindexed),
                    "quarantined_files": len(report.quarantined),
                    "finished_evictions": len(report.finished_evictions),
                    "missing_segments": report.missing_files,
                },
            )
        )

    def report_damaged_index(self, report: RecoveryReport, previous_id: str | None) -> None:
        files = sum(1 for _ in self._segment_dir.glob("*.ts"))
        kept = f"kept as {report.moved_index_to}" if report.moved_index_to else "nothing to keep"
        log.critical(
            "spool index damaged (%s); %s; new recording %s",
            report.damaged_index, kept, self._recording_id,
        )  # fmt: skip
        self._sink.emit(
            Event(
                "spool_index_damaged",
                "critical",
                f"the spool index was unusable ({report.damaged_index}); {kept}. A new index "
                f"(recording {self._recording_id}) was started and the {files} segment file(s) "
                "on disk are re-indexed into it (none deleted; they upload again under the new "
                "recording). Recording goes on.",
                {
                    "error": report.damaged_index,
                    "moved_to": report.moved_index_to,
                    "previous_recording_id": previous_id,
                    "recording_id": self._recording_id,
                    "segment_files": files,
                },
            )
        )


@dataclass(frozen=True)
class _Found:
    """A segment file that PyAV reads: what its row says about it."""

    probe: SegmentProbe
    nbytes: int
    rung: Rung
    ended_s: float  # the file's time


def _look_into(file: Path, nbytes: int) -> _Found | str:
    """What a segment file holds, or why it is not a segment we can index."""
    try:
        probe = probe_segment(file)
    except UnreadableSegment as exc:
        return exc.reason
    fps = min(max(probe.fps, 1), MAX_RUNG_FPS)
    bitrate_bps = max(MIN_RUNG_BPS, round(nbytes * 8 / probe.duration_s))
    try:
        rung = Rung(probe.width, probe.height, fps, bitrate_bps)
    except ValueError as exc:
        return f"not a picture this agent records ({exc})"
    return _Found(probe, nbytes, rung, file_time_s(file))


def _reindexed_row(seq: int, sha: str, prev: Previous | None, found: _Found) -> Row:
    """The file's own figures; its start is the file's time minus its duration (an estimate,
    said in the note), kept after the previous segment; always a discontinuity."""
    estimate = utc_iso(found.ended_s - found.probe.duration_s)
    started, _, clamped = index.monotonic_start(estimate, prev)
    note = "re-indexed at start (no index row); start estimated from the file time"
    return Row(
        seq, started, found.probe.duration_s, found.nbytes, sha,
        prev.sha256 if prev else GENESIS_SHA256, found.rung, found.probe.codec,
        discontinuity=True, note="; ".join(filter(None, [note, clamped])), recovered=True,
    )  # fmt: skip
