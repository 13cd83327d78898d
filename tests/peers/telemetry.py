"""Helpers for the telemetry tests: schema checks, topics, MQTT settings for a test broker.

    from tests.peers.telemetry import STATION, valid, mqtt_cfg   # fixtures: tests/conftest.py

A telemetry agent as its own process: `AgentProcess.for_telemetry` in tests/peers/agent.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator

from agent.telemetry import MqttConfig, Telemetry, load_schema
from agent.telemetry.payloads import MESSAGE_TYPES
from tests.peers.mosquitto import Mosquitto, Received

STATION = "AZ-0001"
SUMMARY = {"source": "test:", "ladder_top": "360p15 600k", "uplinks": ["http"]}

VALIDATORS = {kind: Draft202012Validator(load_schema(kind)) for kind in MESSAGE_TYPES}


def valid(payload: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """The parsed message, after checking it against the schema of its `type`."""
    body = payload if isinstance(payload, dict) else json.loads(payload)
    validator = VALIDATORS[body["type"]]
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)
    ]
    assert not errors, f"{body['type']} does not match its schema: {errors}\n{body}"
    return body


def topic(suffix: str, station: str = STATION) -> str:
    return f"stations/{station}/{suffix}"


def is_status(state: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == topic("status") and m.json().get("state") == state


def mqtt_cfg(broker: Mosquitto, **options: Any) -> MqttConfig:
    """Short intervals so tests run fast; reconnect capped at 1 s."""
    settings: dict[str, Any] = {"url": broker.url, "keepalive_s": 3, "heartbeat_s": 1,
                                "reconnect_max_s": 1}  # fmt: skip
    if broker.tls is not None:
        settings.update(ca_file=broker.tls.ca_cert, cert_file=broker.tls.client_cert,
                        key_file=broker.tls.client_key)  # fmt: skip
    settings.update(options)
    return MqttConfig(**settings)


TelemetryFactory = Callable[..., Telemetry]
