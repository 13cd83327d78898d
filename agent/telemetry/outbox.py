"""The events outbox: every event is on disk before it is sent, and leaves only on PUBACK.

SQLite in WAL mode with synchronous=FULL: a committed event survives kill -9 and a power cut.
`seq` is the station-scoped order of events and the order in which they are sent: the outbox
numbers them itself, one more than the highest seq it ever gave (kept by the AUTOINCREMENT
table even after the table was emptied), so it never goes back while the outbox file lives.
The file lives in the telemetry state folder beside the spool, not inside it, so a replaced
spool keeps the numbering (`adopt` takes over an outbox an older version kept in the spool).

Bounded on disk: past `max_events` the oldest are dropped (counted, and the drop is logged).
When an event cannot be stored (disk full, I/O error) it is kept in memory instead, still
numbered and sent in order, and storing it is retried with the next event or `retry()`; the
memory is bounded too (`max_memory_events`): past it the oldest unstored event is dropped,
counted in `memory_dropped`. Events in memory are lost if the agent dies before they are sent
or stored. A full disk refuses even a DELETE (WAL mode): sent events it keeps are remembered
as sent, never offered again, and deleted by a later `retry()`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# 20,000 events of ~300 bytes is ~6 MB of disk: far more than a day of incidents (a flapping
# camera raises two a minute, ~3,000 in a day), far less than the spool's free-space floor.
MAX_OUTBOX_EVENTS = 20_000
# While the disk is full: 1,000 events of ~300 bytes is ~300 kB of memory, and hours of the
# incidents a full disk raises (a spool_write_failed, segment_dropped or disk_low a segment).
MAX_MEMORY_EVENTS = 1_000
OUTBOX_FILENAME = "telemetry-outbox.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL
)
"""


