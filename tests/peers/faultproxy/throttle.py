"""A token bucket: the shared byte budget of one direction of the proxied link."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# A rate change is picked up within RATE_POLL_S; the burst is BURST_S seconds' worth of bytes,
# at least MIN_QUANTUM_BYTES (so a slow link still moves whole small writes).
RATE_POLL_S = 0.05
BURST_S = 0.05
MIN_QUANTUM_BYTES = 512


class TokenBucket:
    """Shared byte budget for one direction; rate None means no limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rate_bytes_s: float | None = None
        self._tokens = 0.0
        self._last_s = time.monotonic()

    @property
    def rate_bps(self) -> float | None:
        rate = self._rate_bytes_s
        return None if rate is None else rate * 8

    def set_rate(self, rate_bps: float | None) -> None:
        if rate_bps is not None and rate_bps <= 0:
            raise ValueError("rate_bps must be positive or None")
        with self._lock:
            self._refill(time.monotonic())
            self._rate_bytes_s = None if rate_bps is None else rate_bps / 8
            self._tokens = min(self._tokens, self._cap())

    def take(self, want: int, cancelled: Callable[[], bool]) -> int:
        """Block until some bytes (1..want) may pass; 0 when cancelled meanwhile."""
        while True:
            with self._lock:
                if self._rate_bytes_s is None:
                    return want
                self._refill(time.monotonic())
                quantum = min(want, int(self._cap()))
                if self._tokens >= quantum:
                    self._tokens -= quantum
                    return quantum
                wait_s = (quantum - self._tokens) / self._rate_bytes_s
            if cancelled():
                return 0
            time.sleep(min(wait_s, RATE_POLL_S))

    def _cap(self) -> float:
        rate = self._rate_bytes_s or 0.0
        return max(rate * BURST_S, MIN_QUANTUM_BYTES)

    def _refill(self, now_s: float) -> None:
        if self._rate_bytes_s is not None:
            self._tokens = min(
                self._cap(), self._tokens + (now_s - self._last_s) * self._rate_bytes_s
            )
        self._last_s = now_s
