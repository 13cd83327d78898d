"""The simulator: what it sends follows the agent's schemas; on a real broker its stations
have last wills, answer commands (signed ones checked as a station would) and fail at the
configured rate."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.telemetry.signing import sign_command
from control.roster import read_roster
from control.simfleet import FAULTS, FaultPlan, SimStation
from control.simulate import SimOptions, load_public_key, write_sim_roster
from tests.peers.control import SimulatorFactory
from tests.peers.mosquitto import Mosquitto, Received, SubscriberFactory
from tests.peers.telemetry import valid

WALL0 = 1_800_000_000.0


def test_every_message_follows_the_agents_schemas() -> None:
    st = SimStation("SIM-0001", WALL0 - 100, random.Random(3), heartbeat_s=10)
    valid(st.status_online(WALL0))
    valid(st.status_offline(WALL0, clean=False, reason="connection_lost"))
    valid(st.status_offline(WALL0, clean=True, reason="SIGTERM"))
    for kind in FAULTS:
        if kind == "offline":
            continue
        st.start_fault(kind, WALL0)
        valid(st.heartbeat(WALL0 + 10))
        st.end_fault(WALL0 + 20)
        valid(st.heartbeat(WALL0 + 30))
    for name, args in [("ping", {}), ("set_rung", {"rung": "480p30"}), ("auto", {}),
                       ("restart_capture", {}), ("retake_reference", {}), ("nope", {}),
                       ("set_rung", {"rung": "big"})]:  # fmt: skip
        reply = st.command(name, args, WALL0)
        assert isinstance(reply, dict)
        valid(reply)
    events = st.take_events()
    kinds = {e["kind"] for e in events}
    assert {"health_raised", "health_cleared", "uplink_down", "uplink_up", "rung_changed",
            "segment_dropped", "command"} <= kinds  # fmt: skip
    for event in events:
        valid(event)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len({e["id"] for e in events}) == len(events)
    jpeg = st.command("snapshot", {}, WALL0)
    assert isinstance(jpeg, bytes)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == 320


def test_the_fault_plan_keeps_about_the_configured_share_in_trouble() -> None:
    rng = random.Random(5)
    plan = FaultPlan(0.1, rng, mean_s=60.0, kinds=("dark",))
    fleet = [SimStation(f"S{i}", WALL0, random.Random(i)) for i in range(500)]
    shares = []
    for beat in range(200):  # 2,000 s at a 10 s heartbeat
        now_s = beat * 10.0
        for st in fleet:
            step = plan.step(st, now_s, 10.0)
            if step == "end":
                st.end_fault(now_s)
            elif step is not None:
                st.start_fault(step.removeprefix("start:"), now_s)
        if beat >= 50:
            shares.append(sum(st.fault is not None for st in fleet) / len(fleet))
    assert 0.06 < sum(shares) / len(shares) < 0.14


def test_simulated_stations_on_a_broker_last_will_and_commands(
    mosquitto: Mosquitto,
    simulator_factory: SimulatorFactory,
    subscriber: SubscriberFactory,
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    sim = simulator_factory(mosquitto, 3, command_key=key.public_key())
    sub = subscriber(mosquitto, "stations/#")

    def status(sid: str, state: str) -> Received | None:
        return sub.wait_for(
            lambda m: m.topic == f"stations/{sid}/status" and m.json()["state"] == state, 15
        )

    for sid in sim.stations:
        assert status(sid, "online") is not None
    beat = sub.wait_for(lambda m: m.topic.endswith("/heartbeat"), 10)
    assert beat is not None and beat.properties.MessageExpiryInterval == 2
    valid(beat.payload)

    sim.set_fault("SIM-0002", "offline")  # the connection dies: the broker sends the will
    will = status("SIM-0002", "offline")
    assert will is not None and valid(will.payload)["clean"] is False

    signed = sign_command(key, "SIM-0001", "set_rung", {"rung": "360p30"})
    reply = sub.request("stations/SIM-0001/cmd/set_rung", signed, timeout_s=10)
    assert reply is not None and valid(reply.payload)["result"]["name"] == "360p30 700k"
    unsigned = sub.request("stations/SIM-0001/cmd/auto", b"{}", timeout_s=10)
    assert unsigned is not None and valid(unsigned.payload)["error"]["code"] == "unsigned"
    other = sign_command(key, "SIM-0003", "auto", {})
    wrong = sub.request("stations/SIM-0001/cmd/auto", other, timeout_s=10)
    assert wrong is not None and json.loads(wrong.payload)["error"]["code"] == "wrong_station"
    snap = sub.request(
        "stations/SIM-0003/cmd/snapshot", sign_command(key, "SIM-0003", "snapshot"), 10
    )
    assert snap is not None and snap.payload[:2] == b"\xff\xd8"
    assert snap.properties.ContentType == "image/jpeg"

    sim.set_fault("SIM-0002", None)
    assert sub.wait_count(lambda m: m.topic == "stations/SIM-0002/status", 3, 15)


def test_simulate_command_burst_and_roster(mosquitto: Mosquitto, tmp_path: Path) -> None:
    roster = tmp_path / "roster.csv"
    write_sim_roster(roster, SimOptions(mosquitto.url, 12), never_seen=2)
    entries = read_roster(roster)
    assert len(entries) == 14 and entries["SIM-0001"].region == "North"
    out = subprocess.run(
        [sys.executable, "-m", "control", "simulate", "--broker", mosquitto.url,
         "--stations", "300", "--burst", "2"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "published 1200 messages"  # 300 x (status, event, 2 beats)


def test_private_key_pem_round_trip(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "command-key.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert load_public_key(pub).public_bytes_raw() == key.public_key().public_bytes_raw()
