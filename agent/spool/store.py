"""The crash-safe segment spool: every recorded second stays on disk until the upstream has it,
and a second that cannot stay is recorded as lost.

Write order for each segment: temp file -> fsync -> rename -> fsync(dir) -> index row committed
(SQLite, WAL, synchronous=FULL). So after kill -9 or a power cut no half-written file is ever
indexed, and a renamed file whose row never committed is a whole segment that the next start
re-indexes (agent/spool/recovery.py: nothing complete is deleted). A damaged index is moved
aside and a new one (a new recording) indexes the files on disk. An eviction records itself
(the row, and the `lost` row when no uplink had the segment) in one transaction before the file
is unlinked. Rows stay after their file is evicted: the hash chain and the archive playlist
keep their history. The room a write needs is measured first (agent/spool/room.py).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.adapt.ladder import Rung
from agent.core.clock import utc_iso
from agent.core.events import DiscardSink, Event, EventSink, utc_now_iso
from agent.encode.segmenter import EncodedSegment
from agent.spool import index
from agent.spool.chain import ManifestChain
from agent.spool.index import (
    BUSY_TIMEOUT_S,
    CAUSE_CORRUPT,
    CAUSE_MISSING,
    CLOCK_TOLERANCE_S,
    GENESIS_SHA256,
    INDEX_FILE,
    DamagedIndex,
    Row,
    SpoolIndex,
    is_disk_full,
)
from agent.spool.layout import QUARANTINE_DIR, SEGMENT_DIR, segment_file_name
from agent.spool.manifest import SegmentFacts
from agent.spool.recovery import Recovery, RecoveryReport, move_index_aside, quarantine_file
from agent.spool.room import DiskRoom, RoomPlan, plan_room

log = logging.getLogger(__name__)

# Re-indexing at open (hash + PyAV look, ~10 ms a segment) stops after this long; the rest goes
# on in the background, so recording starts within seconds even after a lost 20 GB index.
REINDEX_AT_OPEN_S = 3.0
REINDEX_JOIN_S = 10.0  # close() waits this long for the background re-index to stop


class SpoolError(Exception):
    """The spool cannot be used (unwritable directory, broken index)."""


class SegmentUnavailable(SpoolError):
    """A segment's bytes cannot be had; the loss is already recorded (a `lost` row and a
    `segment_dropped` event) and the segment is no longer pending."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"segment {seq}: {reason}")
        self.seq = seq
        self.reason = reason


class SegmentMissing(SegmentUnavailable):
    """The file is gone (deleted behind the agent's back, or evicted)."""


class SegmentCorrupt(SegmentUnavailable):
    """The file is not what was stored (size or SHA-256 differ, or it cannot be read); it was
    moved to the spool's quarantine folder."""


@dataclass(frozen=True)
class SegmentRecord:
    recording_id: str
    seq: int
    started_utc: str
    duration_s: float
    nbytes: int
    sha256: str
    prev_sha256: str
    rung: Rung
    encoder: str
    discontinuity: bool
    evicted: bool
    uploaded_to: tuple[str, ...]
    note: str = ""  # e.g. re-indexed at start, or its start time clamped
    recovered: bool = False  # re-indexed at start (the file had no row)

    @property
    def file_name(self) -> str:
        """The file's name in the spool's segment folder."""
        return segment_file_name(self.seq)

    @property
    def object_name(self) -> str:
        """The name upstream (under the station's folder): unique across boxes, spools and
        restarts, so no upload can replace another recording's object."""
        return f"{self.recording_id}/{self.file_name}"

    @property
    def manifest_name(self) -> str:
        """The name upstream of its signed manifest (agent/spool/manifest.py), beside it."""
        return f"{self.recording_id}/{self.seq:08d}.json"

    def as_dict(self) -> dict[str, object]:
        return {
            "recording_id": self.recording_id,
            "seq": self.seq,
            "started_utc": self.started_utc,
            "duration_s": self.duration_s,
            "bytes": self.nbytes,
            "sha256": self.sha256,
            "prev_sha256": self.prev_sha256,
            "rung": self.rung.as_dict(),
            "encoder": self.encoder,
            "discontinuity": self.discontinuity,
            "evicted": self.evicted,
            "uploaded_to": list(self.uploaded_to),
            "note": self.note,
            "recovered": self.recovered,
        }


