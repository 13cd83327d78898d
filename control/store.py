"""The control centre's SQLite database (WAL): station states, events, chart samples, alarms,
the command audit, with bounded retention.

One writer connection (the ingest and flush threads, under a lock) and one reader connection
(the web pages), so pages never wait for a batch being written. Events are keyed by their id:
an event the broker delivers twice (QoS 1 after a reconnect) is stored and counted once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control.alarms import Alarm

SCHEMA = """
CREATE TABLE IF NOT EXISTS stations (
    station_id TEXT PRIMARY KEY, record TEXT NOT NULL, updated_wall_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, station_id TEXT NOT NULL, seq INTEGER, at_utc TEXT NOT NULL,
    received_wall_s REAL NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL,
    message TEXT NOT NULL, fields TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_station ON events (station_id, received_wall_s);
CREATE INDEX IF NOT EXISTS events_received ON events (received_wall_s);
CREATE TABLE IF NOT EXISTS samples (
    station_id TEXT NOT NULL, wall_s REAL NOT NULL, rung TEXT, rung_height INTEGER,
    bitrate_bps REAL, live_lag_s REAL);
CREATE INDEX IF NOT EXISTS samples_station ON samples (station_id, wall_s);
CREATE TABLE IF NOT EXISTS alarms (
    id TEXT PRIMARY KEY, station_id TEXT NOT NULL, cause TEXT NOT NULL, detail TEXT NOT NULL,
    started_wall_s REAL NOT NULL, cleared_wall_s REAL, acked_by TEXT, acked_wall_s REAL);
CREATE INDEX IF NOT EXISTS alarms_active ON alarms (cleared_wall_s);
CREATE INDEX IF NOT EXISTS alarms_station ON alarms (station_id, started_wall_s);
CREATE INDEX IF NOT EXISTS alarms_started ON alarms (started_wall_s);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, wall_s REAL NOT NULL, user TEXT NOT NULL, station_id TEXT NOT NULL,
    command TEXT NOT NULL, args TEXT NOT NULL, signed INTEGER NOT NULL, correlation TEXT NOT NULL,
    reply_wall_s REAL, ok INTEGER, error TEXT, result TEXT);
