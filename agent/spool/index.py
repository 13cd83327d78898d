"""The spool's SQLite index: its schema, opening it (a damaged file is told apart from one that
cannot be opened), the recording id, and the row writes that storing and re-indexing share.

Times in rows are ISO 8601 UTC with milliseconds and a Z (agent/core/clock.py `utc_iso`).
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.adapt.ladder import Rung
from agent.core.clock import parse_utc, utc_iso
from agent.core.events import Event, EventSink, utc_now_iso

log = logging.getLogger(__name__)

INDEX_FILE = "index.sqlite"
GENESIS_SHA256 = "0" * 64  # prev_sha256 of the very first segment
# How long a write waits for another connection's lock (`spool ls` reading, a technician's
# sqlite3 shell) before it fails and is retried: short, so a stop that must store or report
# every queued segment fits systemd's TimeoutStopSec (agent/spool/writer.py).
BUSY_TIMEOUT_S = 2.0
# The WAL is checkpointed (and its pages reused) after this many pages, 1 MiB of 4 KiB pages:
# on a small disk the WAL is part of what the spool's headroom must cover (agent/spool/room.py).
WAL_AUTOCHECKPOINT_PAGES = 256
SQLITE_CORRUPT = 11  # primary result codes (sqlite3.h): a damaged file...
SQLITE_NOTADB = 26  # ...or one that is not a database at all
SQLITE_FULL = 13
# A segment may start this much before the previous one ends (frame timing, millisecond
# rounding) before its start counts as a backward step of the wall clock and is clamped.
CLOCK_TOLERANCE_S = 0.5
CAUSE_EVICTED = "evicted"  # lost.cause: deleted for room before every uplink had it
CAUSE_MISSING = "missing"  # the file was gone
CAUSE_CORRUPT = "corrupt"  # the file was not what was stored, or not a segment (quarantined)

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


class DamagedIndex(Exception):
    """The index file is damaged or not a database: it must be moved aside, not retried."""


def is_disk_full(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == SQLITE_FULL


def _is_damage(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (SQLITE_CORRUPT, SQLITE_NOTADB)


def connect_index(path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """Open (or create) the index for writing, checked with `PRAGMA quick_check` and brought
    to the current schema. Raises DamagedIndex for a damaged file, sqlite3.Error otherwise
    (locked, unwritable, full)."""
    db = sqlite3.connect(
        path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_s
    )
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a committed row survives a power cut
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        problems = [str(row[0]) for row in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise DamagedIndex(f"quick_check: {'; '.join(problems[:3])}")
        db.executescript(SCHEMA)
        for table, column, definition in ADDED_COLUMNS:
            # table, column and definition are this module's constants
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    except sqlite3.DatabaseError as exc:
        db.close()
        if _is_damage(exc):
            raise DamagedIndex(str(exc)) from exc
        raise
    except DamagedIndex:
        db.close()
        raise
    return db


def connect_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)


def new_recording_id() -> str:
    """UTC creation time + 24 random bits, e.g. 20261123T061502Z-3fa9c2: sorts by time, and two
    boxes (or two spools on one box) starting in the same second still differ."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def recording_id(db: sqlite3.Connection, create: bool) -> str:
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
    made = new_recording_id()
    db.execute("INSERT INTO meta (key, value) VALUES ('recording_id', ?)", (made,))
    return made


