"""Telemetry over MQTT: every event on disk first (the outbox), then out through `MqttLink`.

Status is retained, with an offline last will; heartbeats are QoS 0 with an expiry; events are
QoS 1, in seq order, and leave the outbox only on PUBACK; commands come in on `cmd/+`.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from agent.telemetry.channel import ChannelHooks
from agent.telemetry.config import MqttConfig
from agent.telemetry.mqtt import MqttLink
from agent.telemetry.outbox import OUTBOX_FILENAME, Outbox

log = logging.getLogger(__name__)


class MqttChannel:
    _hooks: ChannelHooks  # set by start(), before the link can call back

    def __init__(
        self, cfg: MqttConfig, *, station_id: str, state_dir: Path, password: str | None
    ) -> None:
        self.heartbeat_s = cfg.heartbeat_s
        self.events_unsaved = 0
        self._outbox = Outbox(state_dir / OUTBOX_FILENAME)
        self._link = MqttLink(
            cfg,
            station_id=station_id,
            password=password,
            outbox=self._outbox,
            will_body=lambda: self._hooks.will_body(),
            online_body=lambda: self._hooks.online_body(),
            on_command=lambda *request: self._hooks.on_command(*request),
            on_activity=lambda: self._hooks.on_activity(),
        )

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def connects(self) -> int:
        return self._link.connects

    def start(self, hooks: ChannelHooks) -> None:
        self._hooks = hooks
        self._link.start()

    def add_event(self, kind: str, body: str) -> None:
        """Commits the event to the outbox; the worker's next `deliver` sends it."""
        try:
            self._outbox.add(body)
        except sqlite3.Error as exc:  # disk full or broken: the event is lost, say so loudly
            self.events_unsaved += 1
            log.error("telemetry outbox cannot store event %s (%s): %s", kind, exc, body)

    def deliver(self) -> None:
        self._link.pump_events()

    def publish_heartbeat(self, body: str, expiry_s: int) -> None:
        self._link.publish_heartbeat(body, expiry_s)

    def reply(self, topic: str, correlation: bytes | None, body: bytes, content_type: str) -> None:
        self._link.publish_reply(topic, correlation, body, content_type)

    def stop(self, offline_body: str, flush_timeout_s: float) -> None:
        self._link.stop(offline_body, flush_timeout_s)

    def state(self) -> dict[str, Any]:
        return {
            "mode": "mqtt",
            **self._link.state(),
            "outbox_pending": self._outbox.pending,
            "outbox_dropped": self._outbox.dropped,
            "events_unsaved": self.events_unsaved,
        }
