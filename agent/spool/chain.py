"""The spool's signed manifest chain: a manifest for every stored segment (agent/spool/manifest.py
has the format), signed with the station key and kept in the index in the same transaction as
the segment's row, so a power cut leaves either both or neither.

Each manifest links to the one signed before it (the chain's head, kept in the index's meta
table: normally the previous seq's; a segment file re-indexed at start is signed when its row is
made, so the order can differ) and carries the notes since it:
- `start`: the first segment of a run of the agent, and how the previous run ended (a marker
  in the index's meta table is set while a run has the chain open and cleared at a clean
  close: still set at the next open means a kill, a crash or a power cut);
- `lost`: segments the spool recorded as lost (the `lost` table), in ranges, each once;
- `event`: incidents that explain a gap or a change in the record (NOTED_EVENTS: clock steps,
  a lost camera, encoder or watchdog restarts, segments dropped before they were stored...),
  handed in by the service's event fan-out (`note_event`).

Manifests are tiny (~600 bytes) and stay in the index after their segment is evicted, like the
segment's row. Without a station key the spool keeps no chain and uploads no manifests; the
verifier calls such segments UNSIGNED.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from typing import Any

from agent.core.events import Event, utc_now_iso
from agent.core.keys import parse_private_key
from agent.spool.manifest import (
    GENESIS_SHA256,
    NOTE_DROPPED,
    NOTE_EVENT,
    NOTE_LOST,
    NOTE_START,
    ManifestSigner,
    SegmentFacts,
    file_sha256,
)

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (
    seq INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_losses (seq INTEGER PRIMARY KEY);
"""
RUNNING_KEY = "chain_running"  # meta: "1" while a run of the agent has the chain open
HEAD_KEY = "chain_head"  # meta: the SHA-256 of the last manifest signed
# Incidents worth a line in the signed record: they explain a gap, a jump in the times or
# what the picture shows. Segment losses with a seq come from the `lost` table instead.
NOTED_EVENTS = frozenset(
    {
        "camera_lost", "camera_restored", "clock_behind", "clock_stepped", "disk_low",
        "duplicate_station", "encoder_failed", "segment_dropped", "spool_index_damaged",
        "spool_recovered", "spool_write_failed", "stage_stalled",
    }
)  # fmt: skip
# Memory and size bounds: a manifest stays a few KiB even in a storm of incidents (the rest
# waits for the next manifests; past MAX_PENDING_NOTES the oldest are dropped and counted).
MAX_PENDING_NOTES = 256
MAX_EVENT_NOTES = 16  # per manifest
MAX_LOST_RANGES = 16  # per manifest; a range covers any number of consecutive lost segments
MAX_MESSAGE_CHARS = 200


