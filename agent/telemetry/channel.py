"""Where telemetry goes: one channel per agent, `MqttChannel` or `JsonLinesChannel` (stdout).

`Telemetry` builds the payloads and paces the heartbeat; the channel carries them. The calls a
channel gets, in order: `start(hooks)` once; then from any thread `add_event` (it may come
before `start`: the pipeline starts first), and from the worker `deliver`, `publish_heartbeat`,
`reply`; `stop(offline_body, flush_timeout_s)` once, only after a `start`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


@dataclass(frozen=True)
class CommandRequest:
    """One command as it came off the wire; nothing in it is trusted yet."""

    name: str  # the last topic level: cmd/{name}
    payload: bytes
    response_topic: str | None = None  # MQTT v5 response topic
    correlation: bytes | None = None  # MQTT v5 correlation data, echoed in the reply
    retained: bool = False  # published with the retain flag: never run


CommandSink = Callable[[CommandRequest], None]


@dataclass(frozen=True)
class CommandPolicy:
    """Who may command this station: replies only under `reply_prefix` + "/"; with a `key`,
    only commands signed by the control centre (agent/telemetry/signing.py)."""

    reply_prefix: str
    key: Ed25519PublicKey | None = None


@dataclass(frozen=True)
class ChannelHooks:
    """What a channel calls back into `Telemetry` for (from its own threads)."""

    online_body: Callable[[], str]  # status "online", built afresh for every (re)connect
    will_body: Callable[[], str]  # status "offline" for the broker to send if the link dies
    on_command: CommandSink  # must only hand the request over, never run it
    on_activity: Callable[[], None]  # connected or acknowledged: wake the worker now


class TelemetryChannel(Protocol):
    heartbeat_s: float
    """The heartbeat interval this channel is configured for (`Telemetry` may override it)."""
    command_policy: CommandPolicy | None
    """Where replies may go and which key signs commands; None: no commands come this way."""

    @property
    def connected(self) -> bool:
        """Someone can hear us now: the worker builds a heartbeat only then."""

    @property
    def connects(self) -> int:
        """Connections made so far; a change makes the worker send a heartbeat at once."""

    def start(self, hooks: ChannelHooks) -> None:
        """Opens the channel and sends the status from `hooks.online_body`; never blocks."""

    def add_event(self, kind: str, body: str) -> None:
        """Takes one event (JSON text without `seq`); never waits on the network."""

    def deliver(self) -> None:
        """Sends what waits (acknowledged events leave the outbox); the worker calls it often."""

    def publish_heartbeat(self, body: str, expiry_s: int) -> None:
        """Sends one heartbeat; a broker drops it once `expiry_s` old."""

    def reply(self, topic: str, correlation: bytes | None, body: bytes, content_type: str) -> None:
        """Answers one command on its response topic."""

    def stop(self, offline_body: str, flush_timeout_s: float) -> None:
        """Sends what it can within the timeout, then `offline_body` as the last status."""

    def state(self) -> dict[str, Any]:
        """The channel's part of the heartbeat's `telemetry` section (`mode`, `connected`...)."""
