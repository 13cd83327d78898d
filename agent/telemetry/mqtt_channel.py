"""Telemetry over MQTT: every event on disk first (the outbox), then out through `MqttLink`.
While the disk cannot store events, the outbox keeps them in memory (bounded) and they are sent
from there; storing them (and deleting sent ones) is retried every STORE_RETRY_S.

Status is retained, with an offline last will; heartbeats are QoS 0 with an expiry; events are
QoS 1, in seq order, and leave the outbox only on PUBACK; commands come in on `cmd/+`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.telemetry.channel import ChannelHooks, CommandPolicy
from agent.telemetry.config import MqttConfig
from agent.telemetry.mqtt import MqttLink
from agent.telemetry.outbox import OUTBOX_FILENAME, Outbox

log = logging.getLogger(__name__)

STORE_RETRY_S = 5.0  # a full disk frees up in minutes (eviction, an operator): no need to spin


class MqttChannel:
    _hooks: ChannelHooks  # set by start(), before the link can call back

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        station_id: str,
        state_dir: Path,
        password: str | None,
        command_key: Ed25519PublicKey | None = None,
    ) -> None:
        if cfg.command_key_file is not None and command_key is None:  # fail closed
            raise ValueError("[mqtt] command_key_file is set but its key was not loaded")
        self.heartbeat_s = cfg.heartbeat_s
        self.command_policy: CommandPolicy | None = CommandPolicy(
            cfg.effective_reply_prefix(station_id), command_key
        )
        self._outbox = Outbox(state_dir / OUTBOX_FILENAME)
        self._store_retry_s = 0.0  # monotonic time of the next retry to store events in memory
        self._link = MqttLink(
            cfg,
            station_id=station_id,
            password=password,
            outbox=self._outbox,
            will_body=lambda: self._hooks.will_body(),
            online_body=lambda: self._hooks.online_body(),
            on_command=lambda request: self._hooks.on_command(request),
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
        """Commits the event to the outbox (or keeps it in memory while the disk cannot take
        it); the worker's next `deliver` sends it."""
        seq = self._outbox.add(body)
        log.debug("event %s queued as %d", kind, seq)

    def deliver(self) -> None:
        now_s = time.monotonic()
        if now_s >= self._store_retry_s and not self._outbox.settled:
            self._store_retry_s = now_s + STORE_RETRY_S
            self._outbox.retry()
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
            "events_unsaved": self._outbox.store_failures,
            "events_in_memory": self._outbox.in_memory,
            "events_dropped": self._outbox.dropped + self._outbox.memory_dropped,
        }
