"""The whole agent (a real process) over a real mosquitto: schemas, commands, clean stop."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from agent.capture.privacy import SOLID_FILL_LEVEL
from tests.peers.agent import AgentProcess, wait_until
from tests.peers.config import SMALL_RUNG, agent_config, write_toml
from tests.peers.mosquitto import Mosquitto, Received, Subscriber
from tests.peers.telemetry import valid

STATION = "TEST-0001"
PREFIX = f"stations/{STATION}"
MASK = (0.55, 0.35, 0.95, 0.75)
SMALL = {"width": 160, "height": 120, "fps": 10, "bitrate_bps": 150_000}


def on(topic: str, **fields: object) -> Callable[[Received], bool]:
    def match(m: Received) -> bool:
        if m.topic != f"{PREFIX}/{topic}":
            return False
        body = m.json()
        return all(body.get(k) == v for k, v in fields.items())

    return match


def command(sub: Subscriber, name: str, payload: object) -> Received:
    reply = sub.request(f"{PREFIX}/cmd/{name}", json.dumps(payload).encode(), timeout_s=15)
    assert reply is not None, f"no reply to {name}"
    return reply


def test_real_agent_over_mqtt(mosquitto: Mosquitto, subscriber: object, tmp_path: Path) -> None:
    data = agent_config(
        tmp_path,
        adapt={"ladder": [SMALL, SMALL_RUNG], "start_rung": "240p15"},
        privacy={"masks": [{"rect": list(MASK)}]},
        uplink={"http": {"url": f"file://{tmp_path / 'upstream'}"}},
        mqtt={"url": mosquitto.url, "heartbeat_s": 1, "keepalive_s": 3},
    )
    agent = AgentProcess(write_toml(tmp_path / "station.toml", data)).start()
    sub: Subscriber = subscriber(mosquitto, f"{PREFIX}/#")  # type: ignore[operator]
    try:
        online = sub.wait_for(on("status", state="online"), timeout_s=30)
        assert online is not None, agent.stderr()[-2000:]
        assert valid(online.payload)["summary"]["ladder_top"] == "240p15 300k"

        def full_heartbeat(m: Received) -> bool:
            return m.topic == f"{PREFIX}/heartbeat" and "uplink" in m.json()

        def running_heartbeat(m: Received) -> bool:
            return full_heartbeat(m) and m.json()["capture"]["state"] == "running"

        first = sub.wait_for(full_heartbeat, timeout_s=30)
        assert first is not None  # the first one (camera still opening) is valid too
        valid(first.payload)
        beat = sub.wait_for(running_heartbeat, timeout_s=30)
        assert beat is not None
        body = valid(beat.payload)
        assert body["capture"]["state"] == "running"
        assert body["encode"]["rung"]["width"] == 320
        assert body["privacy"]["active_count"] == 1
        assert "flags" in body["health"]

        snap = sub.request(f"{PREFIX}/cmd/snapshot", b"{}", timeout_s=15)
        assert snap is not None and snap.payload[:2] == b"\xff\xd8"
        image = cv2.imdecode(np.frombuffer(snap.payload, np.uint8), cv2.IMREAD_COLOR)
        h, w = image.shape[:2]  # type: ignore[union-attr]
        x0, y0, x1, y1 = MASK
        inside = image[int(y0 * h) + 8 : int(y1 * h) - 8, int(x0 * w) + 8 : int(x1 * w) - 8]  # type: ignore[index]
        # JPEG ringing near the mask edge stays within ~16 levels; the moving disc is 200+
        assert np.abs(inside.astype(int) - SOLID_FILL_LEVEL).max() <= 16, "snapshot unmasked"

        reply = valid(command(sub, "set_rung", {"rung": "120p10"}).payload)
        assert reply["ok"] and reply["result"]["name"] == "120p10 150k"

        def small_rung(m: Received) -> bool:
            return full_heartbeat(m) and m.json()["encode"]["rung"]["width"] == 160

        assert sub.wait_for(small_rung, timeout_s=20) is not None
        assert valid(command(sub, "auto", {}).payload)["ok"]
        assert valid(command(sub, "restart_capture", {}).payload)["ok"]
        assert valid(command(sub, "retake_reference", {}).payload)["ok"]
        for bad in ({"rung": 720}, {"rung": "720p30", "extra": 1}, {"rung": "fast"}):
            answer = valid(command(sub, "set_rung", bad).payload)
            assert answer["ok"] is False and answer["error"]["message"], bad
        assert valid(command(sub, "snapshot", {"size": "huge"}).payload)["ok"] is False

        agent.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert agent.proc.wait(30) == 0  # type: ignore[union-attr]
        offline = sub.wait_for(on("status", state="offline"), timeout_s=10)
        assert offline is not None and "SIGTERM" in json.dumps(offline.json())
        for message in list(sub.messages):
            if message.topic.startswith(f"{PREFIX}/") and "/cmd/" not in message.topic:
                if message.payload[:1] == b"{":
                    valid(message.payload)
        kinds = [m.json()["kind"] for m in sub.messages if m.topic == f"{PREFIX}/event"]
        assert "agent_started" in kinds and "agent_stopping" in kinds
        assert "rung_changed" in kinds
    finally:
        agent.kill()
    assert wait_until(lambda: agent.proc is not None and agent.proc.poll() is not None, 10)
