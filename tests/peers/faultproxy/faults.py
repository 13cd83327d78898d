"""The fault kinds a proxy arms, what one unit (request or connection) claims, the counters."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProxyCounters:
    connections: int = 0  # accepted and connected to the target
    open_connections: int = 0
    rejected: int = 0  # over MAX_CONNECTIONS or target unreachable: RST at once
    requests: int = 0  # HTTP request heads seen (forwarded or answered)
    bytes_up: int = 0  # client -> server, forwarded
    bytes_down: int = 0  # server -> client, forwarded
    resets: int = 0
    stalls: int = 0
    injected: int = 0


@dataclass
class Claim:
    """The faults one unit takes: stall first, then reset after bytes or an injected answer."""

    stall_s: float | None = None
    reset_after_bytes: int | None = None
    inject: tuple[int, dict[str, str]] | None = None


@dataclass
class PendingFaults:
    """Faults armed and not yet claimed, each kind in the order it was armed."""

    resets: deque[int] = field(default_factory=deque)
    stalls: deque[float] = field(default_factory=deque)
    injects: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    # standing answers: every request whose path ends with the suffix gets the status
    path_injects: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)

    def claim(self, is_request: bool, want_reset: bool, path: str = "") -> Claim:
        """Takes the next stall, and for an HTTP request a standing answer for its path or the
        next injection, else (when the unit can still take one) the next reset."""
        claim = Claim()
        if self.stalls:
            claim.stall_s = self.stalls.popleft()
        standing = [(c, h) for suffix, c, h in self.path_injects if path.endswith(suffix)]
        if is_request and standing:
            claim.inject = standing[0]
        elif is_request and self.injects:
            claim.inject = self.injects.popleft()
        elif want_reset and self.resets:
            claim.reset_after_bytes = self.resets.popleft()
        return claim
