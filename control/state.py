"""Each station's current state, built from its status, heartbeats and events (pure: the
caller passes the clocks in).

`StationState.apply_status/apply_heartbeat/apply_event` take a decoded message (the agent's
schemas, docs/telemetry.md) and the receive time; `connectivity(now_s, listening_since_s)`
says online, stale, offline or never_seen. Times for people are the box's UTC strings and
our wall clock; staleness uses our monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from control.roster import RosterEntry

ONLINE, STALE, OFFLINE, NEVER_SEEN = "online", "stale", "offline", "never_seen"
LOSS_EVENTS = frozenset({"segment_dropped"})
DISK_LOW_EVENTS = frozenset({"disk_low", "spool_write_failed"})


def utc_s(text: str) -> float | None:
    """'2024-05-01T06:00:00.951Z' -> POSIX seconds; None when malformed."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except (TypeError, ValueError):
        return None


def rung_label(rung: dict[str, Any]) -> str:
    """{'height': 720, 'fps': 30, ...} -> '720p30' (the label `set_rung` takes)."""
    return f"{rung.get('height', '?')}p{rung.get('fps', '?')}"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(slots=True)
class StationState:
    station_id: str
    name: str = ""
    region: str = ""
    expected: bool = False  # listed in the roster
    status: str = NEVER_SEEN  # online | offline | never_seen (from the retained status)
    clean_stop: bool | None = None
    offline_reason: str = ""
    status_utc: str = ""  # at_utc of the last status (box clock)
    status_mono_s: float | None = None  # when the status last changed (our monotonic clock)
    version: str = ""
    started_utc: str = ""
    source: str = ""
    first_seen_wall_s: float | None = None
    seen_wall_s: float | None = None  # last message of any kind, our wall clock
    heartbeat_utc: str = ""
    heartbeat_expiry_s: float = 20.0
    uptime_s: float | None = None
    capture_state: str = ""
    fps_in: float | None = None
    health_flags: tuple[str, ...] = ()
    rung: str = ""
    rung_bitrate_bps: int | None = None
    pinned: str | None = None
    bitrate_bps_actual: float | None = None
    live_lag_s: float | None = None
    backlog_s: float | None = None
    backlog_segments: int | None = None
    upload_failures: int = 0
    spool_free_bytes: int | None = None
    spool_total_bytes: int | None = None
    lost_segments: int = 0
    clock_skew_s: float | None = None
    ntp_synchronized: bool | None = None  # the box's own view (heartbeat clock section)
    cpu_percent: float | None = None
    temperature_c: float | None = None
    status_error: str = ""
    last_event_utc: str = ""
    last_event_kind: str = ""
    last_event_message: str = ""
    # Monotonic receive times (not persisted as such: see to_record/from_record).
    seen_mono_s: float | None = None
    heartbeat_mono_s: float | None = None
    loss_mono_s: float | None = None
    disk_low_mono_s: float | None = None

    @classmethod
    def from_roster(cls, entry: RosterEntry) -> StationState:
        return cls(entry.station_id, name=entry.name, region=entry.region, expected=True)

    # -- messages ------------------------------------------------------------------------

    def _seen(self, now_s: float, wall_s: float) -> None:
        self.seen_mono_s = now_s
        self.seen_wall_s = wall_s
        if self.first_seen_wall_s is None:
            self.first_seen_wall_s = wall_s

    def apply_status(self, msg: dict[str, Any], now_s: float, wall_s: float) -> None:
        started = str(msg.get("started_utc", ""))
        if msg.get("state") == "offline" and started and started < self.started_utc:
            return  # the last will of an earlier agent process, after its successor's online
        self._seen(now_s, wall_s)
        status = ONLINE if msg.get("state") == "online" else OFFLINE
        if status != self.status:
            self.status_mono_s = now_s
            if status == ONLINE:
                self.heartbeat_mono_s = None  # back: silent only after a new expiry
        self.status = status
        self.status_utc = str(msg.get("at_utc", ""))
        self.version = str(msg.get("version", self.version))
        self.started_utc = str(msg.get("started_utc", self.started_utc))
        if self.status == ONLINE:
            self.clean_stop, self.offline_reason = None, ""
            summary = msg.get("summary")
            if isinstance(summary, dict):
                self.source = str(summary.get("source", self.source))
        else:
            self.clean_stop = bool(msg.get("clean", False))
            self.offline_reason = str(msg.get("reason", ""))

    def apply_heartbeat(
        self, msg: dict[str, Any], now_s: float, wall_s: float, expiry_s: float | None
    ) -> None:
        self._seen(now_s, wall_s)
        if self.status != ONLINE:
            # Heartbeats come only over a live connection: the station is online whatever the
            # last status said (a never-seen station's status may come later; a last will of
            # this process's previous connection may arrive after its new online).
            self.status, self.clean_stop, self.offline_reason = ONLINE, None, ""
            self.status_mono_s = now_s
        self.heartbeat_mono_s = now_s
        if expiry_s:
            self.heartbeat_expiry_s = expiry_s
        at = str(msg.get("at_utc", ""))
        self.heartbeat_utc = at
        box_s = utc_s(at)
        self.clock_skew_s = None if box_s is None else round(box_s - wall_s, 3)
        self.uptime_s = _num(msg.get("uptime_s"))
        self.status_error = str(msg.get("status_error", ""))
        system = msg.get("system") or {}
        self.spool_free_bytes = _int(system.get("spool_free_bytes"))
        self.spool_total_bytes = _int(system.get("spool_total_bytes"))
        self.cpu_percent = _num(system.get("cpu_percent"))
        self.temperature_c = _num(system.get("temperature_c"))
        capture = msg.get("capture")
        if isinstance(capture, dict):
            self.capture_state = str(capture.get("state", ""))
            self.fps_in = _num(capture.get("fps_in"))
            self.source = str(capture.get("source", self.source))
        encode = msg.get("encode")
        if isinstance(encode, dict):
            rung = encode.get("rung") or {}
            self.rung = rung_label(rung)
            self.rung_bitrate_bps = _int(rung.get("bitrate_bps"))
            self.bitrate_bps_actual = _num(encode.get("bitrate_bps_actual"))
            pinned = encode.get("pinned")
            self.pinned = str(pinned) if pinned else None
        uplink = msg.get("uplink")
        if isinstance(uplink, dict):
            self.live_lag_s = _num(uplink.get("live_lag_s"))
            self.backlog_s = _num(uplink.get("backlog_s"))
            self.backlog_segments = _int(uplink.get("backlog_segments"))
            self.upload_failures = _int(uplink.get("consecutive_failures")) or 0
        spool = msg.get("spool")
        if isinstance(spool, dict):
            lost = _int(spool.get("lost_segments")) or 0
            if lost > self.lost_segments:
                self.loss_mono_s = now_s
            self.lost_segments = lost
        clock = msg.get("clock")
        if isinstance(clock, dict):
            ntp = clock.get("ntp_synchronized")
            self.ntp_synchronized = ntp if isinstance(ntp, bool) else None
        health = msg.get("health")
        if isinstance(health, dict) and isinstance(health.get("flags"), list):
            self.health_flags = tuple(str(f) for f in health["flags"])
        elif health is None:
            self.health_flags = ()

    def apply_event(self, msg: dict[str, Any], now_s: float, wall_s: float) -> None:
        """A new (not duplicate) event; the caller de-duplicates by id."""
        self._seen(now_s, wall_s)
        at = str(msg.get("at_utc", ""))
        kind = str(msg.get("kind", ""))
        if at >= self.last_event_utc:
            self.last_event_utc = at
            self.last_event_kind = kind
            self.last_event_message = str(msg.get("message", ""))
        if kind in LOSS_EVENTS:
            self.loss_mono_s = now_s
        elif kind in DISK_LOW_EVENTS:
            self.disk_low_mono_s = now_s
        elif kind in ("health_raised", "health_cleared") and at >= self.heartbeat_utc:
            # Newer than the last heartbeat's flags: show it at once.
            condition = str((msg.get("fields") or {}).get("condition", ""))
            flags = [f for f in self.health_flags if f != condition]
            if kind == "health_raised" and condition:
                flags.append(condition)
            self.health_flags = tuple(flags)

    # -- derived -------------------------------------------------------------------------

    def connectivity(self, now_s: float, listening_since_s: float) -> str:
        """online / stale (heartbeats older than their expiry) / offline / never_seen.
        `listening_since_s`: when our own broker connection (re)started: a station is not
        stale before it had one expiry to send a heartbeat to us."""
        if self.status != ONLINE:
            return self.status
        last_s = self.heartbeat_mono_s if self.heartbeat_mono_s is not None else self.seen_mono_s
        since_s = max(last_s if last_s is not None else now_s, listening_since_s)
        return STALE if now_s - since_s > self.heartbeat_expiry_s else ONLINE

    # -- persistence ---------------------------------------------------------------------

    def to_record(self, now_s: float, wall_s: float) -> dict[str, Any]:
        """A JSON-able dict; monotonic times become wall-clock times."""
        record = {name: getattr(self, name) for name in _PLAIN_FIELDS}  # flat: no deep copy
        for name, wall_name in _MONO_WALL:
            mono = getattr(self, name)
            record[wall_name] = None if mono is None else wall_s - (now_s - mono)
        record["health_flags"] = list(self.health_flags)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], now_s: float, wall_s: float) -> StationState:
        values = {k: v for k, v in record.items() if k in _FIELDS}
        for name, wall_name in _MONO_WALL:
            wall = record.get(wall_name)
            values[name] = None if wall is None else now_s - (wall_s - wall)
        values["health_flags"] = tuple(record.get("health_flags") or ())
        return cls(**values)


_MONO_FIELDS = (
    "status_mono_s",
    "seen_mono_s",
    "heartbeat_mono_s",
    "loss_mono_s",
    "disk_low_mono_s",
)
_MONO_WALL = tuple((name, name.replace("_mono_s", "_wall_s_at")) for name in _MONO_FIELDS)
_PLAIN_FIELDS = tuple(f.name for f in fields(StationState) if f.name not in _MONO_FIELDS)
_FIELDS = set(_PLAIN_FIELDS)
