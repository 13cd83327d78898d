"""Without an [mqtt] section: the same payloads, one JSON object per line on a text stream.

This is the demo's default and what tests of other parts read. Events are written at once,
numbered from 1 in the order they were taken. A closed or broken stream (the reader went
away) is logged once; the agent carries on. No commands come in this way.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, TextIO

from agent.telemetry import payloads
from agent.telemetry.channel import ChannelHooks, CommandPolicy

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_S = 10.0  # the same default as MqttConfig.heartbeat_s


class JsonLinesChannel:
    def __init__(self, out: TextIO, heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> None:
        self.heartbeat_s = heartbeat_s
        self.command_policy: CommandPolicy | None = None
        self._out = out
        self._lock = threading.Lock()
        self._broken = False
        self._event_seq = itertools.count(1)  # next() is atomic: events come from any thread

    @property
    def connected(self) -> bool:
        return True

    @property
    def connects(self) -> int:
        return 0

    def start(self, hooks: ChannelHooks) -> None:
        self._write(hooks.online_body())

    def add_event(self, kind: str, body: str) -> None:
        self._write(payloads.with_seq(body, next(self._event_seq)))

    def deliver(self) -> None:
        """Nothing waits: `add_event` wrote the line."""

    def publish_heartbeat(self, body: str, expiry_s: int) -> None:
        self._write(body)

    def reply(self, topic: str, correlation: bytes | None, body: bytes, content_type: str) -> None:
        log.warning("telemetry on a stream takes no commands: reply for %s dropped", topic)

    def stop(self, offline_body: str, flush_timeout_s: float) -> None:
        self._write(offline_body)

    def state(self) -> dict[str, Any]:
        return {"mode": "stdout", "connected": True, "last_error": None, "events_unsaved": 0}

    def _write(self, line: str) -> None:
        """`line` is one compact JSON object (no newline in it)."""
        with self._lock:
            if self._broken:
                return
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (OSError, ValueError) as exc:  # BrokenPipeError, or write to a closed file
                self._broken = True
                log.error("telemetry output stream failed, no more JSON lines: %s", exc)
