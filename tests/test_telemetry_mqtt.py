"""Telemetry in this process against a real mosquitto: payloads, retained status, commands."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.core.events import Event
from agent.telemetry import MAX_COMMAND_PAYLOAD_BYTES, CommandError
from agent.telemetry.mqtt import MqttLink
from agent.telemetry.outbox import Outbox
from tests.peers.mosquitto import Mosquitto, MosquittoFactory, Received, SubscriberFactory
from tests.peers.telemetry import STATION, TelemetryFactory, is_status, mqtt_cfg, topic, valid

WAIT_S = 10.0  # generous: the shared CI box is noisy; each wait ends as soon as its event happens
USERS = {STATION: "station-secret", "central": "central-secret"}  # test-only credentials
WRONG_PASSWORD = "not-the-password"  # noqa: S105 - a deliberately wrong test password
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


def on(suffix: str) -> Any:
    return lambda m: m.topic == topic(suffix)


def test_every_message_matches_its_schema(
    mosquitto: Mosquitto, subscriber: SubscriberFactory, telemetry_factory: TelemetryFactory
) -> None:
    sub = subscriber(mosquitto, "stations/#")
    telemetry = telemetry_factory(mqtt_cfg(mosquitto))
    telemetry.emit(Event("camera_lost", "error", "camera gone", {"device": "/dev/video0"}))
    telemetry.emit(Event("rung_changed", "info", "down to 360p", {"fps": float("nan")}))
    assert len(sub.wait_count(on("heartbeat"), 2, WAIT_S)) >= 2
    events = sub.wait_count(on("event"), 3, WAIT_S)
    assert sub.request(topic("cmd/ping"), b"{}", WAIT_S) is not None
    telemetry.stop("maintenance")
    offline = sub.wait_for(is_status("offline"), WAIT_S)
    assert offline is not None

    for message in sub.messages:
        if message.topic.startswith(topic("cmd/")):
            continue  # the test's own request
        body = valid(message.payload)
        assert body["station_id"] == STATION
    assert [valid(e.payload)["kind"] for e in events[:3]] == [
        "agent_started",
        "camera_lost",
        "rung_changed",
    ]
    heartbeat = sub.wait_for(on("heartbeat"), WAIT_S)
    assert heartbeat is not None
    assert heartbeat.properties.MessageExpiryInterval in (1, 2)  # 2 x heartbeat_s, minus transit
    assert heartbeat.properties.ContentType == "application/json"
    body = heartbeat.json()
    assert body["encode"]["rung"]["width"] == 640  # the pipeline's snapshot is passed through
    assert body["telemetry"]["connected"] is True
    assert offline.json()["reason"] == "maintenance" and offline.json()["clean"] is True


def test_online_is_retained(
    mosquitto: Mosquitto, subscriber: SubscriberFactory, telemetry_factory: TelemetryFactory
) -> None:
    first = subscriber(mosquitto, topic("status"))
    telemetry_factory(mqtt_cfg(mosquitto))
    assert first.wait_for(is_status("online"), WAIT_S) is not None
    late = subscriber(mosquitto, topic("status"))  # connects after the fact: gets the retained one
    retained = late.wait_for(is_status("online"), WAIT_S)
    assert retained is not None and retained.retain
    body = valid(retained.payload)
    assert body["version"] == "0.1.0-test" and body["summary"]["source"] == "test:"


def test_events_raised_during_a_broker_outage_arrive_in_order(
    mosquitto_factory: MosquittoFactory,
    subscriber: SubscriberFactory,
    telemetry_factory: TelemetryFactory,
) -> None:
    broker = mosquitto_factory(persistence=True)
    sub = subscriber(broker, topic("event"), persistent=True)
    telemetry = telemetry_factory(mqtt_cfg(broker))
    telemetry.emit(Event("before", "info", "sent while connected"))
    assert len(sub.wait_count(on("event"), 2, WAIT_S)) == 2
    broker.stop()
    for n in range(15):  # more than one send window
        telemetry.emit(Event(f"during_{n}", "warning", "raised while the broker is down"))
    assert _wait_until(lambda: not telemetry.connection()["connected"])
    broker.start()
    assert _wait_until(lambda: telemetry.connection()["outbox_pending"] == 0)
    expected = ["agent_started", "before", *(f"during_{n}" for n in range(15))]
    events = sub.wait_distinct(on("event"), len(expected), WAIT_S)
    assert [valid(body)["kind"] for body in events] == expected
    assert telemetry.connection()["connects"] == 2


def _set_rung(args: dict[str, Any]) -> dict[str, Any]:
    index = args.get("index")
    if not isinstance(index, int) or not 0 <= index <= 3:
        raise CommandError("'index' must be an integer 0..3")
    return {"pinned": index}


def test_command_round_trips(
    mosquitto: Mosquitto, subscriber: SubscriberFactory, telemetry_factory: TelemetryFactory
) -> None:
    calls: list[str] = []

    def record(name: str, result: dict[str, Any]) -> Any:
        return lambda args: calls.append(name) or result  # type: ignore[func-returns-value]

    def broken(args: dict[str, Any]) -> dict[str, Any]:
        raise OSError("device busy")

    commands = {
        "snapshot": lambda args: JPEG,
        "set_rung": _set_rung,
        "auto": record("auto", {"auto": True}),
        "restart_capture": record("restart_capture", {"restarting": True}),
        "retake_reference": broken,
    }
    sub = subscriber(mosquitto, "stations/#")
    telemetry_factory(mqtt_cfg(mosquitto), commands=commands)
    assert sub.wait_for(is_status("online"), WAIT_S) is not None

    def ask(name: str, payload: bytes) -> Received:
        reply = sub.request(topic(f"cmd/{name}"), payload, WAIT_S)
        assert reply is not None, f"no reply to {name}"
        return reply

    snapshot = ask("snapshot", b"")
    assert snapshot.payload == JPEG and snapshot.properties.ContentType == "image/jpeg"
    results = {
        "ping": ask("ping", b""),
        "set_rung": ask("set_rung", b'{"index": 2}'),
        "auto": ask("auto", b"{}"),
        "restart_capture": ask("restart_capture", b'{"station_id": "AZ-0001"}'),
    }
    for name, reply in results.items():
        body = valid(reply.payload)
        assert body["ok"] is True and body["command"] == name, body
    assert valid(results["set_rung"].payload)["result"] == {"pinned": 2}
    assert valid(results["ping"].payload)["result"]["pong"] is True
    assert calls == ["auto", "restart_capture"]

    bad = {
        "reboot": (b"{}", "unknown_command"),
        "set_rung": (b'{"index": 9}', "bad_request"),
        "auto": (b"{oops", "bad_json"),
        "restart_capture": (b'{"station_id": "AZ-0002"}', "wrong_station"),
        "ping": (b"x" * (MAX_COMMAND_PAYLOAD_BYTES + 1), "too_large"),
        "retake_reference": (b"{}", "failed"),
    }
    for name, (payload, code) in bad.items():
        body = valid(ask(name, payload).payload)
        assert body["ok"] is False and body["error"]["code"] == code, body
    assert calls == ["auto", "restart_capture"]  # refused requests never reached a handler
    assert valid(ask("ping", b"").payload)["ok"] is True  # and nothing broke on the way


def test_wrong_password_is_reported(
    mosquitto_factory: MosquittoFactory,
    subscriber: SubscriberFactory,
    telemetry_factory: TelemetryFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = mosquitto_factory(users=USERS)
    sub = subscriber(broker, topic("status"), username="central", password=USERS["central"])
    caplog.set_level(logging.ERROR, logger="agent.telemetry")
    refused = telemetry_factory(mqtt_cfg(broker, username=STATION), password=WRONG_PASSWORD)
    assert _wait_until(lambda: refused.connection()["last_error"] is not None)
    assert "refused" in refused.connection()["last_error"]
    assert any("refused the connection" in r.getMessage() for r in caplog.records)
    refused.stop("test")
    telemetry_factory(mqtt_cfg(broker, username=STATION), password=USERS[STATION])
    assert sub.wait_for(is_status("online"), WAIT_S) is not None


def test_a_failing_callback_does_not_kill_the_connection(
    mosquitto: Mosquitto, subscriber: SubscriberFactory, tmp_path: Path
) -> None:
    """paho re-raises callback exceptions in its network thread; the link must survive them."""

    def explode(*args: Any) -> None:
        raise RuntimeError("bug in a command dispatcher")

    woke = threading.Event()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    link = MqttLink(
        mqtt_cfg(mosquitto),
        station_id=STATION,
        password=None,
        outbox=outbox,
        will_body=lambda: "{}",
        online_body=lambda: "{}",
        on_command=explode,
        on_activity=woke.set,
    )
    sub = subscriber(mosquitto, topic("event"))
    link.start()
    try:
        assert _wait_until(lambda: link.connected)
        sub.client.publish(topic("cmd/ping"), b"{}", qos=1)
        assert _wait_until(lambda: link.callback_errors == 1)
        outbox.add('{"n":1}')
        link.pump_events()
        assert sub.wait_for(on("event"), WAIT_S) is not None
        assert link.connected and link.state()["connects"] == 1
    finally:
        link.stop("{}", flush_timeout_s=1)


def _wait_until(condition: Any, timeout_s: float = WAIT_S) -> bool:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return True
        done.wait(0.02)
    return bool(condition())
