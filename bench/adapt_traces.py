"""Replay uplink traces against the real ThroughputEstimator and RungController.

Simulated time (no clock, no network), so a run takes seconds. Per trace and per agent:
  adaptive  the real estimator + controller (default [adapt] config, 1080p30 camera)
  fixed     the top rung all the time: what plain ffmpeg at a fixed bitrate would do
Both use the same simulated encoder (segment_s segments at the rung's bitrate with size noise),
the same uploader (one PUT at a time, newest segment first, then backlog oldest first; an upload
with no progress for UPLOAD_TIMEOUT_S fails and is retried after a jittered backoff) and the same
spool quota. The uploader feeds the estimator exactly as the pipeline should: upload_started /
upload_finished with the simulated durations.

Figures:
  util60    the same after the first SETTLE_S seconds (start-up climb excluded)
  util      video bits delivered / integral of min(capacity, top rung bitrate); above 1 when
            a backlog is backfilled faster than the top rung's bitrate
  lag p50/95 live lag in segments: newest closed segment minus newest uploaded one, sampled
            every tick while the link is up (0: nothing waiting; 1: the newest is on its way)
  down seg  per step down: segments from the capacity drop until the chosen bitrate <= capacity
            (a drop to 0: until the controller switches to the offline rung)
  up s      per step up: seconds until the chosen bitrate >= 60 % of min(capacity, top rung)
  sw/min    rung switches (picture or ladder bitrate; trims not counted) per minute
  set.sw    switches after the first SETTLE_S seconds (constant links)
  lost      segments evicted unsent by the spool quota
  left s    seconds of video still unsent at the end of the trace

Usage: .venv/bin/python -m bench.adapt_traces [--seed N] [--segment-s 2] [--only NAME]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.adapt.controller import RungController, control_inputs
from agent.adapt.ladder import AdaptConfig, Rung, build_ladder
from agent.adapt.throughput import ThroughputEstimator

TICK_S = 0.02
RTT_S = 0.04  # request + response round trips per PUT
UPLOAD_TIMEOUT_S = 10.0  # no progress for this long: the PUT fails (httpx write timeout)
BACKOFF_MAX_S = 30.0
SIZE_NOISE_SIGMA = 0.12  # log-normal spread of segment sizes around the target bitrate
SPOOL_QUOTA_BYTES = 150 * 10**6  # scaled down so a fixed bitrate on a slow link hits it
SETTLE_S = 60.0
ENCODE_LOAD = 0.3  # the simulated encoder keeps up with every rung (no CPU cap in play)
PROGRESS = True  # the uploader reports bytes sent (--no-progress: completions only)
PROGRESS_EVERY_S = 0.25
CAMERA = (1920, 1080, 30)


@dataclass
class Trace:
    name: str
    duration_s: float
    capacity_bps: Callable[[float], float]
    steps: list[tuple[float, float, float]] = field(default_factory=list)  # (t, before, after)


def make_traces(rng: random.Random) -> list[Trace]:
    def step(t: float) -> float:
        return 600_000.0 if 121.3 <= t < 241.3 else 4_000_000.0

    def sawtooth(t: float) -> float:
        return 500_000.0 + 3_500_000.0 * ((t % 60.0) / 60.0)

    def outage(t: float) -> float:
        return 0.0 if 121.3 <= t < 241.3 else 3_000_000.0

    # ADSL upstream of 1 Mbit/s shared TCP-fairly with bursts of cross traffic (a phone syncing
    # photos, e-mail): while a burst runs we get half.
    bursts: list[tuple[float, float]] = []
    t = rng.uniform(10, 40)
    while t < 480:
        length = rng.uniform(5, 40)
        bursts.append((t, t + length))
        t += length + rng.uniform(20, 90)

    def dsl(t: float) -> float:
        share = 0.5 if any(a <= t < b for a, b in bursts) else 1.0
        return 1_000_000.0 * share

    # 4G: 8 Mbit/s cell with log-normal fading (AR(1) on the log, ~5 s memory) and a lunchtime
    # congestion from 180 s to 300 s down to a quarter.
    fade: list[float] = []
    x = 0.0
    for _ in range(int(480 / 0.5) + 2):
        x = 0.9 * x + rng.gauss(0.0, 0.4 * math.sqrt(1 - 0.9**2))
        fade.append(x)

    def lte(t: float) -> float:
        base = 2_000_000.0 if 180 <= t < 300 else 8_000_000.0
        return max(200_000.0, base * math.exp(fade[int(t / 0.5)]))

    return [
        Trace("step 4M>600k>4M", 360, step, [(121.3, 4e6, 6e5), (241.3, 6e5, 4e6)]),
        Trace("sawtooth 0.5-4M/60s", 300, sawtooth),
        Trace("dsl 1M+cross", 480, dsl),
        Trace("4g fading", 480, lte, [(180, 8e6, 2e6), (300, 2e6, 8e6)]),
        Trace("outage 2min @3M", 360, outage, [(121.3, 3e6, 0.0), (241.3, 0.0, 3e6)]),
        Trace("const 400k", 300, lambda t: 400_000.0),
        Trace("const 1M", 300, lambda t: 1_000_000.0),
        Trace("const 3M", 300, lambda t: 3_000_000.0),
        Trace("const 10M", 300, lambda t: 10_000_000.0),
    ]


@dataclass
class Segment:
    seq: int
    end_s: float
    nbytes: int
    uploaded: bool = False


@dataclass
class Upload:
    seg: Segment
    ticket: int
    remaining_bytes: float
    latency_left_s: float
    last_progress_s: float
    last_report_s: float = 0.0


@dataclass
class Result:
    util: float
    util_settled: float
    lag_p50: float
    lag_p95: float
    down_seg: list[float]
    up_s: list[float]
    switches_per_min: float
    settled_switches: int
    lost: int
    left_s: float


class SimAgent:
    def __init__(
        self, ladder: list[Rung], cfg: AdaptConfig, segment_s: float, rng: random.Random
    ) -> None:
        self.segment_s = segment_s
        self.rng = rng
        self.estimator = ThroughputEstimator()
        self.controller = RungController(ladder, cfg)
        self.rung = self.controller.current
        self.segments: list[Segment] = []
        self.closed = 0
        self.upload: Upload | None = None
        self.backoff_until_s = 0.0
        self.failures = 0
        self.delivered_bits = 0.0
        self.lost = 0
        self.decisions: list[tuple[float, int, str]] = []
        self.switch_times: list[float] = []

    def tick(self, now_s: float, capacity_bps: float) -> None:
        self._transfer(now_s, capacity_bps)
        if now_s + 1e-9 >= (self.closed + 1) * self.segment_s:
            self._close_segment(now_s)
        if self.upload is None and now_s >= self.backoff_until_s:
            self._start_next(now_s)

    def lag_segments(self) -> float:
        if not self.segments:
            return 0.0
        uploaded = [s.seq for s in self.segments if s.uploaded]
        newest_uploaded = uploaded[-1] if uploaded else -1
        return float(self.segments[-1].seq - newest_uploaded)

    def _transfer(self, now_s: float, capacity_bps: float) -> None:
        up = self.upload
        if up is None:
            return
        budget_s = TICK_S
        if up.latency_left_s > 0:
            used = min(budget_s, up.latency_left_s)
            up.latency_left_s -= used
            budget_s -= used
        sent = min(up.remaining_bytes, capacity_bps * budget_s / 8.0)
        if sent > 0:
            up.remaining_bytes -= sent
            up.last_progress_s = now_s
            if PROGRESS and now_s - up.last_report_s >= PROGRESS_EVERY_S:
                up.last_report_s = now_s
                done = int(up.seg.nbytes - up.remaining_bytes)
                self.estimator.upload_progress(up.ticket, now_s, done)
        if up.remaining_bytes <= 1e-6 and up.latency_left_s <= 0:
            self.estimator.upload_finished(up.ticket, now_s, ok=True)
            up.seg.uploaded = True
            self.delivered_bits += 8.0 * up.seg.nbytes
            self.upload = None
            self.failures = 0
        elif now_s - up.last_progress_s > UPLOAD_TIMEOUT_S:
            self.estimator.upload_finished(up.ticket, now_s, ok=False)
            self.upload = None
            self.failures += 1
            delay_s = min(BACKOFF_MAX_S, 2.0**self.failures)
            self.backoff_until_s = now_s + delay_s * self.rng.uniform(0.5, 1.0)

    def _close_segment(self, now_s: float) -> None:
        noise = math.exp(self.rng.gauss(0.0, SIZE_NOISE_SIGMA))
        nbytes = int(self.rung.bitrate_bps * self.segment_s / 8.0 * noise)
        self.segments.append(Segment(self.closed, now_s, nbytes))
        self.closed += 1
        pending = [s for s in self.segments if not s.uploaded]
        while sum(s.nbytes for s in pending) > SPOOL_QUOTA_BYTES and len(pending) > 1:
            victim = pending.pop(0)
            if self.upload is not None and self.upload.seg is victim:
                continue
            self.segments.remove(victim)
            self.lost += 1
        self._decide(now_s)

    def _decide(self, now_s: float) -> None:
        newest = self.segments[-1]
        backlog = sum(s.nbytes for s in self.segments[:-1] if not s.uploaded)
        uploaded = [s for s in self.segments[:-1] if s.uploaded]
        previous_end_s = self.segments[-2].end_s if len(self.segments) > 1 else newest.end_s
        lag_s = max(0.0, previous_end_s - (uploaded[-1].end_s if uploaded else 0.0))
        inputs = control_inputs(
            self.estimator,
            now_s,
            backlog_bytes=backlog,
            live_lag_s=lag_s,
            encode_load=ENCODE_LOAD,
            frames_dropped=0,
            segment_s=self.segment_s,
        )
        before = self.controller.switches
        self.rung = self.controller.decide(now_s, inputs)
        if self.controller.switches != before:
            self.switch_times.append(now_s)
        self.decisions.append((now_s, self.rung.bitrate_bps, self.controller.reason))

    def _start_next(self, now_s: float) -> None:
        pending = [s for s in self.segments if not s.uploaded]
        if not pending:
            return
        seg = pending[-1] if pending[-1] is self.segments[-1] else pending[0]
        ticket = self.estimator.upload_started(now_s, seg.nbytes)
        self.upload = Upload(seg, ticket, float(seg.nbytes), RTT_S, now_s)


def run(trace: Trace, cfg: AdaptConfig, segment_s: float, seed: int) -> Result:
    ladder = build_ladder(cfg, *CAMERA)
    top_bps = ladder[-1].bitrate_bps
    agent = SimAgent(ladder, cfg, segment_s, random.Random(seed))
    lags: list[float] = []
    usable_bits = 0.0
    settled_usable_bits = 0.0
    settled_start_bits: float | None = None
    ticks = int(trace.duration_s / TICK_S)
    for i in range(1, ticks + 1):
        now_s = i * TICK_S
        capacity = trace.capacity_bps(now_s)
        usable_bits += min(capacity, top_bps) * TICK_S
        if now_s >= SETTLE_S:
            settled_usable_bits += min(capacity, top_bps) * TICK_S
            if settled_start_bits is None:
                settled_start_bits = agent.delivered_bits
        agent.tick(now_s, capacity)
        if capacity > 0:
            lags.append(agent.lag_segments())
    lags.sort()
    down, up = [], []
    for t, before, after in trace.steps:
        later = [(ts, b, why) for ts, b, why in agent.decisions if ts >= t]
        if after == 0:
            hit = next((ts for ts, _, why in later if "offline" in why), None)
            down.append(math.inf if hit is None else (hit - t) / segment_s)
        elif after < before:
            hit = next((ts for ts, b, _ in later if b <= after), None)
            down.append(math.inf if hit is None else (hit - t) / segment_s)
        else:
            goal = 0.6 * min(after, top_bps)
            hit = next((ts for ts, b, _ in later if b >= goal), None)
            up.append(math.inf if hit is None else hit - t)
    unsent = [s for s in agent.segments if not s.uploaded]
    return Result(
        util=agent.delivered_bits / usable_bits if usable_bits else 0.0,
        util_settled=(agent.delivered_bits - (settled_start_bits or 0.0)) / settled_usable_bits
        if settled_usable_bits
        else 0.0,
        lag_p50=statistics.median(lags),
        lag_p95=lags[int(0.95 * (len(lags) - 1))],
        down_seg=down,
        up_s=up,
        switches_per_min=len(agent.switch_times) / (trace.duration_s / 60.0),
        settled_switches=sum(1 for ts in agent.switch_times if ts >= SETTLE_S),
        lost=agent.lost,
        left_s=len(unsent) * segment_s,
    )


def _fmt(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    return "/".join("never" if math.isinf(v) else f"{v:.{digits}f}" for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--segment-s", type=float, default=2.0)
    parser.add_argument("--only", default=None, help="run the traces whose name contains this")
    parser.add_argument(
        "--no-progress", action="store_true", help="feed completed uploads only, no progress"
    )
    args = parser.parse_args()
    global PROGRESS
    PROGRESS = not args.no_progress
    agents = {"adaptive": AdaptConfig(), "fixed": AdaptConfig(enabled=False)}
    header = (
        f"{'trace':22} {'agent':8} {'util':>5} {'util60':>6} {'lag p50':>7} {'p95':>5} "
        f"{'down seg':>9} {'up s':>9} {'sw/min':>6} {'set.sw':>6} {'lost':>4} {'left s':>6}"
    )
    print(header)
    print("-" * len(header))
    for trace in make_traces(random.Random(args.seed)):
        if args.only and args.only not in trace.name:
            continue
        results = {name: run(trace, cfg, args.segment_s, args.seed) for name, cfg in agents.items()}
        for name, r in results.items():
            print(
                f"{trace.name:22} {name:8} {r.util:5.2f} {r.util_settled:6.2f} "
                f"{r.lag_p50:7.1f} {r.lag_p95:5.1f} {_fmt(r.down_seg, 1):>9} "
                f"{_fmt(r.up_s, 0):>9} {r.switches_per_min:6.2f} {r.settled_switches:6d} "
                f"{r.lost:4d} {r.left_s:6.0f}"
            )
        a, f = results["adaptive"], results["fixed"]
        print(
            f"{'':22} {'ratio':8} {a.util / max(f.util, 1e-9):5.2f} "
            f"{a.util_settled / max(f.util_settled, 1e-9):6.2f} "
            f"{a.lag_p50 / max(f.lag_p50, 1e-9):7.2f} {a.lag_p95 / max(f.lag_p95, 1e-9):5.2f}"
            "   (adaptive / fixed)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
