"""When each segment may be tried again: per-segment backoff, the link's backoff, set-aside
segments. Pure: every method takes `now_s` (monotonic seconds); the uploader does the I/O.

One bad segment never holds the others back. A failing request (timeout, reset, 5xx) gives that
segment its own next-attempt time and the link a short backoff (full jitter, capped at
backoff_max_s: when the link is down every request fails, and a thousand boxes must not hammer
the server). A refusal (4xx) is the server's word on that one object, unless the server refuses
two different segments in a row with none accepted between: then it refuses everything (wrong
credential, wrong path), the link waits rejected_backoff_s and no segment is blamed until the
server takes one again. A segment
refused `refused_max_attempts` times on its own is set aside: retried every set_aside_retry_s
until the server takes it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from agent.core.backoff import floor_jitter_s, full_jitter_s

BACKOFF_BASE_S = 0.5  # the first retry within half a second: a reset on a live link heals fast


class Refusal(Enum):
    SEGMENT = "segment"  # this segment waits; the others go on
    SET_ASIDE = "set_aside"  # refused refused_max_attempts times: set aside (report it once)
    ALL = "all"  # the server refuses every segment: the link waits


@dataclass(frozen=True)
class SetAside:
    seq: int
    status: int
    reason: str


class UploadSchedule:
    def __init__(
        self,
        *,
        backoff_max_s: float,
        rejected_backoff_s: float,
        refused_max_attempts: int,
        set_aside_retry_s: float,
        rng: random.Random,
    ) -> None:
        self._backoff_max_s = backoff_max_s
        self._rejected_backoff_s = rejected_backoff_s
        self._refused_max = refused_max_attempts
        self._set_aside_retry_s = set_aside_retry_s
        self._rng = rng
        self._retry_at_s: dict[int, float] = {}  # seq -> not before this time
        self._failures: dict[int, int] = {}  # seq -> failed requests in a row
        self._refusals: dict[int, int] = {}  # seq -> refusals counted against it
        self.set_aside: dict[int, SetAside] = {}
        self.link_ready_at_s = 0.0
        self.consecutive_failures = 0  # requests in a row that failed or were refused
        self.rejected = False  # the server refuses every segment
        self._last_refused: int | None = None  # seq of the last request, if it was refused

    # -- what to try ----------------------------------------------------------------------

    def waiting(self, now_s: float) -> set[int]:
        """Segments not to try now (in their own backoff, or set aside and not due)."""
        return {seq for seq, at_s in self._retry_at_s.items() if at_s > now_s}

    def next_due_s(self) -> float | None:
        """The earliest time a waiting segment may be tried again."""
        return min(self._retry_at_s.values(), default=None)

    def forget_due(self, now_s: float) -> None:
        """When nothing could be picked although these were due: they are no longer pending
        (uploaded elsewhere, evicted, lost), so their records go (memory stays bounded)."""
        for seq in [s for s, at_s in self._retry_at_s.items() if at_s <= now_s]:
            self.forget(seq)

    def forget(self, seq: int) -> None:
        self._retry_at_s.pop(seq, None)
        self._failures.pop(seq, None)
        self._refusals.pop(seq, None)
        self.set_aside.pop(seq, None)

    # -- outcomes -------------------------------------------------------------------------

    def succeeded(self, seq: int) -> SetAside | None:
        """The server took `seq`; returns its set-aside record if it had been set aside."""
        was_set_aside = self.set_aside.get(seq)
        self.forget(seq)
        self.consecutive_failures = 0
        self.rejected = False
        self._last_refused = None
        self.link_ready_at_s = 0.0
        return was_set_aside

    def failed(self, seq: int, now_s: float, retry_after_s: float | None = None) -> None:
        """A request for `seq` failed (link or server unwell): both back off, with jitter;
        a Retry-After from the server holds the link that long."""
        self.consecutive_failures += 1
        failures = self._failures[seq] = self._failures.get(seq, 0) + 1
        segment_s = full_jitter_s(failures, BACKOFF_BASE_S, self._backoff_max_s, self._rng)
        link_s = full_jitter_s(
            self.consecutive_failures, BACKOFF_BASE_S, self._backoff_max_s, self._rng
        )
        if retry_after_s is not None:
            link_s = max(link_s, retry_after_s)
        if seq not in self.set_aside:  # a set-aside segment keeps its long wait
            self._retry_at_s[seq] = now_s + segment_s
        self.link_ready_at_s = now_s + link_s

    def refused(self, seq: int, now_s: float, status: int, reason: str) -> Refusal:
        """The server refused `seq` (4xx). See the module doc for how it is judged."""
        self.consecutive_failures += 1
        previous, self._last_refused = self._last_refused, seq
        if self.rejected or (previous is not None and previous != seq):  # until one is taken
            self.rejected = True
            self.link_ready_at_s = now_s + self._rejected_wait_s()
            return Refusal.ALL
        if seq in self.set_aside:
            self._retry_at_s[seq] = now_s + self._set_aside_retry_s
            return Refusal.SEGMENT  # reported when it was set aside
        refusals = self._refusals[seq] = self._refusals.get(seq, 0) + 1
        if refusals >= self._refused_max:
            self.set_aside[seq] = SetAside(seq, status, reason)
            self._retry_at_s[seq] = now_s + self._set_aside_retry_s
            return Refusal.SET_ASIDE
        self._retry_at_s[seq] = now_s + self._rejected_wait_s()
        return Refusal.SEGMENT

    def wake(self) -> None:
        """A credential was fixed: try everything again now (set-aside segments too; a
        segment set aside again is not reported twice)."""
        self._retry_at_s.clear()
        self._failures.clear()
        self.link_ready_at_s = 0.0
        self._last_refused = None

    def _rejected_wait_s(self) -> float:
        """Between half and all of rejected_backoff_s: a refusal does not heal in a second."""
        return floor_jitter_s(0, self._rejected_backoff_s, self._rejected_backoff_s, self._rng)