CREATE INDEX IF NOT EXISTS audit_station ON audit (station_id, wall_s);
CREATE INDEX IF NOT EXISTS audit_correlation ON audit (correlation);
"""
DAY_S = 86_400.0


@dataclass(frozen=True)
class EventRow:
    id: str
    station_id: str
    seq: int | None
    at_utc: str
    received_wall_s: float
    kind: str
    severity: str
    message: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Sample:
    station_id: str
    wall_s: float
    rung: str
    rung_height: int | None
    bitrate_bps: float | None
    live_lag_s: float | None


@dataclass(frozen=True)
class AuditRow:
    id: int
    wall_s: float
    user: str
    station_id: str
    command: str
    args: dict[str, Any]
    signed: bool
    correlation: str
    reply_wall_s: float | None
    ok: bool | None
    error: str | None
    result: dict[str, Any] | None


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a crash of this process (the OS holds the WAL);
    # a power cut may lose the last commits, which the broker then delivers again (QoS 1
    # events are acknowledged only after they are committed: see control/ingest.py).
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=30000")
    return db


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._w = _connect(path)
        self._w.executescript(SCHEMA)
        self._r = _connect(path)
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()

    def close(self) -> None:
        with self._wlock, self._rlock:
            self._w.close()
            self._r.close()

    # -- writes --------------------------------------------------------------------------

    def add_event(self, event: EventRow) -> bool:
        """Stores an event; False when its id is already stored (a duplicate delivery)."""
        with self._wlock:
            cur = self._w.execute(
                "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    event.id, event.station_id, event.seq, event.at_utc, event.received_wall_s,
                    event.kind, event.severity, event.message, json.dumps(event.fields),
                ),
            )  # fmt: skip
            return cur.rowcount == 1

    def write_batch(
        self,
        states: Iterable[tuple[str, dict[str, Any]]],
        samples: Iterable[Sample],
        alarms: Iterable[Alarm],
        wall_s: float,
    ) -> None:
        """Station records, chart samples and alarm changes in one transaction."""
        with self._wlock:
            self._w.execute("BEGIN")
            try:
                self._w.executemany(
                    "INSERT OR REPLACE INTO stations VALUES (?,?,?)",
                    ((sid, json.dumps(rec), wall_s) for sid, rec in states),
                )
                self._w.executemany(
                    "INSERT INTO samples VALUES (?,?,?,?,?,?)",
                    ((s.station_id, s.wall_s, s.rung, s.rung_height, s.bitrate_bps,
                      s.live_lag_s) for s in samples),
                )  # fmt: skip
                self._w.executemany(
                    "INSERT OR REPLACE INTO alarms VALUES (?,?,?,?,?,?,?,?)",
                    ((a.alarm_id, a.station_id, a.cause, a.detail, a.started_wall_s,
                      a.cleared_wall_s, a.acked_by, a.acked_wall_s) for a in alarms),
                )  # fmt: skip
            except BaseException:
                self._w.execute("ROLLBACK")
                raise
            self._w.execute("COMMIT")

    def prune(self, now_wall_s: float, event_days: float, sample_days: float) -> None:
        with self._wlock:
            events_before = now_wall_s - event_days * DAY_S
            self._w.execute("DELETE FROM events WHERE received_wall_s < ?", (events_before,))
            self._w.execute(
                "DELETE FROM alarms WHERE cleared_wall_s IS NOT NULL AND cleared_wall_s < ?",
                (events_before,),
            )
            self._w.execute("DELETE FROM audit WHERE wall_s < ?", (events_before,))
            samples_before = now_wall_s - sample_days * DAY_S
            self._w.execute("DELETE FROM samples WHERE wall_s < ?", (samples_before,))

    def add_audit(
        self,
        wall_s: float,
        user: str,
        station_id: str,
        command: str,
        args: dict[str, Any],
        signed: bool,
        correlation: str,
    ) -> int:
        with self._wlock:
            cur = self._w.execute(
                "INSERT INTO audit (wall_s, user, station_id, command, args, signed, correlation)"
                " VALUES (?,?,?,?,?,?,?)",
                (wall_s, user, station_id, command, json.dumps(args), int(signed), correlation),
            )
            return int(cur.lastrowid or 0)

    def audit_reply(
        self,
        audit_id: int,
        wall_s: float,
        ok: bool | None,
        error: str | None,
        result: dict[str, Any] | None,
    ) -> None:
        with self._wlock:
            self._w.execute(
                "UPDATE audit SET reply_wall_s=?, ok=?, error=?, result=? WHERE id=?",
                (
                    wall_s,
                    None if ok is None else int(ok),
                    error,
                    None if result is None else json.dumps(result),
                    audit_id,
                ),
            )

    # -- reads ---------------------------------------------------------------------------

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._rlock:
            return self._r.execute(sql, args).fetchall()

    def station_records(self) -> dict[str, dict[str, Any]]:
        rows = self._query("SELECT station_id, record FROM stations")
        return {sid: json.loads(record) for sid, record in rows}

    def active_alarms(self) -> list[Alarm]:
        rows = self._query("SELECT * FROM alarms WHERE cleared_wall_s IS NULL")
        return [Alarm(*row) for row in rows]

    def alarms(
        self, *, station_id: str | None = None, since_wall_s: float = 0.0, limit: int = 500
    ) -> list[Alarm]:
        """Alarms started since `since_wall_s` or still active, newest first."""
        where = "(started_wall_s >= ? OR cleared_wall_s IS NULL OR cleared_wall_s >= ?)"
        args: tuple[Any, ...] = (since_wall_s, since_wall_s)
        if station_id is not None:
            where += " AND station_id = ?"
            args += (station_id,)
        rows = self._query(
            f"SELECT * FROM alarms WHERE {where} ORDER BY started_wall_s DESC LIMIT ?",  # noqa: S608 - fixed text
            (*args, limit),
        )
        return [Alarm(*row) for row in rows]

    def events(self, station_id: str, since_wall_s: float, limit: int = 500) -> list[EventRow]:
        rows = self._query(
            "SELECT * FROM events WHERE station_id = ? AND received_wall_s >= ?"
            " ORDER BY at_utc DESC LIMIT ?",
            (station_id, since_wall_s, limit),
        )
        return [_event_row(row) for row in rows]

    def event_count(self) -> int:
        return int(self._query("SELECT count(*) FROM events")[0][0])

    def samples(self, station_id: str, since_wall_s: float) -> list[Sample]:
        rows = self._query(
            "SELECT * FROM samples WHERE station_id = ? AND wall_s >= ? ORDER BY wall_s",
            (station_id, since_wall_s),
        )
        return [Sample(*row) for row in rows]

    def audit(self, *, station_id: str | None = None, limit: int = 50) -> list[AuditRow]:
        if station_id is None:
            rows = self._query("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._query(
                "SELECT * FROM audit WHERE station_id = ? ORDER BY id DESC LIMIT ?",
                (station_id, limit),
            )
        return [_audit_row(row) for row in rows]

    def day_figures(self, start_wall_s: float, end_wall_s: float) -> DayFigures:
        """What the day's report needs, per station, for [start, end)."""
        alarms = self._query(
            "SELECT station_id, cause, started_wall_s, cleared_wall_s FROM alarms"
            " WHERE started_wall_s < ? AND (cleared_wall_s IS NULL OR cleared_wall_s >= ?)",
            (end_wall_s, start_wall_s),
        )
        lost = self._query(
            "SELECT station_id, count(*) FROM events WHERE kind = 'segment_dropped'"
            " AND received_wall_s >= ? AND received_wall_s < ? GROUP BY station_id",
            (start_wall_s, end_wall_s),
        )
        return DayFigures([tuple(a) for a in alarms], {sid: n for sid, n in lost})


@dataclass(frozen=True)
class DayFigures:
    alarms: list[tuple[Any, ...]]  # (station_id, cause, started_wall_s, cleared_wall_s)
    segments_lost: dict[str, int]


def _event_row(row: tuple[Any, ...]) -> EventRow:
    eid, sid, seq, at_utc, received_wall_s, kind, severity, message, fields = row
    return EventRow(eid, sid, seq, at_utc, received_wall_s, kind, severity, message,
                    json.loads(fields))  # fmt: skip


def _audit_row(row: tuple[Any, ...]) -> AuditRow:
    (aid, wall_s, user, sid, command, args, signed, corr, reply_s, ok, error, result) = row
    return AuditRow(
        aid, wall_s, user, sid, command, json.loads(args), bool(signed), corr, reply_s,
        None if ok is None else bool(ok), error, None if result is None else json.loads(result),
    )  # fmt: skip