# Capture times kept for segments not yet uploaded: 512 segments is 17 min of 2 s segments;
# a segment uploaded later (backfill) has no glass-to-upstream figure (it is not live).
CAPTURE_TIMES_KEPT = 512
RECORDS_PAGE = 500  # iter_segments: records per query


class Spool:
    """Thread-safe: the encoder adds, uploaders read and mark, telemetry reads stats."""

    def __init__(
        self,
        path: Path,
        uplinks: Sequence[str],
        max_bytes: int,
        min_free_bytes: int,
        sink: EventSink,
        disk_free: Callable[[Path], int] | None = None,
        disk_total: Callable[[Path], int] | None = None,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        chain: ManifestChain | None = None,
    ) -> None:
        self.path = path
        self._chain = chain  # signs a manifest for every new row (None: no station key)
        self._chain_open = False
        self.segment_dir = path / SEGMENT_DIR
        self.uplinks = tuple(uplinks)
        self._max_bytes = max_bytes
        self._min_free_bytes = min_free_bytes
        self._sink = sink
        self._disk_free = disk_free or (lambda p: shutil.disk_usage(p).free)
        self._disk_total = disk_total or (lambda p: shutil.disk_usage(p).total)
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self._added = threading.Condition(self._lock)
        self._index: SpoolIndex | None = None
        self._room = DiskRoom(
            path, plan_room(0, 0), max_bytes, len(self.uplinks), self._disk_free, sink
        )
        self.recording_id = ""  # read from the index at open (made when the index is created)
        self._extra_columns = "s.note, s.recovered"  # "'', 0" for an older index, read-only
        # when the first and last frame of recent segments left the camera (monotonic, this
        # run only): the uploader measures glass-to-upstream from them; not in the index
        self._captured_s: dict[int, tuple[float, float]] = {}
        self._seq_floor = 0  # above every file waiting to be re-indexed
        self._unstored = 0  # segments the writer gave up on (no seq, no row): still lost
        self._clamped_s = 0.0  # how far the last segment's start was clamped (clock behind)
        self._closing = threading.Event()
        self._reindexer: threading.Thread | None = None
        self._recovered = threading.Event()
        self.recovery: RecoveryReport | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> RecoveryReport:
        """Open (or create) the spool and recover it. A damaged or lost index is replaced by a
        new one (a new recording); only an unusable disk or directory raises SpoolError."""
        try:
            self.segment_dir.mkdir(parents=True, exist_ok=True)
            self._plan_room()
            report, previous_id = self._open_index()
            self._open_chain()
            recovery = Recovery(
                self._ix, self.path, self.recording_id, len(self.uplinks), self._sink
            )
            if report.damaged_index is not None:
                recovery.report_damaged_index(report, previous_id)
            self._recover(recovery, report)
        except (OSError, sqlite3.Error, DamagedIndex) as exc:
            self.close()
            raise SpoolError(f"cannot open the spool at {self.path}: {exc}") from exc
        self.recovery = report
        return report

    @classmethod
    def open_read_only(cls, path: Path) -> Spool:
        """For `spool ls/verify` while the agent may be running: no recovery, no writes."""
        spool = cls(
            path, uplinks=(), max_bytes=2**62, min_free_bytes=0, sink=DiscardSink("read-only spool")
        )
        file = path / INDEX_FILE
        if not file.is_file():
            raise SpoolError(f"{path} is not a spool (no {INDEX_FILE} in it)")
        try:
            db = index.connect_read_only(file)
            spool._index = SpoolIndex(db, spool._lock, spool._sink, on_full=lambda: False)
            spool.recording_id = index.recording_id(db, create=False)
            columns = {row[1] for row in db.execute("PRAGMA table_info(segments)")}
            if "recovered" not in columns:
                spool._extra_columns = "'', 0"
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read {file}: {exc}") from exc
        return spool

    def _open_chain(self) -> None:
        """The manifest chain in the index; every row made from now on is signed with it."""
        if self._chain is None:
            return
        chain = self._chain
        chain.open(self.db)
        self._chain_open = True
        self._ix.on_insert = lambda db, row: chain.append(
            db,
            SegmentFacts(
                self.recording_id, row.seq, row.started_utc, row.duration_s, row.nbytes,
                row.sha256,
            ),
        )  # fmt: skip

    def close(self) -> None:
        self._closing.set()
        if self._reindexer is not None:
            self._reindexer.join(timeout=REINDEX_JOIN_S)
        with self._lock:
            if self._index is not None:
                if self._chain is not None and self._chain_open:
                    self._chain_open = False
                    try:
                        self._chain.close(self._index.db)  # the next run: "clean stop"
                    except sqlite3.Error as exc:  # then the next run says "unclean": not worse
                        log.warning("cannot mark the manifest chain closed: %s", exc)
                self._index.db.close()
                self._index = None

    @property
    def _ix(self) -> SpoolIndex:
        if self._index is None:
            raise SpoolError("spool is not open")
        return self._index

    @property
    def db(self) -> sqlite3.Connection:
        return self._ix.db

    def _plan_room(self) -> None:
        disk_bytes = self._disk_total(self.path)
        plan = plan_room(disk_bytes, self._min_free_bytes)
        self._room = DiskRoom(
            self.path, plan, self._max_bytes, len(self.uplinks), self._disk_free, self._sink
        )
        if plan.floor_capped:
            self._sink.emit(
                Event(
                    "config_problem",
                    "warning",
                    f"[spool] min_free_bytes ({self._min_free_bytes / 1e6:.0f} MB) is more than "
                    f"the disk can keep free; using {plan.floor_bytes / 1e6:.0f} MB so "
                    "recording goes on. Set a floor well below the disk's size.",
                    {
                        "min_free_bytes": self._min_free_bytes,
                        "effective_min_free_bytes": plan.floor_bytes,
                        "disk_bytes": disk_bytes,
                    },
                )
            )

    @property
    def room(self) -> RoomPlan:
        return self._room.plan

    def _open_index(self) -> tuple[RecoveryReport, str | None]:
        """Connect to the index; a damaged one is moved aside (kept) and a new one started, as
        is a new one when the old is gone but segment files are there. Returns the report
        begun and the replaced index's recording id, when it could still be read."""
        report = RecoveryReport()
        file = self.path / INDEX_FILE
        previous_id = None
        if not file.exists() and any(self.segment_dir.glob("*.ts")):
            report.damaged_index = f"{INDEX_FILE} is missing"
            move_index_aside(file)  # a stale -wal must not be replayed into the new index
        try:
            db = index.connect_index(file, self._busy_timeout_s)
        except DamagedIndex as exc:
            report.damaged_index = str(exc)
            moved = move_index_aside(file)
            report.moved_index_to = None if moved is None else moved.name
            previous_id = None if moved is None else index.recording_id_of(moved)
            db = index.connect_index(file, self._busy_timeout_s)
        self._index = SpoolIndex(db, self._lock, self._sink, on_full=self._room.reserve.release)
        self.recording_id = index.recording_id(db, create=True)
        self._index.recording_id = self.recording_id
        return report, previous_id

    def _recover(self, recovery: Recovery, report: RecoveryReport) -> None:
        """Settle what is quick, re-index files for up to REINDEX_AT_OPEN_S, and leave the
        rest to a background thread (new segments are numbered after all of them)."""
        orphans = recovery.scan(report)
        self._seq_floor = max(orphans, default=-1) + 1
        deadline_s = time.monotonic() + REINDEX_AT_OPEN_S
        while orphans and time.monotonic() < deadline_s:
            recovery.reindex(orphans.pop(0), report)
        if orphans:
            log.warning("re-indexing %d more segment file(s) in the background", len(orphans))
            self._reindexer = threading.Thread(
                target=self._reindex_rest, args=(recovery, orphans, report), name="spool-reindex"
            )
            self._reindexer.start()
        else:
            self._recovered.set()
            recovery.done(report)
        self._room.make_room(self._ix, 0)  # and writes the reserve if there is room

    def _reindex_rest(self, recovery: Recovery, orphans: list[int], report: RecoveryReport) -> None:
        for k, seq in enumerate(orphans):
            if self._closing.is_set():
                log.warning(
                    "spool closed; %d file(s) left to re-index next start", len(orphans) - k
                )
                return
            try:
                recovery.reindex(seq, report)
            except (OSError, sqlite3.Error, SpoolError) as exc:
                # the file stays where it is; the next start re-indexes it
                log.error("re-indexing segment %d failed: %s", seq, exc)
            with self._lock:
                self._added.notify_all()  # an uploader may take it now
        self._recovered.set()
        recovery.done(report)

    def wait_recovered(self, timeout_s: float) -> bool:
        """True once every segment file found at open is in the index."""
        return self._recovered.wait(timeout_s)

    # -- writing ---------------------------------------------------------------------------

    def next_seq(self) -> int:
        with self._lock:
            row = self.db.execute("SELECT MAX(seq) FROM segments").fetchone()
            return max(0 if row[0] is None else int(row[0]) + 1, self._seq_floor)

    def add(self, segment: EncodedSegment) -> SegmentRecord:
        """Store a segment durably and index it, after making room for it. Its start is kept
        after the previous segment's end (a backward clock step is clamped and marked)."""
        data = segment.data
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            seq = self.next_seq()
            prev = self._ix.previous(seq)
            started, clamped_s, note = index.monotonic_start(segment.started_utc, prev)
            # a discontinuity where the clamping starts or changes (a step); the segments after
            # it are clamped by the same amount and continue the index's timeline seamlessly
            stepped = clamped_s > 0 and abs(clamped_s - self._clamped_s) > CLOCK_TOLERANCE_S
            self._clamped_s = clamped_s
            self._room.make_room(self._ix, len(data))
            final = self.segment_dir / segment_file_name(seq)
            self._room.write_segment(self._ix, final, data)
            row = Row(
                seq, started, segment.duration_s, len(data), sha,
                prev.sha256 if prev else GENESIS_SHA256, segment.rung, segment.encoder,
                segment.discontinuity or stepped, note=note,
            )  # fmt: skip
            try:
                self._ix.commit(lambda db: self._ix.insert_segment(db, row))
            except BaseException:
                # no row: the file must not come back at the next start as a re-indexed
                # segment while the writer retries it or reports it dropped
                final.unlink(missing_ok=True)
                raise
            if segment.captured_s is not None:
                self._captured_s[seq] = segment.captured_s
                while len(self._captured_s) > CAPTURE_TIMES_KEPT:
                    del self._captured_s[next(iter(self._captured_s))]
            self._added.notify_all()
            return self.get(seq)

    def captured_s(self, seq: int) -> tuple[float, float] | None:
        """(first, last) monotonic time the frames of segment `seq` left the camera, for
        segments recorded in this run and not too long ago; else None."""
        with self._lock:
            return self._captured_s.get(seq)

    def count_unstored(self) -> None:
        """The writer gave a segment up before it had a seq (reported by the writer); counted
        with the lost segments in `stats()`."""
        self._unstored += 1  # one writer thread calls this; readers see a whole int

    def mark_uploaded(self, seq: int, uplink: str) -> None:
        """Recorded even on a full disk: the reserve is released, and if that is not enough,
        room is made; an error here means the disk cannot take a row at all."""

        def mark(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR IGNORE INTO uploads (seq, uplink, uploaded_utc) VALUES (?,?,?)",
                (seq, uplink, utc_now_iso()),
            )

        with self._lock:
            try:
                self._ix.commit(mark)
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise
                log.warning("the disk is full; making room to record the upload of %d", seq)
                self._room.make_room(self._ix, 0)
                self._ix.commit(mark)

    def last_segment_end_utc(self) -> str | None:
        """When the newest indexed segment ended (its start plus its duration), or None: at
        start, a wall clock behind this has stepped back since the last recording."""
        with self._lock:
            prev = self._ix.previous(self.next_seq())
        return None if prev is None else utc_iso(prev.end_s)

    # -- reading ---------------------------------------------------------------------------

    def get(self, seq: int) -> SegmentRecord:
        records = self._select("WHERE s.seq = ?", (seq,))
        if not records:
            raise KeyError(seq)
        return records[0]

    def segments(self, since_seq: int = 0, until_seq: int | None = None) -> list[SegmentRecord]:
        """Records from `since_seq` to `until_seq` (both included; no end: the newest)."""
        if until_seq is None:
            return self._select("WHERE s.seq >= ?", (since_seq,))
        return self._select("WHERE s.seq BETWEEN ? AND ?", (since_seq, until_seq))

    def iter_segments(
        self, since_seq: int = 0, until_seq: int | None = None, page: int = RECORDS_PAGE
    ) -> Iterator[SegmentRecord]:
        """The same records, fetched `page` at a time: a day's recording (~27,000 segments)
        is never held as objects at once. Each page is one query under the lock."""
        last = until_seq if until_seq is not None else (1 << 62)
        while since_seq <= last:
            records = self._select("WHERE s.seq BETWEEN ? AND ?", (since_seq, last), limit=page)
            yield from records
            if len(records) < page:
                return
            since_seq = records[-1].seq + 1

    def pending(
        self, uplink: str, newest_first: bool = False, limit: int = -1
    ) -> list[SegmentRecord]:
        """Segments on disk that `uplink` does not have yet, oldest first (or newest first)."""
        return self._select(
            "WHERE s.evicted = 0 AND NOT EXISTS"
            " (SELECT 1 FROM uploads u WHERE u.seq = s.seq AND u.uplink = ?)",
            (uplink,),
            order="DESC" if newest_first else "ASC",
            limit=limit,
        )

    def _select(
        self, where: str, args: tuple[object, ...], order: str = "ASC", limit: int = -1
    ) -> list[SegmentRecord]:
        # `where` is one of this module's constants; values are bound parameters
        query = (
            "SELECT s.seq, s.started_utc, s.duration_s, s.bytes, s.sha256, s.prev_sha256,"  # noqa: S608
            " s.width, s.height, s.fps, s.bitrate_bps, s.encoder, s.discontinuity, s.evicted,"
            " (SELECT group_concat(u.uplink) FROM uploads u WHERE u.seq = s.seq),"
            f" {self._extra_columns}"
            f" FROM segments s {where} ORDER BY s.seq {order} LIMIT ?"
        )
        with self._lock:
            rows = self.db.execute(query, (*args, limit)).fetchall()
        return [
            SegmentRecord(
                recording_id=self.recording_id, seq=r[0], started_utc=r[1], duration_s=r[2],
                nbytes=r[3], sha256=r[4], prev_sha256=r[5], rung=Rung(r[6], r[7], r[8], r[9]),
                encoder=r[10], discontinuity=bool(r[11]), evicted=bool(r[12]),
                uploaded_to=tuple(sorted(r[13].split(","))) if r[13] else (), note=r[14],
                recovered=bool(r[15]),
            )
            for r in rows
        ]  # fmt: skip

    def backlog(self, uplink: str) -> tuple[int, float, int, float]:
        """(segments, seconds, bytes, live lag seconds) that `uplink` does not have yet; the
        live lag counts only what is newer than the newest segment the upstream has."""
        with self._lock:
            row = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(duration_s), 0), COALESCE(SUM(bytes), 0),"
                " COALESCE(SUM(CASE WHEN seq > COALESCE((SELECT MAX(seq) FROM uploads"
                "   WHERE uplink = ?1), -1) THEN duration_s ELSE 0 END), 0)"
                " FROM segments s WHERE evicted = 0 AND NOT EXISTS"
                " (SELECT 1 FROM uploads u WHERE u.seq = s.seq AND u.uplink = ?1)",
                (uplink,),
            ).fetchone()
        return int(row[0]), float(row[1]), int(row[2]), float(row[3])

    def newest_uploaded(self, uplink: str) -> int | None:
        with self._lock:
            row = self.db.execute("SELECT MAX(seq) FROM uploads WHERE uplink = ?", (uplink,))
            value = row.fetchone()[0]
        return None if value is None else int(value)

    def discontinuities_before(self, seq: int) -> int:
        """Segments after the first that start a new run or format, before `seq`."""
        with self._lock:
            row = self.db.execute(
                "SELECT COUNT(*) FROM segments WHERE discontinuity = 1 AND seq > 0 AND seq < ?",
                (seq,),
            ).fetchone()
        return int(row[0])

    def read_verified(self, seq: int) -> bytes:
        """The segment's bytes, checked against the size and SHA-256 stored with it: only a
        whole segment goes upstream. A missing file raises `SegmentMissing`; a changed or
        unreadable one is moved to quarantine and raises `SegmentCorrupt`. Either way the loss
        is recorded first (once: asking again raises the same without a second event), and the
        segment is no longer pending. An unknown seq raises KeyError."""
        record = self.get(seq)
        if record.evicted:
            raise self._unavailable(seq)
        file = self.segment_dir / record.file_name
        problem: type[SegmentUnavailable]
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            problem, reason = SegmentMissing, "the segment file is missing"
        except OSError as exc:
            problem, reason = SegmentCorrupt, f"the segment file cannot be read: {exc}"
        else:
            if len(data) != record.nbytes:
                problem = SegmentCorrupt
                reason = f"the file has {len(data)} bytes, the index {record.nbytes}"
            elif hashlib.sha256(data).hexdigest() != record.sha256:
                problem = SegmentCorrupt
                reason = "the file's SHA-256 does not match the index (changed after storing)"
            else:
                return data
        with self._lock:
            if self.get(seq).evicted:  # evicted meanwhile: the eviction recorded any loss
                raise self._unavailable(seq)
            if problem is SegmentCorrupt:
                # moved first: a crash before the loss commits leaves a row whose file is
                # missing, which the next start records as lost
                moved = quarantine_file(file, self.path / QUARANTINE_DIR, self.recording_id)
                reason += f"; kept as {QUARANTINE_DIR}/{moved.name}"
            cause = CAUSE_CORRUPT if problem is SegmentCorrupt else CAUSE_MISSING
            self._ix.record_loss(seq, reason, cause)
        raise problem(seq, reason)

    def _unavailable(self, seq: int) -> SegmentUnavailable:
        """What read_verified raises for a segment already gone, from its `lost` row."""
        with self._lock:
            row = self.db.execute("SELECT reason, cause FROM lost WHERE seq = ?", (seq,)).fetchone()
        if row is None:  # evicted once every uplink had it: nothing was lost
            return SegmentMissing(seq, "evicted after upload")
        reason, cause = str(row[0]), str(row[1])
        kind = SegmentCorrupt if cause == CAUSE_CORRUPT else SegmentMissing
        return kind(seq, reason)

    def manifest(self, seq: int) -> bytes | None:
        """The segment's signed manifest (agent/spool/manifest.py); None without a station
        key, or for a segment stored before there was one."""
        with self._lock:
            try:
                return ManifestChain.manifest(self.db, seq)
            except sqlite3.OperationalError:  # no manifests table: never signed
                return None

    def lost(self) -> list[tuple[int, str, str]]:
        with self._lock:
            return list(self.db.execute("SELECT seq, reason, lost_utc FROM lost ORDER BY seq"))

    def wait_for_segment(self, after_seq: int, timeout_s: float) -> bool:
        """Block until a segment with seq > after_seq exists (or timeout)."""
        with self._added:
            return self._added.wait_for(lambda: self.next_seq() > after_seq + 1, timeout_s)

    def stats(self) -> dict[str, object]:
        with self._lock:
            stored = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(duration_s), 0)"
                " FROM segments WHERE evicted = 0"
            ).fetchone()
            lost = self.db.execute("SELECT COUNT(*) FROM lost").fetchone()[0]
            last = self.db.execute("SELECT MAX(seq) FROM segments").fetchone()[0]
        return {
            "recording_id": self.recording_id,
            "segments": stored[0],
            "bytes": stored[1],
            "seconds": round(stored[2], 3),
            "lost_segments": lost + self._unstored,  # with those never stored (no row)
            "unstored_segments": self._unstored,
            "last_seq": last,
            "disk_free_bytes": self._disk_free(self.path),
        }
