"""Is every stage of the pipeline still making progress? If not, stop feeding systemd's watchdog.

`ProgressWatchdog` is pure bookkeeping: the stages report progress with `beat(stage, now_s)`
and `stalled(now_s)` names those silent for longer than their deadline. A stage that has nothing
to do (an uplink with an empty backlog) says so with `idle(stage, now_s)` and cannot stall until
`busy(stage, now_s)` starts its clock again; so an idle uplink is healthy, and an upload that
hangs is not.

`Supervisor` is ticked by the main loop (`run_until` in agent/service/pipeline.py): each tick
it sends a human STATUS= line when it changed and WATCHDOG=1 while all stages are healthy. When
a stage hangs the pings stop, the stall is logged and reported once, and systemd (WatchdogSec)
restarts the agent.

How the pipeline feeds it (stage names are free; these are the ones the agent uses):
- "capture": each frame delivered, and each finished reopen attempt while the camera is lost
  (a lost camera is reported, not a hang; a read() that never returns is a hang);
- "encode": each encoded frame; "spool": each segment stored (and each retry of a failed
  write: a full disk is reported, not a hang);
- "uplink": busy() when work is queued, beat() when an upload finishes or sends bytes,
  idle() when the backlog is empty.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from agent.adapt.ladder import Rung
from agent.core.clock import ClockStep, StepDetector, behind_s, parse_utc, utc_iso
from agent.core.events import Event, EventSink

log = logging.getLogger(__name__)

# The loop checks progress (and pings, when healthy) this often; systemd needs a ping within
# WatchdogSec (30 s in the unit), so pinging every second costs one datagram and leaves margin.
DEFAULT_TICK_S = 1.0


@dataclass
class _Stage:
    deadline_s: float
    progress_s: float  # last beat, or when the stage went busy
    idle: bool = False


class ProgressWatchdog:
    """Per-stage progress deadlines. Stages start busy at `now_s` (their start-up grace)."""

    def __init__(self, stages: Mapping[str, float], now_s: float) -> None:
        if not stages:
            raise ValueError("ProgressWatchdog needs at least one stage")
        for name, deadline_s in stages.items():
            if deadline_s <= 0:
                raise ValueError(f"stage {name!r}: deadline must be > 0 s, got {deadline_s}")
        self._stages = {name: _Stage(deadline_s, now_s) for name, deadline_s in stages.items()}
        self._lock = threading.Lock()  # stages report from their own threads

    @property
    def stage_names(self) -> list[str]:
        return list(self._stages)

    def beat(self, stage: str, now_s: float) -> None:
        """`stage` made progress (a frame, a segment, bytes uploaded)."""
        with self._lock:
            s = self._stages[stage]
            s.progress_s = max(s.progress_s, now_s)
            s.idle = False

    def busy(self, stage: str, now_s: float) -> None:
        """`stage` has work: its deadline runs from now if it was idle (else unchanged)."""
        with self._lock:
            s = self._stages[stage]
            if s.idle:
                s.idle = False
                s.progress_s = max(s.progress_s, now_s)

    def idle(self, stage: str, now_s: float) -> None:
        """`stage` has nothing to do: it cannot stall until `busy()` or `beat()`."""
        with self._lock:
            s = self._stages[stage]
            s.idle = True
            s.progress_s = max(s.progress_s, now_s)

    def silent_s(self, now_s: float) -> dict[str, float | None]:
        """Seconds since each stage's last progress; None for an idle stage."""
        with self._lock:
            return {
                name: None if s.idle else max(0.0, now_s - s.progress_s)
                for name, s in self._stages.items()
            }

    def stalled(self, now_s: float) -> list[str]:
        """Stages busy and silent for longer than their deadline, in declaration order."""
        with self._lock:
            return [
                name
                for name, s in self._stages.items()
                if not s.idle and now_s - s.progress_s > s.deadline_s
            ]

    def healthy(self, now_s: float) -> bool:
        return not self.stalled(now_s)


def status_line(state: str, rung: Rung, bitrate_bps: float, backlog_segments: int) -> str:
    """The STATUS= text, e.g. "streaming 720p30 1.5 Mbit/s, backlog 0"."""
    return f"{state} {rung.label} {bitrate_bps / 1e6:.1f} Mbit/s, backlog {backlog_segments}"


