"""A real agent process against a real mosquitto: last will, clean stop, no event ever lost."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from tests.peers.agent import AgentFactory
from tests.peers.mosquitto import Mosquitto, MosquittoFactory, Received, SubscriberFactory
from tests.peers.telemetry import STATION, is_status, topic, valid

KEEPALIVE_S = 3
WAIT_S = 15.0  # upper bound for things that have no deadline of their own
# The will after SIGSTOP depends on the broker's keepalive check, which runs about once a second
# in mosquitto 2.0; the MQTT deadline itself is 1.5 x keepalive.
KEEPALIVE_CHECK_SLACK_S = 2.0


def spec(broker: Mosquitto, state_dir: Path) -> dict[str, Any]:
    return {
        "station_id": STATION,
        "state_dir": str(state_dir),
        "heartbeat_s": 1,
        "mqtt": {"url": broker.url, "keepalive_s": KEEPALIVE_S, "reconnect_max_s": 1},
    }


def offline_since(t0_s: float, timeout_s: float, sub: Any) -> Received | None:
    remaining_s = max(0.0, t0_s + timeout_s - time.monotonic())
    return sub.wait_for(is_status("offline"), remaining_s)


def test_kill_9_publishes_the_last_will(
    mosquitto: Mosquitto,
    subscriber: SubscriberFactory,
    agent_process: AgentFactory,
    tmp_path: Path,
) -> None:
    sub = subscriber(mosquitto, topic("status"))
    agent = agent_process(spec(mosquitto, tmp_path / "state"))
    assert sub.wait_for(is_status("online"), WAIT_S) is not None
    killed_s = time.monotonic()
    agent.signal(signal.SIGKILL)
    will = offline_since(killed_s, 1.5 * KEEPALIVE_S, sub)
    assert will is not None, "no offline status within 1.5 x keepalive of kill -9"
    body = valid(will.payload)
    assert (body["reason"], body["clean"]) == ("connection_lost", False)


def test_frozen_agent_goes_offline_by_keepalive(
    mosquitto: Mosquitto,
    subscriber: SubscriberFactory,
    agent_process: AgentFactory,
    tmp_path: Path,
) -> None:
    """SIGSTOP keeps the socket open (like a box that lost power behind a NAT): only the
    keepalive can tell."""
    sub = subscriber(mosquitto, topic("status"))
    agent = agent_process(spec(mosquitto, tmp_path / "state"))
    assert sub.wait_for(is_status("online"), WAIT_S) is not None
    frozen_s = time.monotonic()
    agent.signal(signal.SIGSTOP)
    try:
        will = offline_since(frozen_s, 1.5 * KEEPALIVE_S + KEEPALIVE_CHECK_SLACK_S, sub)
        assert will is not None, "no offline status after the keepalive ran out"
        assert valid(will.payload)["reason"] == "connection_lost"
    finally:
        agent.signal(signal.SIGKILL)


def test_sigterm_says_offline_with_the_reason(
    mosquitto: Mosquitto,
    subscriber: SubscriberFactory,
    agent_process: AgentFactory,
    tmp_path: Path,
) -> None:
    sub = subscriber(mosquitto, "stations/#")
    agent = agent_process(spec(mosquitto, tmp_path / "state"))
    assert sub.wait_for(is_status("online"), WAIT_S) is not None
    agent.signal(signal.SIGTERM)
    offline = sub.wait_for(is_status("offline"), WAIT_S)
    assert offline is not None
    body = valid(offline.payload)
    assert (body["reason"], body["clean"]) == ("SIGTERM", True)
    assert agent.wait() == 0
    stopping = sub.wait_for(
        lambda m: m.topic == topic("event") and b"agent_stopping" in m.payload, 1
    )
    assert stopping is not None and valid(stopping.payload)["fields"] == {"reason": "SIGTERM"}


def test_no_event_lost_across_broker_outage_and_agent_restart(
    mosquitto_factory: MosquittoFactory,
    subscriber: SubscriberFactory,
    agent_process: AgentFactory,
    tmp_path: Path,
) -> None:
    broker = mosquitto_factory(persistence=True)  # central's subscriber keeps its session
    sub = subscriber(broker, topic("event"), persistent=True)
    state = tmp_path / "state"
    first = agent_process(spec(broker, state))
    assert sub.wait_for(lambda m: b"agent_started" in m.payload, WAIT_S) is not None

    broker.stop()
    first.emit("camera_lost")  # both committed to the outbox while the broker is down
    first.emit("camera_restored")
    first.signal(signal.SIGKILL)  # and the agent dies before it could send them
    first.wait()
    second = agent_process(spec(broker, state))  # restarted while the broker is still down
    second.emit("uplink_down")
    second.emit("uplink_up")
    broker.start()

    expected = [
        "agent_started",
        "camera_lost",
        "camera_restored",
        "agent_started",
        "uplink_down",
        "uplink_up",
    ]
    events = sub.wait_distinct(lambda m: m.topic == topic("event"), len(expected), WAIT_S)
    for body in events:
        valid(body)
    assert [e["kind"] for e in events] == expected
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
