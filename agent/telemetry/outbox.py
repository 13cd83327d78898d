"""The events outbox: every event is on disk before it is sent, and leaves only on PUBACK.

SQLite in WAL mode with synchronous=FULL: a committed event survives kill -9 and a power cut.
`seq` is an AUTOINCREMENT key, so it never goes back, even after the table was emptied: it is
the station-scoped order of events and the order in which they are sent. Bounded: past
`max_events` the oldest are dropped (counted, and the drop is logged).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# 20,000 events of ~300 bytes is ~6 MB of disk: far more than a day of incidents (a flapping
# camera raises two a minute, ~3,000 in a day), far less than the spool's free-space floor.
MAX_OUTBOX_EVENTS = 20_000
OUTBOX_FILENAME = "telemetry-outbox.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL
)
"""


class Outbox:
    """Thread-safe; one instance per process (the state dir is the station's)."""

    def __init__(self, path: Path, max_events: int = MAX_OUTBOX_EVENTS) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._max_events = max_events
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._pending = self._count()
        self.dropped = 0

    def _count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(row[0])

    def add(self, body: str) -> int:
        """Store one event (its JSON text, without seq); returns its seq once committed."""
        with self._lock:
            cur = self._db.execute("INSERT INTO events (body) VALUES (?)", (body,))
            seq = cur.lastrowid
            if seq is None:  # sqlite3 always sets it after a successful INSERT
                raise sqlite3.DatabaseError("INSERT into the outbox returned no rowid")
            self._pending += 1
            if self._pending > self._max_events:
                self._drop_oldest(self._pending - self._max_events)
            return seq

    def _drop_oldest(self, count: int) -> None:
        self._db.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
            (count,),
        )
        self._pending -= count
        self.dropped += count
        log.warning(
            "telemetry outbox full (%d events): dropped the %d oldest unsent event(s)",
            self._max_events,
            count,
        )

    def after(self, seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` events with a seq greater than `seq`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [(int(s), str(b)) for s, b in rows]

    def remove(self, seqs: Iterable[int]) -> None:
        """Forget delivered events (unknown seqs are ignored: already removed or dropped)."""
        batch = [(s,) for s in seqs]
        if not batch:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM events WHERE seq = ?", batch)
            self._db.execute("COMMIT")
            self._pending = self._count()

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def close(self) -> None:
        with self._lock:
            self._db.close()