class ManifestChain:
    """Used by `Spool` under its lock: `open` at the spool's open, `append` inside the
    transaction that stores a segment, `close` at a clean close. `note_event` may be called
    from any thread. Notes put into a manifest are forgotten once that manifest is the chain's
    head (its transaction committed); after a rollback they go into the next one."""

    def __init__(self, signer: ManifestSigner) -> None:
        self.signer = signer
        self._lock = threading.Lock()
        self._notes: deque[dict[str, Any]] = deque()
        self._dropped = 0
        # the notes in the manifest signed last, until it is the chain's head (committed)
        self._in_flight: list[dict[str, Any]] = []
        self._in_flight_dropped = 0
        self._signed_sha256 = ""

    @classmethod
    def for_station(cls, key_text: str, station_id: str, agent_version: str) -> ManifestChain:
        """The chain of the station whose key line (agent/core/keys.py) is `key_text`."""
        return cls(ManifestSigner(parse_private_key(key_text), station_id, agent_version))

    @property
    def fingerprint(self) -> str:
        return self.signer.fingerprint

    # -- notes ------------------------------------------------------------------------------

    def note_event(self, event: Event) -> None:
        """An EventFanout subscriber: keeps the incidents the record should explain."""
        if event.kind not in NOTED_EVENTS:
            return
        if event.kind == "segment_dropped" and "seq" in event.fields:
            return  # a stored segment's loss: in the `lost` table, noted from there
        self._add_note(
            {
                "kind": NOTE_EVENT,
                "event": event.kind,
                "at_utc": event.at_utc,
                "message": event.message[:MAX_MESSAGE_CHARS],
            }
        )

    def _add_note(self, note: dict[str, Any]) -> None:
        with self._lock:
            self._notes.append(note)
            self._bound()

    def _bound(self) -> None:
        while len(self._notes) > MAX_PENDING_NOTES:  # under `_lock`
            self._notes.popleft()
            self._dropped += 1

    def _take_notes(self, head_sha256: str) -> list[dict[str, Any]]:
        """The notes for the next manifest, after forgetting those the last one carried if it
        was stored (it is the head)."""
        with self._lock:
            self._settle(head_sha256)
            count = min(MAX_EVENT_NOTES, len(self._notes))
            self._in_flight = [self._notes.popleft() for _ in range(count)]
            self._in_flight_dropped = self._dropped
            notes = list(self._in_flight)
            if self._dropped:
                notes.append({"kind": NOTE_DROPPED, "count": self._dropped})
            return notes

    def _settle(self, head_sha256: str) -> None:
        """Forget the notes the last manifest carried if it was stored, else take them back
        (under `_lock`)."""
        if self._signed_sha256 and head_sha256 == self._signed_sha256:
            self._dropped = max(0, self._dropped - self._in_flight_dropped)
        else:
            self._notes.extendleft(reversed(self._in_flight))
            self._bound()
        self._signed_sha256, self._in_flight, self._in_flight_dropped = "", [], 0

    @staticmethod
    def _head(db: sqlite3.Connection) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (HEAD_KEY,)).fetchone()
        return None if row is None else str(row[0])

    # -- the index --------------------------------------------------------------------------

    def open(self, db: sqlite3.Connection) -> None:
        """At the spool's open: the tables, and the start note (how the previous run ended)."""
        db.executescript(SCHEMA)
        running = db.execute("SELECT value FROM meta WHERE key = ?", (RUNNING_KEY,)).fetchone()
        if running is not None:
            previous = "unclean" if running[0] == "1" else "clean"
        elif db.execute("SELECT 1 FROM segments LIMIT 1").fetchone() is None:
            previous = "none"
        else:
            previous = "unknown"  # recorded before this spool signed anything
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, '1')", (RUNNING_KEY,)
        )  # autocommit: the marker is on disk before the first segment of this run
        with self._lock:
            self._settle(self._head(db) or "")
            self._notes.appendleft(
                {"kind": NOTE_START, "previous_stop": previous, "at_utc": utc_now_iso()}
            )

    def close(self, db: sqlite3.Connection) -> None:
        """A clean close: the next open will say so."""
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, '0')", (RUNNING_KEY,))

    def append(self, db: sqlite3.Connection, segment: SegmentFacts) -> bytes:
        """Inside the caller's transaction, after the segment's row: sign its manifest,
        linked to the chain's head, and store it as the new head. Returns its bytes."""
        prev_sha256 = self._head(db) or GENESIS_SHA256
        lost_notes, lost_seqs = self._lost_notes(db)
        body = self.signer.sign(segment, prev_sha256, self._take_notes(prev_sha256) + lost_notes)
        sha256 = file_sha256(body)
        with self._lock:
            self._signed_sha256 = sha256
        db.execute(
            "INSERT OR REPLACE INTO manifests (seq, sha256, body) VALUES (?, ?, ?)",
            (segment.seq, sha256, body),
        )
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (HEAD_KEY, sha256))
        db.executemany(
            "INSERT OR IGNORE INTO chain_losses (seq) VALUES (?)", [(s,) for s in lost_seqs]
        )
        return body

    def _lost_notes(self, db: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[int]]:
        """Losses not in the chain yet, as ranges of consecutive seqs with one reason."""
        rows = db.execute(
            "SELECT l.seq, l.reason, l.cause FROM lost l"
            " LEFT JOIN chain_losses c ON c.seq = l.seq WHERE c.seq IS NULL ORDER BY l.seq"
        ).fetchall()
        notes: list[dict[str, Any]] = []
        seqs: list[int] = []
        for seq, reason, cause in rows:
            last = notes[-1] if notes else None
            if last and last["last_seq"] == seq - 1 and (last["reason"], last["cause"]) == (
                reason, cause,
            ):  # fmt: skip
                last["last_seq"] = seq
            elif len(notes) < MAX_LOST_RANGES:
                notes.append(
                    {
                        "kind": NOTE_LOST, "first_seq": seq, "last_seq": seq,
                        "cause": cause, "reason": str(reason)[:MAX_MESSAGE_CHARS],
                    }
                )  # fmt: skip
            else:
                break  # the rest goes into the next manifest
            seqs.append(seq)
        return notes, seqs

    @staticmethod
    def manifest(db: sqlite3.Connection, seq: int) -> bytes | None:
        row = db.execute("SELECT body FROM manifests WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else bytes(row[0])