def recording_id_of(path: Path) -> str | None:
    """The recording id in a damaged index, when that part of it can still be read."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error:
        return None
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'recording_id'").fetchone()
        return None if row is None else str(row[0])
    except sqlite3.Error as exc:
        log.info("no recording id readable in %s: %s", path, exc)
        return None
    finally:
        db.close()


@dataclass(frozen=True)
class Row:
    """One segment row as it is written."""

    seq: int
    started_utc: str
    duration_s: float
    nbytes: int
    sha256: str
    prev_sha256: str
    rung: Rung
    encoder: str
    discontinuity: bool
    note: str = ""
    recovered: bool = False
    evicted: bool = False


def insert_row(db: sqlite3.Connection, row: Row) -> None:
    rung = row.rung
    db.execute(
        "INSERT INTO segments (seq, started_utc, duration_s, bytes, sha256, prev_sha256,"
        " width, height, fps, bitrate_bps, encoder, discontinuity, evicted, created_utc,"
        " note, recovered) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            row.seq, row.started_utc, row.duration_s, row.nbytes, row.sha256, row.prev_sha256,
            rung.width, rung.height, rung.fps, rung.bitrate_bps, row.encoder,
            int(row.discontinuity), int(row.evicted), utc_now_iso(), row.note, int(row.recovered),
        ),
    )  # fmt: skip


@dataclass(frozen=True)
class Previous:
    """The row just below a sequence number: what a new row links to and starts after."""

    sha256: str
    end_s: float  # Unix seconds (wall clock) when it ended: its start plus its duration
    duration_s: float
    rung: Rung


def previous_row(db: sqlite3.Connection, seq: int) -> Previous | None:
    row = db.execute(
        "SELECT sha256, started_utc, duration_s, width, height, fps, bitrate_bps"
        " FROM segments WHERE seq < ? ORDER BY seq DESC LIMIT 1",
        (seq,),
    ).fetchone()
    if row is None:
        return None
    end_s = parse_utc(row[1]) + row[2]
    return Previous(row[0], end_s, row[2], Rung(row[3], row[4], row[5], row[6]))


def monotonic_start(started_utc: str, prev: Previous | None) -> tuple[str, float, str]:
    """(start, clamped_s, note): a start before the previous segment's end (beyond the
    tolerance) means the wall clock stepped back; the start is clamped to that end, so times
    in the index never go backwards; `clamped_s` says by how much (0.0 when not clamped)."""
    if prev is None:
        return started_utc, 0.0, ""
    start_s = parse_utc(started_utc)
    if start_s >= prev.end_s - CLOCK_TOLERANCE_S and start_s >= prev.end_s - prev.duration_s:
        return started_utc, 0.0, ""
    note = f"start clamped to the previous segment's end (clock said {started_utc})"
    return utc_iso(prev.end_s), prev.end_s - start_s, note


class SpoolIndex:
    """The open index: one connection shared by every thread under `lock`, transactions that
    get a second chance on a full disk, and the record of every loss."""

    def __init__(
        self, db: sqlite3.Connection, lock: threading.RLock, sink: EventSink,
        on_full: Callable[[], bool],
    ) -> None:  # fmt: skip
        self.db = db
        self.lock = lock
        self._sink = sink
        self._on_full = on_full  # frees room on the disk; False when it had none to free
        # named in loss reports: every recording numbers its segments from 0 (set at open)
        self.recording_id = ""
        # called in the transaction of every new segment row (the signed manifest chain)
        self.on_insert: Callable[[sqlite3.Connection, Row], object] | None = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:  # SQLITE_FULL may have rolled back already
                    self.db.execute("ROLLBACK")
                raise

    def commit(self, statements: Callable[[sqlite3.Connection], object]) -> None:
        """`statements` in one transaction; when the disk is full, `on_full` frees room (the
        spool's reserve) and they are tried once more: an eviction can always record itself."""
        with self.lock:
            try:
                with self.transaction() as db:
                    statements(db)
            except sqlite3.OperationalError as exc:
                if not (is_disk_full(exc) and self._on_full()):
                    raise
                with self.transaction() as db:
                    statements(db)

    def insert_segment(self, db: sqlite3.Connection, row: Row) -> None:
        """Inside the caller's transaction: a segment's row, and what `on_insert` adds."""
        insert_row(db, row)
        if self.on_insert is not None:
            self.on_insert(db, row)

    def insert_loss(self, db: sqlite3.Connection, seq: int, reason: str, cause: str) -> int:
        """Inside the caller's transaction: the row no longer pending, and its `lost` row.
        Returns the segment's size."""
        row = db.execute("SELECT bytes FROM segments WHERE seq = ?", (seq,)).fetchone()
        nbytes = int(row[0]) if row else 0
        db.execute("UPDATE segments SET evicted = 1 WHERE seq = ?", (seq,))
        db.execute(
            "INSERT OR REPLACE INTO lost (seq, bytes, reason, lost_utc, cause) VALUES (?,?,?,?,?)",
            (seq, nbytes, reason, utc_now_iso(), cause),
        )
        return nbytes

    def record_loss(self, seq: int, reason: str, cause: str) -> None:
        """In its own transaction, then reported."""
        nbytes = [0]

        def book(db: sqlite3.Connection) -> None:
            nbytes[0] = self.insert_loss(db, seq, reason, cause)

        self.commit(book)
        self.report_loss(seq, nbytes[0], reason)

    def report_loss(self, seq: int, nbytes: int, reason: str) -> None:
        """After the loss is committed: the log line and the critical event."""
        log.error("segment %d lost: %s", seq, reason)
        self._sink.emit(
            Event(
                "segment_dropped",
                "critical",
                f"segment {seq} was lost before upload: {reason}",
                {"seq": seq, "recording_id": self.recording_id, "bytes": nbytes, "reason": reason},
            )
        )

    def previous(self, seq: int) -> Previous | None:
        with self.lock:
            return previous_row(self.db, seq)

    def uploaded_everywhere(self, seq: int, uplinks: int) -> bool:
        """With no uplink configured nothing is ever uploaded: the spool has the only copy."""
        with self.lock:
            row = self.db.execute("SELECT COUNT(*) FROM uploads WHERE seq = ?", (seq,)).fetchone()
        return uplinks > 0 and int(row[0]) >= uplinks
