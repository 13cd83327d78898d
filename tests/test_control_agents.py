"""Acceptance of the control centre with two real agent processes on a real mosquitto: one on
a test pattern, one on a camera that films darkness (the health test footage). A station
killed with -9 shows offline within its keepalive budget and raises one alarm, acknowledged
and cleared when it is back; the dark camera shows its condition; a command goes round trip
with its audit record; a restart of the control centre keeps state and history; the roster's
never-seen station is listed."""

from __future__ import annotations

from pathlib import Path

import av

from control.centre import OverviewQuery
from control.service import ControlService
from tests.peers.agent import AgentProcess, wait_until
from tests.peers.config import agent_config, write_toml
from tests.peers.control import ControlFactory, write_roster
from tests.peers.mosquitto import Mosquitto
from tests.peers.video import Fault, SceneVideo

KEEPALIVE_S = 3
# The broker sends the last will at once when the agent's process dies (the kernel closes its
# socket), and at most 1.5 x keepalive after a box goes silent (docs/telemetry.md); the slack
# covers a loaded test machine.
OFFLINE_BUDGET_S = 1.5 * KEEPALIVE_S + 5.0
START_S = 60.0  # two agents starting side by side on a busy 2-core machine


def dark_video(path: Path, seconds: float = 3.0, fps: int = 15) -> Path:
    """A camera filming a room whose lights went out: black with sensor noise (loops)."""
    scene = SceneVideo("camera", 320, 240, faults=[Fault("fade_black", 0.0, 1e9)], seed=3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(scene.frame(i / fps), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def agent(tmp: Path, station_id: str, broker: Mosquitto, source: str) -> AgentProcess:
    folder = tmp / station_id
    folder.mkdir()
    data = agent_config(
        folder,
        station_id=station_id,
        capture={"source": source},
        uplink={"http": {"url": f"file://{folder / 'upstream'}"}},
        mqtt={"url": broker.url, "heartbeat_s": 1, "keepalive_s": KEEPALIVE_S},
    )
    return AgentProcess(write_toml(folder / "station.toml", data)).start()


def test_control_centre_with_real_agents(
    mosquitto: Mosquitto, control_factory: ControlFactory, tmp_path: Path
) -> None:
    rows = [("TEST-A", "School A", "North"), ("TEST-B", "School B", "North"),
            ("TEST-C", "Never installed", "South")]  # fmt: skip
    roster = write_roster(tmp_path / "roster.csv", rows)
    folder = tmp_path / "centre"
    options = {"roster": {"path": str(roster)}, "alarms": {"offline_after_s": 1}}
    svc = control_factory(mosquitto, folder, **options)
    video = dark_video(tmp_path / "dark.mp4")
    a = agent(tmp_path, "TEST-A", mosquitto, "test:")
    b = agent(tmp_path, "TEST-B", mosquitto, f"file:{video}")
    try:

        def state(sid: str) -> str:
            return str(svc.centre.station(sid)["state"])  # type: ignore[index]

        def causes(service: ControlService, sid: str) -> set[str]:
            return {a.cause for a in service.centre.active_alarms() if a.station_id == sid}

        assert wait_until(lambda: state("TEST-A") == "ok", START_S), a.stderr()[-2000:]
        assert wait_until(lambda: "camera_dark" in causes(svc, "TEST-B"), START_S), b.stderr()[
            -2000:
        ]
        assert state("TEST-B") == "problem"
        assert "dark" in svc.centre.station("TEST-B")["health_flags"]  # type: ignore[index]
        assert state("TEST-C") == "never_seen"
        overview = svc.centre.overview(OverviewQuery())
        assert overview["counts"] == {"offline": 0, "stale": 0, "problem": 1, "never_seen": 1,
                                      "ok": 1}  # fmt: skip
        assert [r["station_id"] for r in overview["rows"]] == ["TEST-B", "TEST-C", "TEST-A"]

        # A command, round trip, with its audit record.
        reply = svc.commander.send("TEST-A", "set_rung", {"rung": "240p15"}, "maria").result(30)
        assert reply.ok and reply.result["name"] == "240p15 300k", reply
        (audit,) = svc.store.audit(station_id="TEST-A")
        assert (audit.user, audit.command, audit.ok, audit.signed) == (
            "maria", "set_rung", True, False)  # fmt: skip
        assert audit.result == reply.result and audit.reply_wall_s is not None

        # Killed: offline within the keepalive budget, one alarm.
        a.kill()
        assert wait_until(lambda: state("TEST-A") == "offline", OFFLINE_BUDGET_S)
        assert svc.centre.station("TEST-A")["clean_stop"] is False  # type: ignore[index]
        assert wait_until(lambda: causes(svc, "TEST-A") == {"offline"}, 10)
        (offline,) = [x for x in svc.centre.active_alarms() if x.station_id == "TEST-A"]
        acked = svc.centre.acknowledge(offline.alarm_id, "maria")
        assert acked is not None and acked.acked_by == "maria" and acked.active

        a.start()  # back: the alarm clears, acknowledged and with its times
        assert wait_until(lambda: state("TEST-A") == "ok", START_S), a.stderr()[-2000:]
        assert wait_until(lambda: svc.store.alarms(station_id="TEST-A")[0].cleared_wall_s, 10)
        alarms = svc.store.alarms(station_id="TEST-A")
        assert [x.cause for x in alarms] == ["offline"], alarms  # no stale, no second
        history = alarms[0]
        assert (history.cause, history.acked_by) == ("offline", "maria")
        assert history.started_wall_s < history.cleared_wall_s  # type: ignore[operator]

        def started() -> int:
            return [e.kind for e in svc.store.events("TEST-A", 0)].count("agent_started")

        assert wait_until(lambda: started() == 2, 15)  # both runs, each once

        # The control centre restarts: state and history are still there.
        events = svc.store.event_count()
        svc.stop()
        again = control_factory(mosquitto, folder, **options)
        assert "camera_dark" in causes(again, "TEST-B")  # from its database, at once
        assert again.store.event_count() >= events
        assert [x.command for x in again.store.audit(station_id="TEST-A")] == ["set_rung"]
        assert again.centre.station("TEST-C")["state"] == "never_seen"  # type: ignore[index]
        assert wait_until(lambda: again.centre.station("TEST-A")["state"] == "ok", 20)  # type: ignore[index]
        assert len(again.store.alarms(station_id="TEST-A")) == 1
    finally:
        a.kill()
        b.kill()
