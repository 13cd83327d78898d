"""Secrets never leave the process (issue 13): the real agent runs with a credential in every
place a config can hold one (an IP camera password with "/", "@", ":" and "#" in it, an upload
token file, an MQTT password file) against a real nginx and a real mosquitto; everything it
emits is captured (MQTT messages, retained status included; stdout JSON lines; the stderr log,
native libraries included; config errors; `check --json`) and searched for every secret."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.peers.agent import AgentProcess, wait_until
from tests.peers.config import STATION, agent_config, write_toml
from tests.peers.mosquitto import Mosquitto, MosquittoFactory, Received, Subscriber
from tests.peers.nginx import Nginx

# A camera that refuses every connection: the agent keeps reopening it, logging and reporting
# each attempt. The password holds every character a hand-typed URL gets wrong.
CAM_PASSWORD = "k1wi/m4ngo@p3ar#plum:9"  # noqa: S105 - a test credential
SOURCE = f"rtsp://admin:{CAM_PASSWORD}@127.0.0.1:1/stream"
SHOWN_SOURCE = "rtsp://***@127.0.0.1:1/stream"
TOKEN = "upl0ad-t0ken-5ecret"  # noqa: S105 - a test credential
MQTT_PASSWORD = "mqtt-pa55w0rd-5ecret"  # noqa: S105 - a test credential
CENTRAL_PASSWORD = "central-only"  # noqa: S105 - the test subscriber's own password
# Each secret and every part of the camera password (the old regex showed parts of it).
SECRETS = (CAM_PASSWORD, TOKEN, MQTT_PASSWORD, "k1wi", "m4ngo", "p3ar", "plum")


def assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in {where}:\n{text[-3000:]}"


def station_config(tmp_path: Path, nginx: Nginx, broker: Mosquitto | None) -> dict[str, Any]:
    for name, secret in (("upload-token", TOKEN), ("mqtt-password", MQTT_PASSWORD)):
        (tmp_path / name).write_text(secret + "\n")
        (tmp_path / name).chmod(0o600)
    data = agent_config(
        tmp_path,
        capture={"source": SOURCE, "reconnect_max_s": 1.0, "stall_timeout_s": 1.0},
        uplink={
            "http": {
                "url": nginx.url,
                "token_file": str(tmp_path / "upload-token"),
                "allow_insecure": True,  # plain http on loopback: a test set-up
            }
        },
    )
    if broker is not None:
        data["mqtt"] = {
            "url": broker.url,
            "username": STATION,
            "password_file": str(tmp_path / "mqtt-password"),
            "allow_insecure": True,  # plain mqtt on loopback: a test set-up
            "heartbeat_s": 1,
        }
    return data


def test_nothing_the_agent_emits_holds_a_secret(
    tmp_path: Path,
    nginx_factory: Callable[..., Nginx],
    mosquitto_factory: MosquittoFactory,
    subscriber: Callable[..., Subscriber],
) -> None:
    nginx = nginx_factory(bearer_token=TOKEN)
    broker = mosquitto_factory(users={STATION: MQTT_PASSWORD, "central": CENTRAL_PASSWORD})
    sub = subscriber(broker, f"stations/{STATION}/#", username="central", password=CENTRAL_PASSWORD)
    config = write_toml(tmp_path / "station.toml", station_config(tmp_path, nginx, broker))
    agent = AgentProcess(config).start()
    try:

        def camera_beat(m: Received) -> bool:
            return m.topic.endswith("/heartbeat") and "capture" in m.json()

        online = sub.wait_for(lambda m: m.topic.endswith("/status"), timeout_s=30)
        assert online is not None, agent.stderr()[-2000:]
        assert online.json()["summary"]["source"] == SHOWN_SOURCE
        beat = sub.wait_for(camera_beat, timeout_s=30)
        assert beat is not None and beat.json()["capture"]["source"] == SHOWN_SOURCE
        lost = sub.wait_for(lambda m: b'"camera_lost"' in m.payload, timeout_s=30)
        assert lost is not None and SHOWN_SOURCE in lost.json()["message"]
        # several reopen attempts logged, and the card recorded instead uploaded with the token
        assert wait_until(lambda: agent.stderr().count("reopening") >= 3, timeout_s=30)
        assert wait_until(lambda: list((nginx.root / STATION).rglob("*.ts")), timeout_s=60)
        assert f"reopening {SHOWN_SOURCE}" in agent.stderr()
    finally:
        assert agent.terminate() == 0
    assert sub.wait_for(lambda m: b'"offline"' in m.payload, timeout_s=10) is not None
    for message in sub.messages:
        assert_no_secret(f"MQTT {message.topic}", message.payload.decode("utf-8", "replace"))
    assert_no_secret("stderr", agent.stderr())
    assert_no_secret("stdout", config.with_suffix(".stdout").read_text())
    assert_no_secret("the spool's telemetry outbox", _folder_text(tmp_path / "spool" / "telemetry"))


def test_json_lines_check_and_config_errors_hold_no_secret(
    tmp_path: Path, nginx_factory: Callable[..., Nginx]
) -> None:
    nginx = nginx_factory(bearer_token=TOKEN)
    data = station_config(tmp_path, nginx, broker=None)  # telemetry as JSON lines on stdout
    config = write_toml(tmp_path / "station.toml", data)
    agent = AgentProcess(config).start()
    try:
        assert wait_until(lambda: _lines_with(agent, "kind", "camera_lost"), timeout_s=30)
        assert wait_until(lambda: _lines_with(agent, "capture"), timeout_s=30)
        assert wait_until(lambda: agent.stderr().count("reopening") >= 2, timeout_s=30)
    finally:
        assert agent.terminate() == 0
    lines = agent.json_lines()
    assert SHOWN_SOURCE in _lines_with(agent, "kind", "camera_lost")[0]["message"]
    assert _lines_with(agent, "capture")[0]["capture"]["source"] == SHOWN_SOURCE
    assert_no_secret("stdout JSON lines", json.dumps(lines))
    assert_no_secret("stderr", agent.stderr())

    check = _agent("check", "--json", "--config", str(config))
    report = json.loads(check.stdout)
    camera = next(c for c in report["checks"] if c["name"] == "camera")
    assert camera["result"] == "FAIL" and SHOWN_SOURCE in camera["detail"]
    assert_no_secret("check --json", check.stdout + check.stderr)

    for section, key, value in (
        ("capture", "source", SOURCE.replace("rtsp://", "rtspx://")),  # refused: unknown scheme
        ("uplink", "http", {"url": f"https://admin:{CAM_PASSWORD}@127.0.0.1/in"}),
        ("mqtt", "url", f"mqtts://admin:{CAM_PASSWORD}@127.0.0.1:8883"),
    ):
        bad = json.loads(json.dumps(data))
        bad.setdefault(section, {})[key] = value
        result = _agent("run", "--config", str(write_toml(tmp_path / "bad.toml", bad)))
        assert result.returncode == 2 and "config error" in result.stderr, result.stderr
        assert_no_secret(f"the config error for {section}.{key}", result.stdout + result.stderr)


def _lines_with(agent: AgentProcess, key: str, value: object = None) -> list[dict[str, Any]]:
    """The agent's stdout JSON lines holding `key` (equal to `value` when given)."""
    try:
        lines = agent.json_lines()
    except ValueError:  # a line being written right now
        return []
    return [line for line in lines if key in line and value in (None, line[key])]


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=120
    )


def _folder_text(folder: Path) -> str:
    """Every file under `folder` as text (the MQTT outbox is an SQLite file)."""
    if not folder.exists():
        return ""
    return "".join(
        path.read_bytes().decode("utf-8", "replace") for path in folder.rglob("*") if path.is_file()
    )
