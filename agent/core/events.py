"""Events: the incidents central staff must see (camera lost, upload rejected, data lost...).

Every part reports through an `EventSink` handed to it; the telemetry part decides where the
events go (MQTT with an on-disk outbox, or JSON lines on stdout). Parts never print.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

# Events a start emits before the telemetry can subscribe (its config problems, the spool's
# recovery, a camera that does not open): a handful; this bound only stops a runaway.
EARLY_EVENTS_MAX = 1000

Severity = Literal["debug", "info", "warning", "error", "critical"]


def utc_now_iso() -> str:
    """UTC wall clock as ISO 8601 with milliseconds and a Z: what people and JSON see."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    kind: str  # e.g. "camera_lost", "segment_dropped", "upload_rejected"
    severity: Severity
    message: str  # one plain-language line
    fields: dict[str, Any] = field(default_factory=dict)
    at_utc: str = field(default_factory=utc_now_iso)


class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...


class EventFanout:
    """Hands every event to each subscriber; a failing subscriber never stops the others.

    With `keep_early`, it also keeps what is emitted (at most EARLY_EVENTS_MAX) until a
    subscriber asks for it with `subscribe(callback, replay_early=True)`; that one gets those
    events first, in order, then the rest as they come. The service builds the pipeline
    (whose construction and start emit events) before the telemetry that reports them, and
    the telemetry's own `agent_started` must come first: it subscribes after its start."""

    def __init__(self, keep_early: bool = False) -> None:
        self._subscribers: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()
        self._early: deque[Event] | None = deque() if keep_early else None
        self.early_dropped = 0

    def subscribe(self, callback: Callable[[Event], None], replay_early: bool = False) -> None:
        if not replay_early:
            with self._lock:
                self._subscribers.append(callback)
            return
        with self._lock:
            catch_up = _CatchUp(callback, list(self._early or ()))
            self._early = None
            self._subscribers.append(catch_up)
        if self.early_dropped:
            log.warning(
                "%d early event(s) dropped before the telemetry started", self.early_dropped
            )
        catch_up.drain()

    def emit(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
            if self._early is not None:
                if len(self._early) < EARLY_EVENTS_MAX:
                    self._early.append(event)
                else:
                    self.early_dropped += 1
        for callback in subscribers:
            _deliver(callback, event)


def _deliver(callback: Callable[[Event], None], event: Event) -> None:
    try:
        callback(event)
    except Exception:  # one broken subscriber must not hide the event from the rest
        log.exception("event subscriber failed on %s", event.kind)


class _CatchUp:
    """A late subscriber: the events it missed first, then the live ones, in order. Events
    arriving while it catches up wait behind the missed ones."""

    def __init__(self, callback: Callable[[Event], None], missed: list[Event]) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._pending: deque[Event] = deque(missed)
        self._live = False

    def __call__(self, event: Event) -> None:
        with self._lock:
            if not self._live:
                self._pending.append(event)
                return
        _deliver(self._callback, event)

    def drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._live = True
                    return
                event = self._pending.popleft()
            _deliver(self._callback, event)


class DiscardSink:
    """Drops every event, with a debug log line: for a part run where nobody listens (a spool
    opened read-only, the technician's one-off picture check). `context` names that use."""

    def __init__(self, context: str) -> None:
        self._context = context

    def emit(self, event: Event) -> None:
        log.debug("%s: event dropped: %s (%s)", self._context, event.kind, event.message)


class RecordingSink:
    """Keeps events in memory (bounded); used by tests and the demo's status line."""

    def __init__(self, max_events: int = 1000) -> None:
        self.events: list[Event] = []
        self._max = max_events
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def emit(self, event: Event) -> None:
        with self._changed:
            self.events.append(event)
            del self.events[: -self._max]
            self._changed.notify_all()

    def kinds(self) -> list[str]:
        with self._lock:
            return [e.kind for e in self.events]

    def wait_for(self, kind: str, timeout_s: float) -> Event | None:
        with self._changed:
            found = self._changed.wait_for(
                lambda: any(e.kind == kind for e in self.events), timeout=timeout_s
            )
            if not found:
                return None
            return next(e for e in self.events if e.kind == kind)
