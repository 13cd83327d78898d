"""The crash-safe segment spool: every recorded second stays on disk until the upstream has it.

Write order for each segment: temp file -> fsync -> rename -> fsync(dir) -> index row committed
(SQLite, WAL, synchronous=FULL). So after kill -9 or a power cut, no half-written file is ever
indexed and no indexed segment is missing; a renamed file whose row never committed is a
leftover that the next start reports and removes (its sequence number is then reused, so the
sequence has no hole). Rows stay after their file is evicted: the hash chain and the archive
playlist keep their history.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.adapt.ladder import Rung
from agent.core.durable import fsync_directory, write_atomic
from agent.core.events import DiscardSink, Event, EventSink, utc_now_iso
from agent.encode.segmenter import EncodedSegment
from agent.spool.eviction import StoredSegment, choose_evictions
from agent.spool.recovery import quarantine_file

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    seq INTEGER PRIMARY KEY,
    started_utc TEXT NOT NULL,
    duration_s REAL NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    prev_sha256 TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    fps INTEGER NOT NULL,
    bitrate_bps INTEGER NOT NULL,
    encoder TEXT NOT NULL,
    discontinuity INTEGER NOT NULL,
    evicted INTEGER NOT NULL DEFAULT 0,
    created_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    seq INTEGER NOT NULL,
    uplink TEXT NOT NULL,
    uploaded_utc TEXT NOT NULL,
    PRIMARY KEY (seq, uplink)
);
CREATE TABLE IF NOT EXISTS lost (
    seq INTEGER PRIMARY KEY,
    bytes INTEGER NOT NULL,
    reason TEXT NOT NULL,
    lost_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
# Columns added after the first release: (table, column, definition); an older index gets them
# at open, with their defaults.
ADDED_COLUMNS = (
    ("segments", "note", "TEXT NOT NULL DEFAULT ''"),  # why a row is not what the encoder said
    ("segments", "recovered", "INTEGER NOT NULL DEFAULT 0"),  # re-indexed at start
    ("lost", "cause", "TEXT NOT NULL DEFAULT 'evicted'"),  # evicted | missing | corrupt
)
CAUSE_EVICTED = "evicted"  # lost.cause: deleted for room before every uplink had it
CAUSE_MISSING = "missing"  # the file was gone
CAUSE_CORRUPT = "corrupt"  # the file was not what was stored (moved to quarantine)
GENESIS_SHA256 = "0" * 64  # prev_sha256 of the very first segment
SEGMENT_DIR = "segments"
QUARANTINE_DIR = "quarantine"  # files that are not whole segments, kept for a person to look at
DISK_OK_FACTOR = 1.2  # disk_low is re-armed when free space is 20 % above the floor
INDEX_FILE = "index.sqlite"
# Segments are the service's alone (the unit's UMask=0077 always made them 0600).
SEGMENT_MODE = 0o600


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

    @property
    def file_name(self) -> str:
        """The file's name in the spool's segment folder."""
        return segment_file_name(self.seq)

    @property
    def object_name(self) -> str:
        """The name upstream (under the station's folder): unique across boxes, spools and
        restarts, so no upload can replace another recording's object."""
        return f"{self.recording_id}/{self.file_name}"

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
        }


@dataclass(frozen=True)
class RecoveryReport:
    removed_temp_files: list[str]
    removed_unindexed_files: list[str]
    missing_files: list[int]

    @property
    def clean(self) -> bool:
        return not (self.removed_temp_files or self.removed_unindexed_files or self.missing_files)


def segment_file_name(seq: int) -> str:
    return f"{seq:08d}.ts"