class Outbox:
    """Thread-safe; one instance per process (the state dir is the station's)."""

    def __init__(
        self,
        path: Path,
        max_events: int = MAX_OUTBOX_EVENTS,
        max_memory_events: int = MAX_MEMORY_EVENTS,
    ) -> None:
        if max_events < 1 or max_memory_events < 1:
            raise ValueError("max_events and max_memory_events must be at least 1")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._max_events = max_events
        self._max_memory = max_memory_events
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._stored = self._count()
        self._last_seq = self._highest_seq()
        self._memory: OrderedDict[int, str] = OrderedDict()  # seq -> body, not yet on disk
        self._sent: set[int] = set()  # delivered, but the disk refused to delete them yet
        self.dropped = 0  # oldest stored events dropped from a full outbox
        self.memory_dropped = 0  # unstored events dropped from a full memory queue
        self.store_failures = 0  # events that could not be stored when they came
        self._failing = False  # storing fails now: logged once per episode

    def _count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(row[0])

    def _highest_seq(self) -> int:
        row = self._db.execute(
            "SELECT MAX(seq) FROM (SELECT seq FROM sqlite_sequence WHERE name = 'events'"
            " UNION ALL SELECT MAX(seq) FROM events)"
        ).fetchone()
        return int(row[0] or 0)

    def add(self, body: str) -> int:
        """Number one event (its JSON text, without seq) and store it; returns its seq. An
        event that cannot be stored is kept in memory and sent from there."""
        with self._lock:
            seq = self._last_seq = self._last_seq + 1
            self._memory[seq] = body
            if not self._store_memory():
                self.store_failures += 1
                if len(self._memory) > self._max_memory:
                    lost, _ = self._memory.popitem(last=False)
                    self.memory_dropped += 1
                    if self.memory_dropped % 100 == 1:  # the first of an episode, then 1 in 100
                        log.error(
                            "telemetry: %d events wait in memory; event %d dropped (%d so far)",
                            self._max_memory, lost, self.memory_dropped,
                        )  # fmt: skip
            return seq

    def retry(self) -> bool:
        """Try again what the disk refused: forgetting sent events, storing those kept in
        memory. True when nothing is left to do (`settled`)."""
        with self._lock:
            return self._forget_sent() and self._store_memory()

    @property
    def settled(self) -> bool:
        """Every event is on disk, and every delivered one is gone from it."""
        with self._lock:
            return not self._memory and not self._sent

    def _store_memory(self) -> bool:
        """Store what waits in memory, oldest first, each under its seq; stops at the first
        failure (logged once per episode). Call with the lock held."""
        while self._memory:
            seq, body = next(iter(self._memory.items()))
            try:
                self._db.execute("INSERT INTO events (seq, body) VALUES (?, ?)", (seq, body))
            except sqlite3.Error as exc:  # disk full, I/O error: keep it in memory
                if not self._failing:
                    log.error(
                        "telemetry outbox cannot store event %d; events wait in memory "
                        "(at most %d) until it can: %s", seq, self._max_memory, exc,
                    )  # fmt: skip
                self._failing = True
                return False
            del self._memory[seq]
            self._stored += 1
            if self._stored > self._max_events:
                self._drop_oldest(self._stored - self._max_events)
        if self._failing:
            log.warning("telemetry outbox stores events again")
            self._failing = False
        return True

    def _drop_oldest(self, count: int) -> None:
        try:
            self._db.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                (count,),
            )
        except sqlite3.Error as exc:  # over the bound for now; tried again at the next add
            log.error("telemetry outbox cannot drop its oldest events: %s", exc)
            return
        self._stored -= count
        self.dropped += count
        log.warning(
            "telemetry outbox full (%d events): dropped the %d oldest unsent event(s)",
            self._max_events,
            count,
        )

    def after(self, seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` unsent events with a seq greater than `seq`, oldest first, stored or
        kept in memory."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit + len(self._sent)),
            ).fetchall()
            stored = [(int(s), str(b)) for s, b in rows if s not in self._sent]
            waiting = [(s, b) for s, b in self._memory.items() if s > seq][:limit]
        return sorted(stored + waiting)[:limit]

    def remove(self, seqs: Iterable[int]) -> None:
        """Forget delivered events (unknown seqs are ignored: already removed or dropped).
        When the disk refuses the delete, they are remembered as sent and deleted later."""
        with self._lock:
            for seq in seqs:
                if self._memory.pop(seq, None) is None:
                    self._sent.add(seq)
            self._forget_sent()

    def _forget_sent(self) -> bool:
        """Delete the delivered events from disk; True when done. Call with the lock held."""
        if not self._sent:
            return True
        try:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in self._sent])
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:  # a full disk refuses even a delete (WAL mode)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if not self._failing:
                log.error("telemetry outbox cannot delete %d sent event(s) yet: %s",
                          len(self._sent), exc)  # fmt: skip
            self._failing = True
            return False
        self._sent.clear()
        self._stored = self._count()
        return True

    def adopt(self, older: Path) -> int:
        """Take over the events and the numbering of an outbox file an older version kept
        elsewhere (inside the spool), then delete it; returns how many events came over.
        Safe to repeat after a crash halfway: events keep their seq, none is copied twice."""
        if not older.exists():
            return 0
        source = sqlite3.connect(older)  # replays its WAL, if any
        try:
            source.execute(_SCHEMA)
            rows = source.execute("SELECT seq, body FROM events ORDER BY seq").fetchall()
            row = source.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
            highest = max([int((row.fetchone() or (0,))[0])] + [int(s) for s, _ in rows])
        finally:
            source.close()
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO events (seq, body) VALUES (?, ?)", rows)
            self._db.execute("COMMIT")
            self._stored = self._count()
            self._last_seq = max(self._last_seq, highest, self._highest_seq())
        for suffix in ("", "-wal", "-shm"):
            Path(f"{older}{suffix}").unlink(missing_ok=True)
        log.info("telemetry outbox: took over %d event(s) and seq %d from %s", len(rows),
                 highest, older)  # fmt: skip
        return len(rows)

    @property
    def pending(self) -> int:
        """Events not yet acknowledged, on disk or in memory."""
        with self._lock:
            return max(0, self._stored - len(self._sent)) + len(self._memory)

    @property
    def in_memory(self) -> int:
        """Events that could not be stored yet (lost if the agent dies before sending them)."""
        with self._lock:
            return len(self._memory)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def move_outbox(old_dir: Path, new_dir: Path) -> int:
    """Moves the outbox an older version kept in `old_dir` (inside the spool) into `new_dir`,
    with its pending events and its seq; returns how many events came over (0: none there)."""
    older = old_dir / OUTBOX_FILENAME
    if not older.exists():
        return 0
    box = Outbox(new_dir / OUTBOX_FILENAME)
    try:
        return box.adopt(older)
    finally:
        box.close()
