"""The control centre's heart: every station's state, the alarms, what is written to the store.

`ControlCentre` receives decoded messages from the ingest (paho's thread), keeps the states
and the alarm book under one lock, and queues what must be written; `flush()` (the flush
thread, every `[store] flush_every_s`) writes it in one transaction and `sweep()` raises
stale alarms for stations that went silent. The web pages and the terminal view read
`overview()` and `station()`. Clocks are parameters so tests can step time by hand.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from control.alarms import SEVERITY_RANK, Alarm, AlarmBook, station_causes
from control.config import AlarmConfig, StoreConfig
from control.roster import RosterEntry
from control.state import NEVER_SEEN, OFFLINE, ONLINE, STALE, StationState
from control.store import EventRow, Sample, Store

log = logging.getLogger(__name__)

# Routine changes (heartbeats; events, which are stored themselves at once) reach a station's
# record at most this often (the next heartbeat restores them after a crash; a clean stop
# writes everything); status changes and alarms at the next flush. 100,000 stations: 830
# records a second.
STATE_EVERY_S = 120.0
# Routine records written per flush at most: the records are made under the lock the ingest
# and the pages wait for (~10 us each); a fleet that changed all at once (a restart, a burst)
# spreads out over the following flushes instead of stalling everything at once. A record
# costs ~50 us in all (made, JSON, SQLite): 2,000 a second is a tenth of a core.
MAX_RECORDS_PER_FLUSH = 2_000
PRUNE_EVERY_S = 3600.0
# Stale checks look at the whole fleet; a heartbeat expiry is 20 s, so every 2 s is plenty.
SWEEP_EVERY_S = 2.0
MAX_SAMPLES_HELD = 200_000  # while the disk refuses writes: two minutes of 100,000 stations
OK, PROBLEM = "ok", "problem"
# Overview order: problems first, the worst first.
STATE_RANK = {OFFLINE: 0, STALE: 1, PROBLEM: 2, NEVER_SEEN: 3, OK: 4}
STATES = tuple(STATE_RANK)


@dataclass(frozen=True)
class OverviewQuery:
    region: str = ""
    problem: str = ""  # a cause, or "any"
    state: str = ""  # one of STATES
    search: str = ""  # part of the station id or name
    limit: int = 200


class ControlCentre:
    def __init__(
        self,
        store: Store,
        alarms_cfg: AlarmConfig,
        store_cfg: StoreConfig,
        roster: dict[str, RosterEntry] | None = None,
        *,
        on_alarm: Callable[[Alarm], None] | None = None,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.cfg = alarms_cfg
        self.store_cfg = store_cfg
        self._mono, self._wall = mono, wall
        self._on_alarm = on_alarm
        self.lock = threading.Lock()
        self.version = 0  # bumped on every change the overview shows
        now_s, wall_s = mono(), wall()
        self.stations: dict[str, StationState] = {
            sid: StationState.from_record(rec, now_s, wall_s)
            for sid, rec in store.station_records().items()
        }
        self.restored = bool(self.stations)
        self.alarms = AlarmBook(store.active_alarms())
        self.apply_roster(roster or {})
        self._listening_since_s: float | None = None  # None: not connected to the broker
        # Stations whose record must be written: at the next flush (status changes), or in the
        # order they changed, each at most every STATE_EVERY_S (routine).
        self._urgent: set[str] = set()
        self._routine: OrderedDict[str, None] = OrderedDict()
        self._persisted_s: dict[str, float] = {}
        self._samples: list[Sample] = []
        self._sampled_s: dict[str, float] = {}
        self._alarm_changes: list[Alarm] = []
        self._pruned_s = -PRUNE_EVERY_S
        # Online stations in the order we last heard them (the sweep looks at the front only);
        # offline stations whose alarm is not raised yet.
        self._heard: OrderedDict[str, None] = OrderedDict(
            (st.station_id, None)
            for st in sorted(self.stations.values(), key=lambda s: s.heartbeat_mono_s or -1e18)
            if st.status == ONLINE
        )
        self._offline_due = {sid for sid, st in self.stations.items() if st.status == OFFLINE}
        self._swept_s = -SWEEP_EVERY_S
        self.duplicates = 0

    def apply_roster(self, roster: dict[str, RosterEntry]) -> None:
        self.regions = sorted({e.region for e in roster.values() if e.region})
        with self.lock:
            for sid, entry in roster.items():
                st = self.stations.get(sid)
                if st is None:
                    self.stations[sid] = StationState.from_roster(entry)
                else:
                    st.name, st.region, st.expected = entry.name, entry.region, True
            self.version += 1

    # -- from the ingest (paho's thread) ---------------------------------------------------

    def _station(self, sid: str) -> StationState:
        st = self.stations.get(sid)
        if st is None:
            st = self.stations[sid] = StationState(sid)
        return st

    def on_connection(self, connected: bool) -> None:
        with self.lock:
            self._listening_since_s = self._mono() if connected else None
            self.version += 1

    def on_status(self, sid: str, msg: dict[str, Any]) -> None:
        now_s, wall_s = self._mono(), self._wall()
        with self.lock:
            st = self._station(sid)
            was = st.status
            st.apply_status(msg, now_s, wall_s)
            self._heard_now(st)
            self._evaluate(st, now_s, wall_s)
            self._mark(sid, urgent=was != st.status)

    def on_heartbeat(self, sid: str, msg: dict[str, Any], expiry_s: float | None) -> None:
        now_s, wall_s = self._mono(), self._wall()
        with self.lock:
            st = self._station(sid)
            was = st.status
            st.apply_heartbeat(msg, now_s, wall_s, expiry_s)
            self._heard_now(st)
            self._evaluate(st, now_s, wall_s)
            self._mark(sid, urgent=was != st.status)
            if now_s - self._sampled_s.get(sid, -1e18) >= self.store_cfg.sample_every_s:
                self._sampled_s[sid] = now_s
                height = st.rung.partition("p")[0]
                self._samples.append(
                    Sample(sid, wall_s, st.rung, int(height) if height.isdigit() else None,
                           st.bitrate_bps_actual, st.live_lag_s)
                )  # fmt: skip

    def _mark(self, sid: str, urgent: bool) -> None:
        """Under the lock: the station's record needs writing."""
        if urgent:
            self._urgent.add(sid)
            self._routine.pop(sid, None)
        elif sid not in self._urgent and sid not in self._routine:
            self._routine[sid] = None

    def _heard_now(self, st: StationState) -> None:
        """Under the lock, after a status or heartbeat: keeps the sweep's order."""
        sid = st.station_id
        if st.status == ONLINE:
            self._heard[sid] = None
            self._heard.move_to_end(sid)
            self._offline_due.discard(sid)
        else:
            self._heard.pop(sid, None)
            if st.status == OFFLINE:
                self._offline_due.add(sid)

    def on_event(self, sid: str, msg: dict[str, Any]) -> None:
        now_s, wall_s = self._mono(), self._wall()
        fields = msg.get("fields")
        row = EventRow(
            id=str(msg.get("id", "")),
            station_id=sid,
            seq=msg.get("seq") if isinstance(msg.get("seq"), int) else None,
            at_utc=str(msg.get("at_utc", "")),
            received_wall_s=wall_s,
            kind=str(msg.get("kind", "")),
            severity=str(msg.get("severity", "info")),
            message=str(msg.get("message", "")),
            fields=fields if isinstance(fields, dict) else {},
        )
        if not row.id or not self.store.add_event(row):
            self.duplicates += 1  # delivered twice (QoS 1 after a reconnect): counted once
            return
        with self.lock:  # the event itself is stored; the state follows with the routine flush
            st = self._station(sid)
            st.apply_event(msg, now_s, wall_s)
            self._evaluate(st, now_s, wall_s)
            self._mark(sid, urgent=False)

    # -- alarms ----------------------------------------------------------------------------

    def _listening_since(self, now_s: float) -> float:
        return now_s if self._listening_since_s is None else self._listening_since_s

    def _evaluate(self, st: StationState, now_s: float, wall_s: float) -> None:
        """Under the lock."""
        causes = station_causes(st, now_s, self.cfg, self._listening_since(now_s))
        changed = self.alarms.update(st.station_id, causes, wall_s)
        self.version += 1
        if changed:
            self._alarm_changes.extend(changed)
            for alarm in changed:
                log.info(
                    "alarm %s: %s %s (%s)",
                    "raised" if alarm.active else "cleared",
                    alarm.station_id,
                    alarm.cause,
                    alarm.detail,
                )
                if self._on_alarm is not None:
                    self._on_alarm(alarm)

    def sweep(self) -> None:
        """Time-driven alarm changes: stations gone silent (stale), held alarms that expired.
        Looks at online stations whose heartbeat is older than its expiry and at stations
        with an active alarm, not at the whole fleet's rules."""
        now_s, wall_s = self._mono(), self._wall()
        if now_s - self._swept_s < SWEEP_EVERY_S:
            return
        self._swept_s = now_s
        with self.lock:
            if self._listening_since_s is None:
                return  # our own link is down: silence says nothing about the stations
            since_s = self._listening_since_s
            due = {a.station_id for a in self.alarms} | self._offline_due
            # Online stations, least recently heard first: stop at the first one heard within
            # its expiry (with mixed expiries, a shorter one behind a longer one waits at most
            # the longer one).
            for sid in self._heard:
                st = self.stations[sid]
                last_s = st.heartbeat_mono_s if st.heartbeat_mono_s is not None else since_s
                if now_s - max(last_s, since_s) <= st.heartbeat_expiry_s:
                    break
                due.add(sid)
            for sid in due:
                station = self.stations.get(sid)
                if station is not None:
                    self._evaluate(station, now_s, wall_s)
            self._offline_due = {
                sid for sid in self._offline_due
                if self.stations[sid].status == OFFLINE and "offline" not in self.alarms.of(sid)
            }  # fmt: skip

    def acknowledge(self, alarm_id: str, user: str) -> Alarm | None:
        wall_s = self._wall()
        with self.lock:
            alarm = self.alarms.acknowledge(alarm_id, user, wall_s)
            if alarm is not None:
                self._alarm_changes.append(alarm)
                self.version += 1
        if alarm is not None:
            self.flush()
            log.info("alarm acknowledged by %s: %s %s", user, alarm.station_id, alarm.cause)
            if self._on_alarm is not None:
                self._on_alarm(alarm)
        return alarm

    # -- persistence -----------------------------------------------------------------------

    def flush(self, everything: bool = False) -> None:
        """Writes queued states (all changed ones with `everything`), samples and alarm
        changes in one transaction."""
        now_s, wall_s = self._mono(), self._wall()
        with self.lock:
            ids = list(self._urgent)
            self._urgent.clear()
            room = len(ids) + (len(self._routine) if everything else MAX_RECORDS_PER_FLUSH)
            while self._routine and len(ids) < room:  # oldest change first
                sid = next(iter(self._routine))
                if not everything and now_s - self._persisted_s.get(sid, -1e18) < STATE_EVERY_S:
                    break  # written less than a minute ago (so are most behind it)
                del self._routine[sid]
                ids.append(sid)
            states = [(sid, self.stations[sid].to_record(now_s, wall_s)) for sid in ids]
            for sid in ids:
                self._persisted_s[sid] = now_s
            samples, self._samples = self._samples, []
            alarms, self._alarm_changes = self._alarm_changes, []
        if states or samples or alarms:
            try:
                self.store.write_batch(states, samples, _latest_per_alarm(alarms), wall_s)
            except sqlite3.Error:
                with self.lock:  # written next time (the caller logs the error)
                    self._urgent.update(ids)
                    self._samples[:0] = samples[-MAX_SAMPLES_HELD:]
                    self._alarm_changes[:0] = alarms
                raise
        if now_s - self._pruned_s >= PRUNE_EVERY_S:
            self._pruned_s = now_s
            self.store.prune(
                wall_s, self.store_cfg.event_retention_days, self.store_cfg.sample_retention_days
            )

    # -- views -----------------------------------------------------------------------------

    def kind_of(self, st: StationState, now_s: float) -> str:
        """Under the lock: offline / stale / never_seen / problem / ok."""
        conn = st.connectivity(now_s, self._listening_since(now_s))
        if conn != ONLINE:
            return conn
        return PROBLEM if self.alarms.of(st.station_id) else OK

    def overview(self, query: OverviewQuery) -> dict[str, Any]:
        """Counts by state and by cause (whole fleet), regions, and the matching stations,
        problems first (at most query.limit rows). One pass over the fleet with the fine
        stations' fast path inlined: 100,000 stations take a fraction of a second."""
        now_s = self._mono()
        search = query.search.lower()
        counts = dict.fromkeys(STATES, 0)
        causes: Counter[str] = Counter()
        troubled: list[tuple[int, int, str, StationState, str, dict[str, Alarm]]] = []
        fine: list[StationState] = []  # in roster order; only as many as the page shows
        fine_count = 0
        want_fine = not query.problem and query.state in ("", OK)
        with self.lock:
            version = self.version
            since_s = self._listening_since(now_s)
            active = self.alarms.by_station()
            for sid, st in self.stations.items():
                alarms = active.get(sid)
                if st.status == ONLINE:
                    last_s = st.heartbeat_mono_s
                    if last_s is None:
                        last_s = st.seen_mono_s if st.seen_mono_s is not None else now_s
                    silent = now_s - (last_s if last_s > since_s else since_s)
                    kind = STALE if silent > st.heartbeat_expiry_s else PROBLEM if alarms else OK
                else:
                    kind = st.status
                counts[kind] += 1
                if alarms:
                    causes.update(alarms.keys())
                if query.region and st.region != query.region:
                    continue
                if query.state and kind != query.state:
                    continue
                if search and search not in sid.lower() and search not in st.name.lower():
                    continue
                if kind == OK:
                    if want_fine:
                        fine_count += 1
                        if len(fine) < query.limit:
                            fine.append(st)
                    continue
                if query.problem and not (
                    alarms if query.problem == "any" else alarms and query.problem in alarms
                ):
                    continue
                alarms = alarms or {}
                worst = min((SEVERITY_RANK[a.severity] for a in alarms.values()), default=9)
                troubled.append((STATE_RANK[kind], worst, sid, st, kind, alarms))
            troubled.sort(key=lambda m: m[:3])
            rows = [_row(st, kind, alarms) for _, _, _, st, kind, alarms in troubled[: query.limit]]
            rows += [_row(st, OK, {}) for st in fine[: query.limit - len(rows)]]
            matching = len(troubled) + fine_count
        return {
            "version": version,
            "total": len(self.stations),
            "counts": counts,
            "causes": dict(sorted(causes.items())),
            "regions": self.regions,
            "matching": matching,
            "rows": rows,
        }

    def station(self, sid: str) -> dict[str, Any] | None:
        now_s, wall_s = self._mono(), self._wall()
        with self.lock:
            st = self.stations.get(sid)
            if st is None:
                return None
            record = st.to_record(now_s, wall_s)
            record["state"] = self.kind_of(st, now_s)
            record["alarms"] = [alarm_dict(a) for a in self.alarms.of(sid).values()]
        return record

    def records(self) -> dict[str, dict[str, Any]]:
        """Every station's state record (as persisted), for reports."""
        now_s, wall_s = self._mono(), self._wall()
        with self.lock:
            return {sid: st.to_record(now_s, wall_s) for sid, st in self.stations.items()}

    def active_alarms(self) -> list[Alarm]:
        with self.lock:
            return list(self.alarms)

    def station_ids(self) -> list[str]:
        with self.lock:
            return list(self.stations)