def new_recording_id() -> str:
    """UTC creation time + 24 random bits, e.g. 20261123T061502Z-3fa9c2: sorts by time, and two
    boxes (or two spools on one box) starting in the same second still differ."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, column, definition in ADDED_COLUMNS:
        # table, column and definition are this module's constants
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def _recording_id(db: sqlite3.Connection, create: bool) -> str:
    """The index's recording id; made once when `create` and there is none (a new index, or
    one written before recording ids existed). A read-only look at an old index gets ""."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'recording_id'").fetchone()
    except sqlite3.OperationalError:  # an index older than the meta table, opened read-only
        if create:
            raise
        return ""
    if row is not None:
        return str(row[0])
    if not create:
        return ""
    recording_id = new_recording_id()
    db.execute("INSERT INTO meta (key, value) VALUES ('recording_id', ?)", (recording_id,))
    return recording_id


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
    ) -> None:
        self.path = path
        self.segment_dir = path / SEGMENT_DIR
        self.uplinks = tuple(uplinks)
        self._max_bytes = max_bytes
        self._min_free_bytes = min_free_bytes
        self._sink = sink
        self._disk_free = disk_free or (lambda p: shutil.disk_usage(p).free)
        self._lock = threading.RLock()
        self._added = threading.Condition(self._lock)
        self._db: sqlite3.Connection | None = None
        self._disk_low = False
        self.recording_id = ""  # read from the index at open (made when the index is created)
        self._note = "s.note"  # "''" for an index older than the note column, read-only
        self.recovery: RecoveryReport | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> RecoveryReport:
        try:
            self.segment_dir.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path / INDEX_FILE, check_same_thread=False, isolation_level=None
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed row survives a power cut
            db.executescript(SCHEMA)
            _add_missing_columns(db)
            self.recording_id = _recording_id(db, create=True)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open the spool at {self.path}: {exc}") from exc
        self._db = db
        self.recovery = self._recover()
        return self.recovery

    @classmethod
    def open_read_only(cls, path: Path) -> Spool:
        """For `spool ls/verify` while the agent may be running: no recovery, no writes."""
        spool = cls(
            path, uplinks=(), max_bytes=2**62, min_free_bytes=0, sink=DiscardSink("read-only spool")
        )
        index = path / INDEX_FILE
        if not index.is_file():
            raise SpoolError(f"{path} is not a spool (no {INDEX_FILE} in it)")
        try:
            spool._db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, check_same_thread=False)
            spool.recording_id = _recording_id(spool._db, create=False)
            columns = {row[1] for row in spool._db.execute("PRAGMA table_info(segments)")}
            spool._note = "s.note" if "note" in columns else "''"
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read {index}: {exc}") from exc
        return spool

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError("spool is not open")
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:  # SQLITE_FULL may have rolled back already
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _recover(self) -> RecoveryReport:
        temps, unindexed, missing = [], [], []
        indexed = {
            seq: bool(evicted)
            for seq, evicted in self.db.execute("SELECT seq, evicted FROM segments")
        }
        for entry in sorted(self.segment_dir.iterdir()):
            if entry.name.endswith(".tmp"):
                entry.unlink()
                temps.append(entry.name)
            elif entry.suffix == ".ts":
                seq = int(entry.stem) if entry.stem.isdigit() else None
                if seq is None or seq not in indexed or indexed[seq]:
                    entry.unlink()
                    unindexed.append(entry.name)
        for seq, evicted in indexed.items():
            if not evicted and not (self.segment_dir / segment_file_name(seq)).exists():
                missing.append(seq)
        for seq in missing:
            if self._uploaded_everywhere(seq):  # the upstream has it: nothing is lost
                self.db.execute("UPDATE segments SET evicted = 1 WHERE seq = ?", (seq,))
            else:
                self._record_loss(seq, "file missing at start (disk failure?)", CAUSE_MISSING)
        fsync_directory(self.segment_dir)
        report = RecoveryReport(temps, unindexed, missing)
        if not report.clean:
            log.warning(
                "spool recovery: removed %d temp and %d unindexed file(s); %d segment(s) missing",
                len(temps), len(unindexed), len(missing),
            )  # fmt: skip
            self._sink.emit(
                Event(
                    "spool_recovered",
                    "warning" if missing else "info",
                    "spool cleaned up after an unclean stop",
                    {
                        "removed_temp_files": len(temps),
                        "removed_unindexed_files": len(unindexed),
                        "missing_segments": missing,
                    },
                )
            )
        return report

    # -- writing ---------------------------------------------------------------------------

    def next_seq(self) -> int:
        with self._lock:
            row = self.db.execute("SELECT MAX(seq) FROM segments").fetchone()
            return 0 if row[0] is None else int(row[0]) + 1

    def add(self, segment: EncodedSegment) -> SegmentRecord:
        """Store a segment durably and index it; then enforce the quota."""
        with self._lock:
            seq = self.next_seq()
            row = self.db.execute("SELECT sha256 FROM segments WHERE seq = ?", (seq - 1,))
            prev = row.fetchone()
            prev_sha = prev[0] if prev else GENESIS_SHA256
            sha = hashlib.sha256(segment.data).hexdigest()
            self._make_room(incoming_bytes=len(segment.data))
            final = self.segment_dir / segment_file_name(seq)
            write_atomic(final, segment.data, mode=SEGMENT_MODE)
            rung = segment.rung
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO segments (seq, started_utc, duration_s, bytes, sha256,"
                    " prev_sha256, width, height, fps, bitrate_bps, encoder, discontinuity,"
                    " created_utc) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        seq, segment.started_utc, segment.duration_s, len(segment.data), sha,
                        prev_sha, rung.width, rung.height, rung.fps, rung.bitrate_bps,
                        segment.encoder, int(segment.discontinuity), utc_now_iso(),
                    ),
                )  # fmt: skip
            self._added.notify_all()
            return self.get(seq)

    def _make_room(self, incoming_bytes: int) -> None:
        """Evict before writing, so the new segment fits the quota and the free-disk floor.
        Cheap when nothing needs to go (one SUM); the full list is read only to evict."""
        total = int(
            self.db.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM segments WHERE evicted = 0"
            ).fetchone()[0]
        )
        free_after = self._disk_free(self.path) - incoming_bytes
        self._watch_disk(free_after)
        if total + incoming_bytes <= self._max_bytes and free_after >= self._min_free_bytes:
            return
        stored = [
            StoredSegment(seq, nbytes, bool(uploaded))
            for seq, nbytes, uploaded in self.db.execute(
                "SELECT s.seq, s.bytes,"
                " (SELECT COUNT(*) FROM uploads u WHERE u.seq = s.seq) >= ?"
                " FROM segments s WHERE s.evicted = 0 ORDER BY s.seq",
                (len(self.uplinks),),
            )
        ]
        victims = choose_evictions(
            stored,
            self._max_bytes - incoming_bytes,
            free_after,
            self._min_free_bytes,
        )
        for victim in victims:
            # the row first: a power cut in between leaves a file that recovery removes,
            # never a row whose file is gone
            self.db.execute("UPDATE segments SET evicted = 1 WHERE seq = ?", (victim.seq,))
            (self.segment_dir / segment_file_name(victim.seq)).unlink(missing_ok=True)
            if not victim.uploaded:
                self._record_loss(victim.seq, "spool full: evicted before upload")

    def _watch_disk(self, free_after: int) -> None:
        """One `disk_low` event when the free-disk floor starts forcing evictions; re-armed
        once there is clearly room again (hysteresis, so it does not flap)."""
        if free_after < self._min_free_bytes and not self._disk_low:
            self._disk_low = True
            self._sink.emit(
                Event(
                    "disk_low",
                    "warning",
                    f"disk nearly full: {free_after / 1e6:.0f} MB free, floor "
                    f"{self._min_free_bytes / 1e6:.0f} MB; oldest uploaded segments are deleted",
                    {"free_bytes": free_after, "min_free_bytes": self._min_free_bytes},
                )
            )
        elif free_after > self._min_free_bytes * DISK_OK_FACTOR and self._disk_low:
            self._disk_low = False

    def _record_loss(self, seq: int, reason: str, cause: str = CAUSE_EVICTED) -> None:
        """In its own transaction: the row marked gone and the `lost` row; then the event."""
        with self._transaction() as db:
            nbytes = self._insert_loss(db, seq, reason, cause)
        self._report_loss(seq, nbytes, reason)

    def _insert_loss(self, db: sqlite3.Connection, seq: int, reason: str, cause: str) -> int:
        """Inside the caller's transaction: the row no longer pending, and its `lost` row."""
        row = db.execute("SELECT bytes FROM segments WHERE seq = ?", (seq,)).fetchone()
        nbytes = int(row[0]) if row else 0
        db.execute("UPDATE segments SET evicted = 1 WHERE seq = ?", (seq,))
        db.execute(
            "INSERT OR REPLACE INTO lost (seq, bytes, reason, lost_utc, cause) VALUES (?,?,?,?,?)",
            (seq, nbytes, reason, utc_now_iso(), cause),
        )
        return nbytes

    def _report_loss(self, seq: int, nbytes: int, reason: str) -> None:
        """After the loss is committed: the log line and the critical event."""
        log.error("segment %d lost: %s", seq, reason)
        self._sink.emit(
            Event(
                "segment_dropped",
                "critical",
                f"segment {seq} was lost before upload: {reason}",
                {"seq": seq, "bytes": nbytes, "reason": reason},
            )
        )

    def _uploaded_everywhere(self, seq: int) -> bool:
        row = self.db.execute("SELECT COUNT(*) FROM uploads WHERE seq = ?", (seq,)).fetchone()
        return int(row[0]) >= len(self.uplinks)

    def mark_uploaded(self, seq: int, uplink: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO uploads (seq, uplink, uploaded_utc) VALUES (?,?,?)",
                (seq, uplink, utc_now_iso()),
            )

    # -- reading ---------------------------------------------------------------------------

    def get(self, seq: int) -> SegmentRecord:
        records = self._select("WHERE s.seq = ?", (seq,))
        if not records:
            raise KeyError(seq)
        return records[0]

    def segments(self, since_seq: int = 0) -> list[SegmentRecord]:
        return self._select("WHERE s.seq >= ?", (since_seq,))

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
            f" (SELECT group_concat(u.uplink) FROM uploads u WHERE u.seq = s.seq), {self._note}"
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

    def read(self, seq: int) -> bytes:
        return (self.segment_dir / segment_file_name(seq)).read_bytes()

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
            self._record_loss(seq, reason, cause)
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
            "segments": stored[0],
            "bytes": stored[1],
            "seconds": round(stored[2], 3),
            "lost_segments": lost,
            "last_seq": last,
            "disk_free_bytes": self._disk_free(self.path),
        }
