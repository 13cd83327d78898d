"""Events: the incidents central staff must see (camera lost, upload rejected, data lost...).

Every part reports through an `EventSink` handed to it; the telemetry part decides where the
events go (MQTT with an on-disk outbox, or JSON lines on stdout). Parts never print.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

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
    """Hands every event to each subscriber; a failing subscriber never stops the others."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def emit(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:  # one broken subscriber must not hide the event from the rest
                log.exception("event subscriber failed on %s", event.kind)


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