def _latest_per_alarm(alarms: Iterable[Alarm]) -> list[Alarm]:
    latest: dict[str, Alarm] = {}
    for alarm in alarms:
        latest[alarm.alarm_id] = alarm
    return list(latest.values())


def _row(st: StationState, kind: str, alarms: dict[str, Alarm]) -> dict[str, Any]:
    return {
        "station_id": st.station_id,
        "name": st.name,
        "region": st.region,
        "state": kind,
        "problems": [
            {"cause": a.cause, "title": a.title, "severity": a.severity, "acked": bool(a.acked_by)}
            for a in sorted(alarms.values(), key=lambda a: SEVERITY_RANK[a.severity])
        ],
        "rung": st.rung,
        "bitrate_bps": st.bitrate_bps_actual,
        "live_lag_s": st.live_lag_s,
        "backlog_s": st.backlog_s,
        "version": st.version,
        "seen_wall_s": st.seen_wall_s,
    }


def alarm_dict(a: Alarm) -> dict[str, Any]:
    return {
        "id": a.alarm_id,
        "station_id": a.station_id,
        "cause": a.cause,
        "title": a.title,
        "class": a.alarm_class,
        "severity": a.severity,
        "detail": a.detail,
        "started_wall_s": a.started_wall_s,
        "cleared_wall_s": a.cleared_wall_s,
        "acked_by": a.acked_by,
        "acked_wall_s": a.acked_wall_s,
    }
