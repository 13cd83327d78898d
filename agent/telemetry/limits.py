"""Limits on what a command may cost the box: a token bucket per command, a JSON depth check.

Both are pure: the bucket takes `now_s` (monotonic seconds) and the depth check looks at the
text, so tests step time by hand and feed any bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Deeper than this is no command anyone writes (the deepest real one is 2 levels); stops
# json.loads from recursing 1,000 levels into a RecursionError.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class RateLimit:
    """At most `burst` at once, then `per_min` a minute."""

    burst: int
    per_min: float


class TokenBucket:
    """Starts full with `burst` tokens; refills at `per_min` tokens a minute, never above burst."""

    def __init__(self, limit: RateLimit) -> None:
        if limit.burst < 1 or limit.per_min <= 0:
            raise ValueError("a rate limit needs burst >= 1 and per_min > 0")
        self.limit = limit
        self._tokens = float(limit.burst)
        self._updated_s: float | None = None

    def _refill(self, now_s: float) -> None:
        if self._updated_s is not None and now_s > self._updated_s:
            gained = (now_s - self._updated_s) * self.limit.per_min / 60.0
            self._tokens = min(float(self.limit.burst), self._tokens + gained)
        if self._updated_s is None or now_s > self._updated_s:
            self._updated_s = now_s  # a clock that steps back never refills nor drains

    def take(self, now_s: float) -> bool:
        """Spends one token if there is one."""
        self._refill(now_s)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self, now_s: float) -> float:
        """How long until the next token (0 when one is there)."""
        self._refill(now_s)
        return max(0.0, (1.0 - self._tokens) * 60.0 / self.limit.per_min)


def json_too_deep(text: str, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text opens more than `max_depth` arrays/objects inside each other.

    A linear scan of the brackets outside strings, without parsing (so without recursion);
    malformed text is left for the parser to refuse.
    """
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth -= 1
    return False
