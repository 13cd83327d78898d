"""MQTT telemetry: retained status with a last will, heartbeats, never-lost events, commands.

Without an [mqtt] section the same payloads go to stdout as JSON lines (`open_channel` picks).
See docs/telemetry.md.
"""

from agent.telemetry.channel import CommandPolicy, CommandRequest, TelemetryChannel
from agent.telemetry.commands import MAX_COMMAND_PAYLOAD_BYTES, CommandError, CommandHandler
from agent.telemetry.config import MqttConfig
from agent.telemetry.payloads import SCHEMA_VERSION, load_schema
from agent.telemetry.service import Telemetry, open_channel

__all__ = [
    "MAX_COMMAND_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "CommandError",
    "CommandPolicy",
    "CommandRequest",
    "CommandHandler",
    "MqttConfig",
    "Telemetry",
    "TelemetryChannel",
    "load_schema",
    "open_channel",
]
