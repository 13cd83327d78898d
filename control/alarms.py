"""Alarms: one per cause and station, raised and cleared from the station's state (pure).

`station_causes(state, now_s, cfg, listening_since_s)` names what is wrong with a station now.
`AlarmBook.update(station, causes, now_wall_s)` turns that into transitions: an alarm is raised
when its cause appears and cleared when it goes; while a station is offline or stale nothing
else is known about it, so its other alarms stay as they were (a box that lost power does not
"clear" its dark camera). Staff acknowledge an alarm (who, when); acknowledging does not clear
it, the telemetry does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace

from control.config import AlarmConfig
from control.state import NEVER_SEEN, OFFLINE, STALE, StationState

# cause -> (class for webhooks, severity, plain-language title)
CAUSES: dict[str, tuple[str, str, str]] = {
    "offline": ("connectivity", "critical", "station offline"),
    "stale": ("connectivity", "error", "no heartbeat"),
    "camera_no_frames": ("camera", "error", "camera delivers no picture"),
    "camera_dark": ("camera", "error", "picture dark"),
    "camera_covered": ("camera", "error", "camera covered"),
    "camera_frozen": ("camera", "error", "picture frozen"),
    "camera_moved": ("camera", "error", "camera moved"),
    "camera_washed_out": ("camera", "error", "picture washed out"),
    "camera_blurred": ("camera", "warning", "picture blurred"),
    "camera_low_fps": ("camera", "warning", "camera slow"),
    "live_lag": ("uplink", "warning", "live video behind"),
    "backlog": ("uplink", "warning", "upload backlog"),
    "loss": ("recording", "critical", "recording lost"),
    "disk_low": ("recording", "warning", "disk low"),
    "clock": ("clock", "warning", "clock wrong"),
}
CONNECTIVITY_CAUSES = frozenset({"offline", "stale"})
SEVERITY_RANK = {"critical": 0, "error": 1, "warning": 2}


def station_causes(
    st: StationState, now_s: float, cfg: AlarmConfig, listening_since_s: float
) -> dict[str, str] | None:
    """cause -> detail for everything wrong with the station now. Offline or stale: only that
    cause. None: nothing is known (never seen, or offline for less than `offline_after_s`, as
    every station is for a moment when the broker restarts); the caller keeps the alarms as
    they are."""
    conn = st.connectivity(now_s, listening_since_s)
    if conn == NEVER_SEEN:
        return None
    if conn == OFFLINE:
        if st.status_mono_s is not None and now_s - st.status_mono_s < cfg.offline_after_s:
            return None
        how = "clean stop" if st.clean_stop else "connection lost"
        return {"offline": f"{how}: {st.offline_reason or 'no reason given'}"}
    if conn == STALE:
        return {"stale": f"no heartbeat for more than {st.heartbeat_expiry_s:.0f} s"}
    causes: dict[str, str] = {}
    if st.capture_state == "reconnecting" and "no_frames" not in st.health_flags:
        causes["camera_no_frames"] = "camera lost, reconnecting"
    for flag in st.health_flags:
        cause = f"camera_{flag}"
        if cause in CAUSES:
            causes[cause] = f"camera health: {flag}"
    if st.live_lag_s is not None and st.live_lag_s > cfg.live_lag_max_s:
        causes["live_lag"] = f"live video {st.live_lag_s:.0f} s behind"
    backlog_max_s = cfg.backlog_minutes * 60
    if st.backlog_s is not None and st.backlog_s > backlog_max_s:
        causes["backlog"] = f"{st.backlog_s / 60:.1f} min of video waiting for upload"
    if st.loss_mono_s is not None and now_s - st.loss_mono_s < cfg.event_hold_s:
        causes["loss"] = f"{st.lost_segments} segment(s) lost before upload"
    if _disk_low(st, now_s, cfg):
        causes["disk_low"] = _disk_text(st)
    if st.clock_skew_s is not None and abs(st.clock_skew_s) > cfg.clock_max_skew_s:
        causes["clock"] = f"box clock {st.clock_skew_s:+.0f} s off"
    elif st.ntp_synchronized is False and cfg.ntp_required:
        causes["clock"] = "the box's clock is not synchronised by NTP"
    return causes


def _disk_low(st: StationState, now_s: float, cfg: AlarmConfig) -> bool:
    if st.disk_low_mono_s is not None and now_s - st.disk_low_mono_s < cfg.event_hold_s:
        return True
    free, total = st.spool_free_bytes, st.spool_total_bytes
    return bool(free is not None and total and free * 100 < total * cfg.disk_low_percent)


def _disk_text(st: StationState) -> str:
    if st.spool_free_bytes is not None and st.spool_total_bytes:
        share = 100 * st.spool_free_bytes / st.spool_total_bytes
        return f"{share:.0f}% of the spool disk free"
    return "the box reported a full or failing disk"


@dataclass(frozen=True, slots=True)
class Alarm:
    alarm_id: str
    station_id: str
    cause: str
    detail: str
    started_wall_s: float
    cleared_wall_s: float | None = None
    acked_by: str | None = None
    acked_wall_s: float | None = None

    @property
    def alarm_class(self) -> str:
        return CAUSES[self.cause][0]

    @property
    def severity(self) -> str:
        return CAUSES[self.cause][1]

    @property
    def title(self) -> str:
        return CAUSES[self.cause][2]

    @property
    def active(self) -> bool:
        return self.cleared_wall_s is None


class AlarmBook:
    """The active alarms, by station and cause (not thread-safe: the caller holds a lock)."""

    def __init__(self, active: list[Alarm] | None = None) -> None:
        self._active: dict[str, dict[str, Alarm]] = {}
        for alarm in active or []:
            self._active.setdefault(alarm.station_id, {})[alarm.cause] = alarm

    def update(
        self, station_id: str, causes: dict[str, str] | None, now_wall_s: float
    ) -> list[Alarm]:
        """Raise what is new, clear what went; the changed alarms (raised or cleared).
        `causes` None: nothing known, nothing changes."""
        current = self._active.get(station_id, {})
        if causes is None or (not causes and not current):
            return []
        connectivity_only = bool(causes.keys() & CONNECTIVITY_CAUSES)
        changed: list[Alarm] = []
        for cause, alarm in list(current.items()):
            keep_unknown = connectivity_only and cause not in CONNECTIVITY_CAUSES
            if cause not in causes and not keep_unknown:
                cleared = replace(alarm, cleared_wall_s=now_wall_s)
                del current[cause]
                changed.append(cleared)
        for cause, detail in causes.items():
            if cause not in current:
                alarm = Alarm(uuid.uuid4().hex, station_id, cause, detail, now_wall_s)
                current[cause] = alarm
                changed.append(alarm)
        if current:
            self._active[station_id] = current
        else:
            self._active.pop(station_id, None)
        return changed

    def acknowledge(self, alarm_id: str, user: str, now_wall_s: float) -> Alarm | None:
        """The acknowledged alarm, or None when no active alarm has that id."""
        for station_alarms in self._active.values():
            for cause, alarm in station_alarms.items():
                if alarm.alarm_id == alarm_id:
                    acked = replace(alarm, acked_by=user, acked_wall_s=now_wall_s)
                    station_alarms[cause] = acked
                    return acked
        return None

    def by_station(self) -> dict[str, dict[str, Alarm]]:
        """station -> cause -> alarm, for stations with an active alarm (do not modify)."""
        return self._active

    def of(self, station_id: str) -> dict[str, Alarm]:
        return self._active.get(station_id, {})

    def __iter__(self) -> Iterator[Alarm]:
        for station_alarms in self._active.values():
            yield from station_alarms.values()

    def __len__(self) -> int:
        return sum(len(a) for a in self._active.values())
