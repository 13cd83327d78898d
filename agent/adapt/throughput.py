"""Uplink throughput estimate from measured uploads: two EWMAs, the lower one wins.

Every finished upload is a sample (bytes, seconds it took, uploads running at the same time).
A fast and a slow exponentially weighted moving average follow the sample rate; the estimate is
the lower of the two, so it drops within a sample or two and rises only when the rise lasts.
Weights follow wall time (monotonic `now_s` between samples), not sample count, so a burst of
backfill uploads does not outvote a minute of live uploads. Model: Shaka Player's
EwmaBandwidthEstimator (fast/slow half-lives, minimum sample size), and aiortc's rate.py for the
shape (pure, `now_s` passed in).

Uploads that are still running count too, so a collapse shows before the slow upload finishes.
Without progress reports: if N bytes have not arrived after t seconds, the link carries less
than 8*N/t bit/s. With `upload_progress` (bytes handed to the socket so far), an upload that
runs late (LATE_FACTOR times what the estimate predicts) caps the estimate at the rate it made
over the last RATE_WINDOW_S. Both only ever lower the estimate. Failures (timeouts, refused
connections) count toward `offline()`.

Thread-safe (one lock): the uploader thread feeds it, the encoder thread reads it.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

# Half-lives in seconds of wall time. Shaka Player uses 2 s / 5 s for a player that downloads
# back to back; an agent uploads one segment every segment_s, so the slow one is longer.
FAST_HALF_LIFE_S = 2.0
SLOW_HALF_LIFE_S = 8.0
# Below this a transfer mostly measures round trips and request overhead, not capacity
# (Shaka's minBytes is 16 kB).
MIN_SAMPLE_BYTES = 16_000
# No estimate until this much has been measured (Shaka's minTotalBytes is 128 kB; a 240p10
# segment of 2 s is ~37 kB, so three of those are enough).
MIN_TOTAL_BYTES = 100_000
# A running upload bounds the estimate once it has taken this long beyond the link's latency.
STALL_MIN_S = 0.5
# A running upload with progress reports caps the estimate once it takes this many times what
# the estimate predicts, at its rate over the last RATE_WINDOW_S. 1.25: a drop to below 80 % of
# the estimate shows within one upload; kernel socket buffers make shorter windows unreliable.
LATE_FACTOR = 1.25
RATE_WINDOW_S = 1.0
# Progress points kept per running upload (enough for a few RATE_WINDOW_S at ~4 reports/s).
MAX_PROGRESS_POINTS = 32
# Consecutive failed uploads after which the uplink counts as offline.
OFFLINE_AFTER_FAILURES = 2
# A single sample never weighs more than this much wall time (a sample after a long idle gap
# replaces the average rather than being blended with stale history).
MAX_WEIGHT_S = 30.0


@dataclass
class _Ewma:
    half_life_s: float
    value: float | None = None

    def add(self, sample: float, weight_s: float) -> None:
        if self.value is None:
            self.value = sample
            return
        keep = math.pow(0.5, weight_s / self.half_life_s)
        self.value = keep * self.value + (1.0 - keep) * sample


@dataclass
class _InFlight:
    started_s: float
    nbytes: int
    # (now_s, bytes sent) reports from upload_progress, oldest first.
    progress: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=MAX_PROGRESS_POINTS)
    )


class ThroughputEstimator:
    def __init__(
        self,
        fast_half_life_s: float = FAST_HALF_LIFE_S,
        slow_half_life_s: float = SLOW_HALF_LIFE_S,
        min_sample_bytes: int = MIN_SAMPLE_BYTES,
        min_total_bytes: int = MIN_TOTAL_BYTES,
    ) -> None:
        self._fast = _Ewma(fast_half_life_s)
        self._slow = _Ewma(slow_half_life_s)
        self._latency = _Ewma(fast_half_life_s)
        self._min_sample_bytes = min_sample_bytes
        self._min_total_bytes = min_total_bytes
        self._total_bytes = 0
        self._last_sample_s: float | None = None
        self._failures = 0
        self._in_flight: dict[int, _InFlight] = {}
        self._next_ticket = 0
        self._lock = threading.Lock()

    # --- feeding ----------------------------------------------------------------------------

    def add_sample(self, now_s: float, nbytes: int, seconds: float, concurrent: int = 1) -> None:
        """A transfer of `nbytes` finished at `now_s` after `seconds`, while `concurrent`
        uploads (this one included) shared the link."""
        with self._lock:
            self._failures = 0
            if nbytes < self._min_sample_bytes or seconds <= 0:
                if seconds > 0:
                    self._latency.add(seconds, max(seconds, 0.1))
                return
            rate_bps = 8.0 * nbytes * max(1, concurrent) / seconds
            if self._last_sample_s is None:
                weight_s = seconds
            else:
                weight_s = now_s - self._last_sample_s
            weight_s = min(max(weight_s, 0.0), MAX_WEIGHT_S)
            self._last_sample_s = max(now_s, self._last_sample_s or now_s)
            self._fast.add(rate_bps, weight_s)
            self._slow.add(rate_bps, weight_s)
            self._total_bytes += nbytes

    def note_failure(self, now_s: float) -> None:
        """An upload failed without delivering (timeout, connection refused or reset)."""
        with self._lock:
            self._failures += 1

    def upload_started(self, now_s: float, nbytes: int) -> int:
        """Register a running upload; returns the ticket for `upload_finished`."""
        with self._lock:
            self._next_ticket += 1
            self._in_flight[self._next_ticket] = _InFlight(now_s, nbytes)
            return self._next_ticket

    def upload_progress(self, ticket: int, now_s: float, nbytes_sent: int) -> None:
        """Optional: `nbytes_sent` of the upload `ticket` have been handed to the socket."""
        with self._lock:
            flight = self._in_flight.get(ticket)
            if flight is not None:
                flight.progress.append((now_s, nbytes_sent))

    def upload_finished(self, ticket: int, now_s: float, ok: bool) -> None:
        """The upload of `ticket` ended: a sample when `ok`, a failure otherwise."""
        with self._lock:
            flight = self._in_flight.pop(ticket, None)
            concurrent = len(self._in_flight) + 1
        if flight is None:
            return
        if ok:
            self.add_sample(now_s, flight.nbytes, now_s - flight.started_s, concurrent)
        else:
            self.note_failure(now_s)

    # --- reading ----------------------------------------------------------------------------

    def estimate_bps(self, now_s: float) -> float | None:
        """Lower of the fast and slow averages, capped by running uploads; None until enough
        has been measured."""
        with self._lock:
            estimate: float | None = None
            fast, slow = self._fast.value, self._slow.value
            if self._total_bytes >= self._min_total_bytes and fast is not None and slow is not None:
                estimate = min(fast, slow)
            bound = self._in_flight_bound(now_s, estimate)
        if bound is not None and (estimate is None or bound < estimate):
            return bound
        return estimate

    def offline(self, now_s: float) -> bool:
        """True after OFFLINE_AFTER_FAILURES uploads in a row failed (until one succeeds)."""
        with self._lock:
            return self._failures >= OFFLINE_AFTER_FAILURES

    def latency_s(self) -> float | None:
        """Typical duration of tiny transfers: round trips plus request overhead."""
        with self._lock:
            return self._latency.value

    def _in_flight_bound(self, now_s: float, estimate: float | None) -> float | None:
        latency_s = self._latency.value or 0.0
        count = len(self._in_flight)
        bound: float | None = None
        for flight in self._in_flight.values():
            elapsed_s = now_s - flight.started_s - latency_s
            if elapsed_s < STALL_MIN_S:
                continue
            # Each of `count` uploads gets about 1/count of the link.
            rate_bps = 8.0 * flight.nbytes * count / elapsed_s
            late = estimate is not None and elapsed_s > LATE_FACTOR * 8.0 * flight.nbytes / estimate
            if flight.progress and late:
                rate_bps = min(rate_bps, count * _window_rate_bps(flight, now_s, latency_s))
            bound = rate_bps if bound is None else min(bound, rate_bps)
        return bound


def _window_rate_bps(flight: _InFlight, now_s: float, latency_s: float) -> float:
    """Rate of `flight` over about the last RATE_WINDOW_S, from its progress reports."""
    sent_bytes = flight.progress[-1][1]
    ref_s, ref_bytes = flight.started_s + latency_s, 0
    for point_s, point_bytes in flight.progress:
        if point_s > now_s - RATE_WINDOW_S:
            break
        ref_s, ref_bytes = point_s, point_bytes
    return 8.0 * max(0, sent_bytes - ref_bytes) / max(now_s - ref_s, 1e-3)