class Notifier(Protocol):
    """What the supervisor needs from agent.service.sdnotify.SdNotifier."""

    def status(self, text: str) -> bool: ...

    def watchdog(self) -> bool: ...

    def watchdog_interval_s(self) -> float | None: ...


class Supervisor:
    """Sends STATUS= (on change) and WATCHDOG=1 (only while every stage is healthy)."""

    def __init__(
        self,
        notifier: Notifier,
        progress: ProgressWatchdog,
        status_text: Callable[[], str],
        sink: EventSink | None = None,
    ) -> None:
        self._notifier = notifier
        self._progress = progress
        self._status_text = status_text
        self._sink = sink
        interval_s = notifier.watchdog_interval_s()
        # Tick at least as often as systemd wants pings, and at least every DEFAULT_TICK_S.
        self.interval_s = min(DEFAULT_TICK_S, interval_s) if interval_s else DEFAULT_TICK_S
        self._last_status: str | None = None
        self._stalled: list[str] = []
        self.pings = 0
        self.withheld = 0
        self.status_errors = 0

    @property
    def stalled_stages(self) -> list[str]:
        """The stages that were stalled at the last tick (empty when healthy)."""
        return list(self._stalled)

    def tick(self, now_s: float) -> bool:
        """One round; returns True when WATCHDOG=1 was sent."""
        stalled = self._progress.stalled(now_s)
        if stalled != self._stalled:
            self._report_change(stalled, now_s)
            self._stalled = stalled
        self._send_status()
        if stalled:
            self.withheld += 1
            return False
        self._notifier.watchdog()
        self.pings += 1
        return True

    def _send_status(self) -> None:
        try:
            text = self._status_text()
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            self.status_errors += 1
            log.warning("cannot build the status line (%d so far): %r", self.status_errors, exc)
            return
        if self._stalled:
            text = f"STALLED: {', '.join(self._stalled)} | {text}"
        if text != self._last_status:
            self._notifier.status(text)
            self._last_status = text

    def _report_change(self, stalled: list[str], now_s: float) -> None:
        if not stalled:
            log.warning("all stages make progress again; watchdog pings resume")
            self._emit(Event("watchdog_recovered", "warning", "all stages make progress again"))
            return
        silent = self._progress.silent_s(now_s)
        detail = ", ".join(f"{name} silent {silent[name] or 0.0:.0f} s" for name in stalled)
        log.error("stage stalled: %s; withholding WATCHDOG=1 so systemd restarts us", detail)
        self._emit(
            Event(
                "stage_stalled",
                "critical",
                f"no progress: {detail}; the agent will be restarted",
                {"stages": stalled, "silent_s": {n: silent[n] for n in stalled}},
            )
        )

    def _emit(self, event: Event) -> None:
        if self._sink is not None:
            self._sink.emit(event)


class ClockWatch:
    """Ticked once a second: one `clock_stepped` event per step of the wall clock (more than
    a second against the monotonic clock; agent/core/clock.py). The encoder marks the next
    segment as a discontinuity by itself."""

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._steps = StepDetector()

    def tick(self, now_wall_s: float, now_mono_s: float) -> ClockStep | None:
        step = self._steps.check(now_wall_s, now_mono_s)
        if step is not None:
            log.warning("%s", step.describe())
            self._sink.emit(
                Event(
                    "clock_stepped",
                    "warning",
                    step.describe(),
                    {
                        "step_s": round(step.step_s, 3),
                        "from_utc": utc_iso(step.from_wall_s),
                        "to_utc": utc_iso(step.to_wall_s),
                    },
                )
            )
        return step


def clock_behind(now_wall_s: float, last_end_utc: str) -> Event | None:
    """At start: a `clock_behind` event when the wall clock is more than a second earlier
    than the end of the last segment recorded before (the clock was set back, or the box lost
    its time while off); None otherwise."""
    lag_s = behind_s(now_wall_s, parse_utc(last_end_utc))
    if lag_s is None:
        return None
    now_utc = utc_iso(now_wall_s)
    return Event(
        "clock_behind",
        "warning",
        f"the wall clock ({now_utc}) is {lag_s:.1f} s behind the end of the last recorded "
        f"segment ({last_end_utc}); recording goes on, new times overlap the old ones",
        {"behind_s": round(lag_s, 3), "last_end_utc": last_end_utc, "now_utc": now_utc},
    )
