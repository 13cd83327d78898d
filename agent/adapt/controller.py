"""Rung controller: which rung (picture and bitrate) the next segment is encoded at.

Pure: `decide(now_s, inputs)` takes monotonic seconds and measurements, returns a `Rung`, reads
no clock and does no I/O. Call it once per segment boundary. Rules, in order:

1. Pinned (`pin()`): the pinned rung, always, until `auto()`. Adaptation disabled: the top rung.
2. Offline: the configured offline rung (or lower, if the CPU cap says so).
3. CPU: encoder load above `cpu_high_load` (or over 5 % of frames dropped) caps the pixel rate
   below the current one (predicted from load, at least one picture step); the cap is lifted one
   picture at a time after `cpu_up_after_s` of load low enough for the next picture.
4. Live budget. usable = margin * estimate. Live and backfill share the link, live first: the
   backlog asks for backlog_bytes*8 / backfill_target_s; live gets usable minus that, but never
   less than live_min_share * usable, so backfill cannot starve the live edge (a huge backlog is
   then cleared with what live leaves, more slowly). When the live edge itself lags (older live
   segments still unsent), the link delivered at most current_bitrate * segment_s /
   lag lately, and the budget is capped at margin times that.
5. Down fast: when the budget is below the current rung, go at once to the highest rung whose
   bitrate fits the budget (several steps if needed).
6. Up careful: one rung at a time, only when the next rung fits `up_margin` (< margin) of the
   estimate after backfill, the live edge does not lag, the CPU cap allows it, this has held for
   `up_after_s`, and the last step down is `hold_after_down_s` old. The gap between margin and
   up_margin is the hysteresis that keeps a constant link from flapping.
7. Trim: with `bitrate_trim`, the bitrate of the chosen picture is raised towards the budget
   (3 % steps, up at least 6 % at a time, down at once; at most the next rung's bitrate times
   margin/up_margin, never above the top rung's bitrate), so a coarse ladder and the up
   hysteresis still use the link. A trim is a bitrate-only change:
   same picture, no new encoder context, not counted as a switch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agent.adapt.ladder import (
    AdaptConfig,
    Rung,
    format_bps,
    highest_at_or_below,
)
from agent.adapt.throughput import ThroughputEstimator

# The live edge counts as lagging once two older segments are still unsent (one can be a single
# large segment; a stalled upload already lowers the estimate through the in-flight bound).
LAG_TRIGGER_SEGMENTS = 2.0
# Bitrate trim granularity (5 %), and the rise needed before a trim goes up again (2 steps).
TRIM_STEP = 1.03
TRIM_UP_STEPS = 2
# After a CPU overload, aim the picture at this load (headroom below cpu_high_load).
CPU_TARGET_SHARE = 0.75
# Dropped frames mean an overload only above this share of a segment's frames (5 %: more than 3
# of a 2 s segment at 30 fps). A frame or two is a hiccup, not a picture too big for the CPU:
# the encoder's first frames after a start, a busy disk; one dropped frame in a run's first
# second (at load 0.10) used to cap the picture for cpu_up_after_s (issue 15). An encoder that
# cannot keep up drops a frame every few, and its load says so too.
DROPPED_SHARE_OVERLOAD = 0.05


@dataclass(frozen=True)
class ControlInputs:
    """What the controller sees at a segment boundary.

    estimate_bps: ThroughputEstimator.estimate_bps(now_s) (None until measured).
    offline: ThroughputEstimator.offline(now_s).
    backlog_bytes: bytes recorded but not uploaded, except the segment that has just closed.
    live_lag_s: seconds of video older than the just-closed segment that are still missing at
        the live edge (0 when the previous live segment is uploaded). Segments the uploader left
        for backfill count in backlog_bytes, not here.
    encode_load: encode time per frame / frame interval, averaged over the last segment.
    frames_dropped: frames the encoder dropped or could not keep up with during the last segment.
    segment_s: segment duration.
    """

    estimate_bps: float | None
    offline: bool = False
    backlog_bytes: int = 0
    live_lag_s: float = 0.0
    encode_load: float = 0.0
    frames_dropped: int = 0
    segment_s: float = 2.0


def control_inputs(
    estimator: ThroughputEstimator,
    now_s: float,
    *,
    backlog_bytes: int,
    live_lag_s: float,
    encode_load: float,
    frames_dropped: int,
    segment_s: float,
) -> ControlInputs:
    """The inputs for the decision at a segment boundary at `now_s`. The pipeline and the
    trace replay (bench/adapt_traces.py) both build them here, so the bench measures what runs."""
    return ControlInputs(
        estimate_bps=estimator.estimate_bps(now_s),
        offline=estimator.offline(now_s),
        backlog_bytes=backlog_bytes,
        live_lag_s=live_lag_s,
        encode_load=encode_load,
        frames_dropped=frames_dropped,
        segment_s=segment_s,
    )


def pixel_rate(rung: Rung) -> int:
    return rung.width * rung.height * rung.fps


class RungController:
    def __init__(self, ladder: Sequence[Rung], cfg: AdaptConfig) -> None:
        if not ladder:
            raise ValueError("the ladder is empty")
        if any(a.bitrate_bps >= b.bitrate_bps for a, b in zip(ladder, ladder[1:], strict=False)):
            raise ValueError("the ladder must be ascending by bitrate")
        self._ladder = list(ladder)
        self._cfg = cfg
        self._index = highest_at_or_below(self._ladder, cfg.start_rung)
        self._offline_index = highest_at_or_below(self._ladder, cfg.offline_rung)
        self._current = self._ladder[self._index]
        self._pinned: Rung | None = None
        self._headroom_since_s: float | None = None
        self._last_down_s: float | None = None
        self._cpu_cap_pixels: int | None = None
        self._cpu_ok_since_s: float | None = None
        self._trim_steps = 0
        self._reason = "start"
        self.switches = 0

    # --- public face ------------------------------------------------------------------------

    @property
    def ladder(self) -> list[Rung]:
        return list(self._ladder)

    @property
    def current(self) -> Rung:
        """The rung returned by the last decision (before the first one: the start rung)."""
        return self._current

    @property
    def reason(self) -> str:
        """Why the last decision chose what it chose, for events and telemetry."""
        return self._reason

    @property
    def pinned(self) -> Rung | None:
        return self._pinned

    def pin(self, rung: Rung | str) -> Rung:
        """Manual override: always this ladder rung (a Rung of the ladder, or a label such as
        '720p30': the highest rung at or below it) until `auto()`."""
        if isinstance(rung, str):
            index = highest_at_or_below(self._ladder, rung)
        elif rung in self._ladder:
            index = self._ladder.index(rung)
        else:
            raise ValueError(f"{rung.name} is not a rung of this station's ladder")
        self._pinned = self._ladder[index]
        return self._pinned

    def auto(self) -> None:
        """End a pin; adaptation resumes from the pinned rung."""
        if self._pinned is not None:
            self._index = self._ladder.index(self._pinned)
            self._pinned = None
            self._trim_steps = 0
            self._headroom_since_s = None

    def decide(self, now_s: float, inputs: ControlInputs) -> Rung:
        """The rung for the next segment."""
        if self._pinned is not None:
            return self._finish(self._pinned, f"pinned to {self._pinned.name}")
        if not self._cfg.enabled:
            self._index = len(self._ladder) - 1
            return self._finish(self._ladder[-1], "adaptation disabled: top rung")
        cpu_note = self._update_cpu_cap(now_s, inputs)
        cpu_top = self._cpu_top_index()
        if inputs.offline:
            self._headroom_since_s = None
            self._set_index(now_s, min(self._offline_index, cpu_top))
            return self._finish(self._ladder[self._index], "uplink offline: offline rung")
        if inputs.estimate_bps is None:
            self._set_index(now_s, min(self._index, cpu_top))
            return self._finish(self._ladder[self._index], "no throughput estimate yet" + cpu_note)
        budget_bps, why = self._live_budget(inputs.estimate_bps, inputs)
        fitting = max(0, self._highest_fitting(budget_bps))
        if fitting < self._index or cpu_top < self._index:
            self._headroom_since_s = None
            self._set_index(now_s, min(fitting, cpu_top))
            reason = f"down: {why}" if fitting <= cpu_top else "down: encoder overloaded"
        elif self._may_step_up(now_s, inputs, budget_bps, cpu_top):
            self._headroom_since_s = now_s
            self._set_index(now_s, self._index + 1)
            reason = f"up: sustained headroom, {why}"
        else:
            reason = f"hold: {why}"
        return self._finish(self._trimmed(now_s, budget_bps), reason + cpu_note)

    # --- rules ------------------------------------------------------------------------------

    def _live_budget(self, estimate_bps: float, inputs: ControlInputs) -> tuple[float, str]:
        usable_bps = self._cfg.margin * estimate_bps
        backfill_bps = 8.0 * inputs.backlog_bytes / self._cfg.backfill_target_s
        budget_bps = max(usable_bps - backfill_bps, self._cfg.live_min_share * usable_bps)
        why = f"estimate {format_bps(estimate_bps)}"
        if backfill_bps > 0:
            why += f", backfill {format_bps(backfill_bps)}"
        segment_s = max(inputs.segment_s, 1e-3)
        if inputs.live_lag_s >= LAG_TRIGGER_SEGMENTS * segment_s:
            delivered_bps = self._current.bitrate_bps * segment_s / inputs.live_lag_s
            budget_bps = min(budget_bps, self._cfg.margin * delivered_bps)
            why += f", live lag {inputs.live_lag_s:.1f}s"
        return budget_bps, why

    def _highest_fitting(self, budget_bps: float) -> int:
        fitting = [i for i, r in enumerate(self._ladder) if r.bitrate_bps <= budget_bps]
        return fitting[-1] if fitting else 0

    def _may_step_up(
        self, now_s: float, inputs: ControlInputs, budget_bps: float, cpu_top: int
    ) -> bool:
        nxt = self._index + 1
        up_budget_bps = budget_bps * self._cfg.up_margin / self._cfg.margin
        headroom = (
            nxt < len(self._ladder)
            and nxt <= cpu_top
            and self._ladder[nxt].bitrate_bps <= up_budget_bps
            and inputs.live_lag_s < LAG_TRIGGER_SEGMENTS * inputs.segment_s
        )
        if not headroom:
            self._headroom_since_s = None
            return False
        if self._headroom_since_s is None:
            self._headroom_since_s = now_s
        held = now_s - self._headroom_since_s >= self._cfg.up_after_s
        return held and self._calm(now_s)

    def _calm(self, now_s: float) -> bool:
        """No going up (step or trim) this soon after going down: the estimate is still
        converging on a link that has just fallen, and bouncing back makes it flap."""
        return self._last_down_s is None or now_s - self._last_down_s >= self._cfg.hold_after_down_s

    def _update_cpu_cap(self, now_s: float, inputs: ControlInputs) -> str:
        current_pixels = pixel_rate(self._current)
        load = inputs.encode_load
        frames = max(1.0, inputs.segment_s * self._current.fps)
        dropping = inputs.frames_dropped > DROPPED_SHARE_OVERLOAD * frames
        if load > self._cfg.cpu_high_load or dropping:
            self._cpu_ok_since_s = None
            target = current_pixels * CPU_TARGET_SHARE * self._cfg.cpu_high_load / max(load, 1e-9)
            lower = [p for p in self._pixel_levels() if p < current_pixels]
            if not lower:
                return f" (encoder overloaded: load {load:.2f}, nothing lower)"
            cap = max([p for p in lower if p <= target], default=min(lower))
            cap = min(cap, max(lower))
            if self._cpu_cap_pixels is None or cap < self._cpu_cap_pixels:
                self._cpu_cap_pixels = cap
            return f" (encoder load {load:.2f}, {inputs.frames_dropped} dropped)"
        if self._cpu_cap_pixels is None:
            return ""
        higher = [p for p in self._pixel_levels() if p > self._cpu_cap_pixels]
        if not higher:
            self._cpu_cap_pixels = None
            return ""
        predicted = load * higher[0] / max(current_pixels, 1)
        if predicted > CPU_TARGET_SHARE * self._cfg.cpu_high_load:
            self._cpu_ok_since_s = None
            return " (picture capped by encoder load)"
        if self._cpu_ok_since_s is None:
            self._cpu_ok_since_s = now_s
        if now_s - self._cpu_ok_since_s >= self._cfg.cpu_up_after_s:
            self._cpu_ok_since_s = now_s
            self._cpu_cap_pixels = higher[0] if len(higher) > 1 else None
        return " (picture capped by encoder load)"

    def _pixel_levels(self) -> list[int]:
        return sorted({pixel_rate(r) for r in self._ladder})

    def _cpu_top_index(self) -> int:
        if self._cpu_cap_pixels is None:
            return len(self._ladder) - 1
        allowed = [i for i, r in enumerate(self._ladder) if pixel_rate(r) <= self._cpu_cap_pixels]
        return allowed[-1] if allowed else 0

    def _trimmed(self, now_s: float, budget_bps: float) -> Rung:
        rung = self._ladder[self._index]
        if not self._cfg.bitrate_trim or self._index + 1 >= len(self._ladder):
            self._trim_steps = 0
            return rung
        # Within the hysteresis band (next rung fits margin but not yet up_margin) trim freely;
        # beyond it the picture steps up soon, so a small picture never gets a huge bitrate.
        next_bps = self._ladder[self._index + 1].bitrate_bps
        ceiling_bps = min(
            next_bps * self._cfg.margin / self._cfg.up_margin, self._ladder[-1].bitrate_bps
        )
        steps = _trim_steps_within(rung.bitrate_bps, min(budget_bps, ceiling_bps))
        if self._trim_steps < steps < self._trim_steps + TRIM_UP_STEPS or (
            steps > self._trim_steps and not self._calm(now_s)
        ):
            # up only by TRIM_UP_STEPS at once (hysteresis), and never right after a step
            # down: the estimate is still converging and bouncing back makes it flap
            steps = self._trim_steps
        self._trim_steps = steps
        if steps == 0:
            return rung
        bitrate_bps = int(rung.bitrate_bps * TRIM_STEP**steps)
        return Rung(rung.width, rung.height, rung.fps, bitrate_bps)

    # --- bookkeeping ------------------------------------------------------------------------

    def _set_index(self, now_s: float, index: int) -> None:
        if index < self._index:
            self._last_down_s = now_s
        if index != self._index:
            self.switches += 1
            self._trim_steps = 0
        self._index = index

    def _finish(self, rung: Rung, reason: str) -> Rung:
        self._current = rung
        self._reason = f"{reason} -> {rung.name}"
        return rung


def _trim_steps_within(base_bps: int, target_bps: float) -> int:
    """The most TRIM_STEP multiplications of `base_bps` that stay <= `target_bps` (>= 0)."""
    if target_bps < base_bps * TRIM_STEP:
        return 0
    steps = math.floor(math.log(target_bps / base_bps, TRIM_STEP))
    while steps > 0 and base_bps * TRIM_STEP**steps > target_bps:
        steps -= 1  # float rounding in log()
    return steps
