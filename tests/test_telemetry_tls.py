"""mqtts:// against a mosquitto that requires a client certificate from the test CA."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.peers.mosquitto import MosquittoFactory, SubscriberFactory
from tests.peers.pki import make_pki
from tests.peers.telemetry import TelemetryFactory, is_status, mqtt_cfg, topic, valid

WAIT_S = 10.0


def _wait_until(condition: Any, timeout_s: float = WAIT_S) -> bool:
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return True
        pause.wait(0.02)
    return bool(condition())


def test_mutual_tls_works(
    mosquitto_factory: MosquittoFactory,
    subscriber: SubscriberFactory,
    telemetry_factory: TelemetryFactory,
    tmp_path: Path,
) -> None:
    broker = mosquitto_factory(tls=make_pki(tmp_path / "pki"), require_certificate=True)
    sub = subscriber(broker, "stations/#")
    telemetry = telemetry_factory(mqtt_cfg(broker))
    online = sub.wait_for(is_status("online"), WAIT_S)
    assert online is not None and valid(online.payload)["state"] == "online"
    reply = sub.request(topic("cmd/ping"), b"{}", WAIT_S)
    assert reply is not None and valid(reply.payload)["ok"] is True
    assert telemetry.connection()["last_error"] is None


def test_wrong_ca_is_refused_with_a_clear_error(
    mosquitto_factory: MosquittoFactory,
    telemetry_factory: TelemetryFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = mosquitto_factory(tls=make_pki(tmp_path / "pki"), require_certificate=True)
    other = make_pki(tmp_path / "other-pki")  # a CA that did not sign the broker's certificate
    caplog.set_level(logging.ERROR, logger="agent.telemetry")
    telemetry = telemetry_factory(mqtt_cfg(broker, ca_file=other.ca_cert))
    assert _wait_until(lambda: telemetry.connection()["last_error"] is not None)
    state = telemetry.connection()
    assert state["connected"] is False
    assert "TLS certificate verification failed" in state["last_error"]
    assert "ca_file" in state["last_error"]
    logged = [
        r.getMessage() for r in caplog.records if "certificate verification" in r.getMessage()
    ]
    assert len(logged) == 1, logged  # once, not once per retry


def test_missing_client_certificate_is_refused(
    mosquitto_factory: MosquittoFactory,
    telemetry_factory: TelemetryFactory,
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki")
    broker = mosquitto_factory(tls=pki, require_certificate=True)
    telemetry = telemetry_factory(
        mqtt_cfg(broker, ca_file=pki.ca_cert, cert_file=None, key_file=None)
    )
    assert _wait_until(lambda: telemetry.connection()["last_error"] is not None)
    assert telemetry.connection()["connected"] is False
    assert "requires a client certificate" in telemetry.connection()["last_error"]
