"""Helpers for the telemetry tests: schema checks, in-process Telemetry, agent processes.

from telemetry_helpers import STATION, valid, mqtt_cfg   # fixtures: tests/telemetry_fixtures.py
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from mqtt_broker import Mosquitto, Received

from agent.telemetry import MqttConfig, Telemetry, load_schema
from agent.telemetry.payloads import MESSAGE_TYPES

STATION = "AZ-0001"
SUMMARY = {"source": "test:", "ladder_top": "360p15 600k", "uplinks": ["http"]}
RUNNER = Path(__file__).with_name("telemetry_runner.py")
PROCESS_TIMEOUT_S = 15.0  # a python process importing the agent starts in ~0.5 s here

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


class AgentProcess:
    """tests/telemetry_runner.py in its own OS process."""

    def __init__(self, spec: dict[str, Any], log_path: Path) -> None:
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(RUNNER), json.dumps(spec, default=str)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("started")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())

    def expect(self, prefix: str) -> str:
        try:
            line = self._lines.get(timeout=PROCESS_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"agent process did not print {prefix!r}") from None
        assert line.startswith(prefix), line
        return line

    def emit(self, kind: str) -> None:
        """Returns once the event is committed to the process's outbox."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"emit {kind}\n")
        self.proc.stdin.flush()
        self.expect("emitted")

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def wait(self) -> int:
        return self.proc.wait(PROCESS_TIMEOUT_S)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(PROCESS_TIMEOUT_S)
        self._log.close()


AgentFactory = Callable[[dict[str, Any]], AgentProcess]
