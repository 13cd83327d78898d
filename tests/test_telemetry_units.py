"""Telemetry without a broker: config, payloads, outbox, command routing, JSON-lines mode."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.core.events import Event
from agent.telemetry import (
    MAX_COMMAND_PAYLOAD_BYTES,
    CommandError,
    CommandPolicy,
    CommandRequest,
    MqttConfig,
    payloads,
)
from agent.telemetry.commands import CommandHandler, CommandRouter
from agent.telemetry.outbox import Outbox
from tests.peers.telemetry import STATION, TelemetryFactory, valid

AT = "2024-05-01T08:00:00.000Z"


# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://broker.example.org", "broker.example.org", 1883, False),
        ("mqtts://broker.example.org", "broker.example.org", 8883, True),
        ("mqtts://10.0.0.5:9883/", "10.0.0.5", 9883, True),
        ("MQTT://[::1]:1884", "::1", 1884, False),
    ],
)
def test_broker_url_parsed(url: str, host: str, port: int, tls: bool) -> None:
    assert MqttConfig(url=url).broker == (host, port, tls)


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"url": "http://broker:1883"}, "mqtt:// or mqtts://"),
        ({"url": "mqtt://"}, "no host"),
        ({"url": "mqtt://broker:99999"}, "invalid port"),
        ({"url": "mqtt://broker:0"}, "invalid port"),
        ({"url": "mqtt://u:p@broker"}, "credentials"),
        ({"url": "mqtt://broker/topic"}, "no path"),
        ({"url": "mqtts://b", "cert_file": "/c.pem"}, "go together"),
        ({"url": "mqtt://b", "ca_file": "/ca.pem"}, "mqtts://"),
        ({"url": "mqtt://b", "prefix": "stations/#"}, "wildcards"),
        ({"url": "mqtt://b", "prefix": "/stations"}, "wildcards"),
        ({"url": "mqtt://b", "heartbeat_s": 0.5}, "greater than or equal"),
        ({"url": "mqtt://b", "keepalive_s": 1}, "greater than or equal"),
        ({"url": "mqtt://b", "hostname": "x"}, "Extra inputs"),
    ],
)
def test_bad_config_is_refused(settings: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        MqttConfig(**settings)


def test_config_defaults_and_client_id() -> None:
    cfg = MqttConfig(url="mqtts://broker.example.org")
    assert (cfg.prefix, cfg.heartbeat_s, cfg.keepalive_s) == ("stations", 10, 30)
    assert cfg.effective_client_id("AZ-9") == "station-agent-AZ-9"
    assert MqttConfig(url="mqtt://b", client_id="x").effective_client_id("AZ-9") == "x"


# -- payloads -----------------------------------------------------------------------------------


def test_non_finite_numbers_become_null() -> None:
    text = payloads.to_json({"a": float("nan"), "b": [1.5, float("inf")], "c": Path("/x")})
    assert json.loads(text) == {"a": None, "b": [1.5, None], "c": "/x"}


def test_event_gets_its_seq() -> None:
    ev = Event("camera_lost", "error", "camera gone", {"device": "/dev/video0"}, at_utc=AT)
    body = payloads.to_json(payloads.event(STATION, ev, event_id="a" * 32))
    parsed = valid(payloads.with_seq(body, 7))
    assert (parsed["seq"], parsed["kind"], parsed["fields"]) == (7, "camera_lost", ev.fields)


# -- outbox -------------------------------------------------------------------------------------


def test_outbox_keeps_order_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    seqs = [box.add(f'{{"n":{n}}}') for n in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    box.remove(seqs[:2])
    box.close()
    box = Outbox(path)  # a restarted agent
    assert box.pending == 3
    assert [body for _, body in box.after(0, 10)] == ['{"n":2}', '{"n":3}', '{"n":4}']
    assert box.after(seqs[3], 10) == [(seqs[4], '{"n":4}')]
    box.remove(seqs)
    assert box.add("{}") > seqs[-1]  # seq never goes back, even after the box emptied


def test_outbox_is_bounded(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_events=3)
    for n in range(5):
        box.add(f'{{"n":{n}}}')
    assert (box.pending, box.dropped) == (3, 2)
    assert [body for _, body in box.after(0, 10)] == ['{"n":2}', '{"n":3}', '{"n":4}']


# -- command routing ----------------------------------------------------------------------------


def _set_rung(args: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(args.get("index"), int):
        raise CommandError("set_rung needs an integer 'index'")
    return {"rung": args["index"]}


def _broken(args: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("camera object vanished")


HANDLERS: dict[str, CommandHandler] = {
    "set_rung": _set_rung,
    "snapshot": lambda args: b"\xff\xd8jpeg",
    "broken": _broken,
    "odd": lambda args: ["not", "a", "dict"],  # type: ignore[dict-item,return-value]
}
WALL_S = 1714550400.0  # AT


def route(name: str, payload: bytes) -> dict[str, Any] | bytes | None:
    """The reply of a fresh router (full rate-limit buckets) to one request."""
    router = CommandRouter(STATION, HANDLERS, CommandPolicy(f"stations/{STATION}/reply"))
    return router.handle(CommandRequest(name, payload), now_s=0.0, wall_s=WALL_S).reply


@pytest.mark.parametrize(
    ("name", "payload", "code"),
    [
        ("reboot", b"{}", "unknown_command"),
        ("set_rung", b"{not json", "bad_json"),
        ("set_rung", b"\xff\xfe", "bad_json"),
        ("set_rung", b"[1, 2]", "bad_request"),
        ("set_rung", b'{"index": "high"}', "bad_request"),
        ("set_rung", b'{"index": 1, "station_id": "AZ-0002"}', "wrong_station"),
        ("set_rung", b" " * (MAX_COMMAND_PAYLOAD_BYTES + 1), "too_large"),
        ("broken", b"", "failed"),
        ("odd", b"", "failed"),
    ],
)
def test_bad_commands_get_error_replies(name: str, payload: bytes, code: str) -> None:
    reply = route(name, payload)
    assert isinstance(reply, dict)
    assert valid(reply)["error"]["code"] == code
    assert reply["ok"] is False and reply["command"] == name


def test_good_commands_reply() -> None:
    reply = route("set_rung", b'{"index": 2, "station_id": "AZ-0001"}')
    assert isinstance(reply, dict) and valid(reply)["result"] == {"rung": 2}
    assert reply["at_utc"] == AT
    assert route("snapshot", b"") == b"\xff\xd8jpeg"


# -- JSON lines on stdout (no [mqtt] section) ---------------------------------------------------


class _Lines(io.StringIO):
    """A stream that lets the test wait for a number of lines."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def write(self, text: str) -> int:
        with self.changed:
            written = super().write(text)
            self.changed.notify_all()
            return written

    def wait_lines(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        with self.changed:
            self.changed.wait_for(lambda: self.getvalue().count("\n") >= count, timeout_s)
            return [json.loads(line) for line in self.getvalue().splitlines()]


def test_json_lines_without_mqtt(telemetry_factory: TelemetryFactory) -> None:
    out = _Lines()
    telemetry = telemetry_factory(None, out=out, heartbeat_s=1)
    telemetry.emit(Event("camera_lost", "error", "camera gone"))
    lines = out.wait_lines(5, timeout_s=10)  # online, started, heartbeat, camera_lost, heartbeat
    telemetry.stop("SIGTERM")
    lines = [valid(line) for line in out.wait_lines(len(lines) + 2, timeout_s=5)]
    types = [line["type"] for line in lines]
    assert types[0] == "status" and lines[0]["state"] == "online"
    assert types.count("heartbeat") >= 2
    events = [line for line in lines if line["type"] == "event"]
    assert [e["kind"] for e in events] == ["agent_started", "camera_lost", "agent_stopping"]
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert lines[-1]["state"] == "offline" and lines[-1]["reason"] == "SIGTERM"
    heartbeat = next(line for line in lines if line["type"] == "heartbeat")
    assert heartbeat["capture"]["state"] == "running"
    assert heartbeat["system"]["spool_free_bytes"] > 0
    assert heartbeat["telemetry"]["mode"] == "stdout"


def test_failing_status_still_heartbeats(telemetry_factory: TelemetryFactory) -> None:
    def broken_status() -> dict[str, Any]:
        raise KeyError("encoder")

    out = _Lines()
    telemetry_factory(None, out=out, heartbeat_s=1, status=broken_status)
    lines = out.wait_lines(3, timeout_s=10)
    heartbeat = valid(next(line for line in lines if line["type"] == "heartbeat"))
    assert heartbeat["status_error"] == "KeyError: 'encoder'"
    assert "capture" not in heartbeat
