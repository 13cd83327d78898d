"""Backoff with full jitter: a thousand boxes must not reconnect in lockstep.

"Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015): the delay is
uniform in [0, min(cap, base * 2**attempt)], which spreads reconnecting clients best.
"""

from __future__ import annotations

import random


def full_jitter_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Delay before retry number `attempt` (0 for the first retry); always within [0, cap_s]."""
    ceiling_s = min(cap_s, base_s * 2 ** min(attempt, 30))
    return rng.uniform(0.0, ceiling_s)


def floor_jitter_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Like full jitter but never below half the ceiling: for reopening hardware, where an
    immediate retry right after a failure is pointless. Always within [0, cap_s]."""
    ceiling_s = min(cap_s, base_s * 2 ** min(attempt, 30))
    return rng.uniform(ceiling_s / 2, ceiling_s)
