"""Wall-clock steps, seen against the monotonic clock. Pure: the readings are passed in.

The wall clock (CLOCK_REALTIME) jumps when NTP first syncs a box without a battery-backed clock,
when a technician sets the date, or when a time server is wrong; the monotonic clock never does.
Between two readings both should advance alike, so `wall - mono` stays put; a change of more
than STEP_THRESHOLD_S is a step. (A suspended box looks like a forward step too: the monotonic
clock does not count the time asleep.)

    steps = StepDetector()
    step = steps.check(time.time(), time.monotonic())   # None, or the ClockStep since last time
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

# A second is what a person notices on the burnt-in clock and in playlist times. NTP clients
# step beyond 0.128 s (ntpd), 0.4 s (systemd-timesyncd) or 1 s (Debian's chrony `makestep 1 3`)
# and slew below that, at most 0.5 ms per second (ntpd, timesyncd) or 83 ms per second
# (chrony's maximum): between readings at most 10 s apart (one segment), slewing stays under it.
STEP_THRESHOLD_S = 1.0


@dataclass(frozen=True)
class ClockStep:
    step_s: float  # > 0: the wall clock jumped forward; < 0: backward
    from_wall_s: float  # what the wall clock would read now without the step (Unix seconds)
    to_wall_s: float  # what it reads now

    def describe(self) -> str:
        direction = "forward" if self.step_s > 0 else "back"
        return (
            f"wall clock stepped {direction} by {abs(self.step_s):.1f} s "
            f"({utc_iso(self.from_wall_s)} -> {utc_iso(self.to_wall_s)})"
        )


class StepDetector:
    """`check(now_wall_s, now_mono_s)` returns the step since the previous check, if any."""

    def __init__(self, threshold_s: float = STEP_THRESHOLD_S) -> None:
        if threshold_s <= 0:
            raise ValueError(f"threshold_s must be > 0, got {threshold_s}")
        self._threshold_s = threshold_s
        self._offset_s: float | None = None  # wall - mono at the previous check

    def check(self, now_wall_s: float, now_mono_s: float) -> ClockStep | None:
        """The first call only takes the reference. Every call moves the reference to now,
        so a slow drift never adds up to a step and one step is reported once."""
        offset_s = now_wall_s - now_mono_s
        previous_s, self._offset_s = self._offset_s, offset_s
        if previous_s is None or abs(offset_s - previous_s) <= self._threshold_s:
            return None
        return ClockStep(offset_s - previous_s, now_mono_s + previous_s, now_wall_s)


def behind_s(now_wall_s: float, last_end_wall_s: float) -> float | None:
    """How far the wall clock is behind the end of what was recorded before (e.g. the last
    segment of the previous run), when that is more than STEP_THRESHOLD_S; else None."""
    lag_s = last_end_wall_s - now_wall_s
    return lag_s if lag_s > STEP_THRESHOLD_S else None


def utc_iso(wall_s: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds and a Z (as `utc_now_iso` writes)."""
    moment = datetime.fromtimestamp(wall_s, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_utc(text: str) -> float:
    """ISO 8601 UTC text (with a Z or an offset) -> Unix seconds. Raises ValueError."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"no time zone in {text!r}")
    return moment.timestamp()
