"""Telemetry exactly as docs/telemetry.md says (issue 16): events emitted during the start reach
MQTT, `agent_started` first; null (not 0, not `stopped`) before the first value; one alarm per
cause; an audit event for every command; a clock section in the heartbeat; the overlay names
the time zone."""

from __future__ import annotations

import json
import random
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from agent.capture.capture import Capture
from agent.capture.config import CaptureConfig
from agent.core import timesync
from agent.core.config import Secrets
from agent.core.events import EARLY_EVENTS_MAX, Event, EventFanout, RecordingSink
from agent.encode.overlay import Overlay
from agent.service.config import config_from_dict
from agent.service.pipeline import Pipeline
from agent.telemetry import load_schema, payloads
from tests.peers.agent import AgentProcess, wait_until
from tests.peers.config import STATION, agent_config, write_toml
from tests.peers.mosquitto import Mosquitto, Received, Subscriber
from tests.peers.telemetry import valid
from tests.test_pipeline import write_video

PREFIX = f"stations/{STATION}"
ALARM = ("error", "critical")


# --- the fan-out keeps what the start emitted for the telemetry -------------------------------


def test_early_events_reach_a_late_subscriber_first_and_in_order() -> None:
    fanout = EventFanout(keep_early=True)
    chain = RecordingSink()
    fanout.subscribe(chain.emit)  # an early subscriber gets events at once, as before
    fanout.emit(Event("config_problem", "warning", "reference picture unusable"))
    fanout.emit(Event("camera_lost", "error", "camera lost"))
    assert chain.kinds() == ["config_problem", "camera_lost"]
    telemetry = RecordingSink()
    telemetry.emit(Event("agent_started", "info", "started"))  # the telemetry's own, first
    fanout.subscribe(telemetry.emit, replay_early=True)
    fanout.emit(Event("camera_restored", "info", "back"))
    assert telemetry.kinds() == [
        "agent_started",
        "config_problem",
        "camera_lost",
        "camera_restored",
    ]
    other = RecordingSink()
    fanout.subscribe(other.emit, replay_early=True)  # kept only once: nothing more to replay
    fanout.emit(Event("uplink_up", "info", "up"))
    assert other.kinds() == ["uplink_up"]


def test_events_emitted_while_catching_up_wait_behind_the_early_ones() -> None:
    fanout = EventFanout(keep_early=True)
    for k in range(5):
        fanout.emit(Event(f"early_{k}", "info", "x"))
    got: list[str] = []
    started, go_on = threading.Event(), threading.Event()

    def slow(event: Event) -> None:
        if event.kind == "early_0":
            started.set()
            assert go_on.wait(5)
        got.append(event.kind)

    subscriber = threading.Thread(target=fanout.subscribe, args=(slow, True))
    subscriber.start()
    assert started.wait(5)  # replaying early_0: a live event comes meanwhile
    fanout.emit(Event("live", "info", "x"))
    go_on.set()
    subscriber.join(5)
    assert got == [f"early_{k}" for k in range(5)] + ["live"]


def test_early_events_are_bounded() -> None:
    fanout = EventFanout(keep_early=True)
    for k in range(EARLY_EVENTS_MAX + 7):
        fanout.emit(Event("x", "info", str(k)))
    late = RecordingSink(max_events=EARLY_EVENTS_MAX + 100)
    fanout.subscribe(late.emit, replay_early=True)
    assert len(late.events) == EARLY_EVENTS_MAX and fanout.early_dropped == 7


# --- null before the first value ----------------------------------------------------------


class BlockedCamera:
    """A camera whose open takes as long as the test wants."""

    description = "slow camera"

    def __init__(self, release: threading.Event) -> None:
        self._release = release

    def open(self) -> None:
        self._release.wait(10)

    def read(self) -> np.ndarray | None:
        return np.zeros((24, 32, 3), np.uint8)

    def close(self) -> None:
        pass


def test_capture_is_opening_from_its_start_until_the_first_frame() -> None:
    release = threading.Event()

    def factory() -> BlockedCamera:
        assert release.wait(10)  # the thread is held before it opens anything
        return BlockedCamera(release)

    capture = Capture(
        CaptureConfig(source="v4l2:/dev/video9"), RecordingSink(), factory, rng=random.Random(1)
    )
    assert capture.status(0.0)["state"] == "stopped"
    capture.start()
    try:
        assert capture.status(0.0)["state"] == "opening"  # not "stopped" while it starts
        release.set()
        assert wait_until(lambda: capture.status(0.0)["state"] == "running", 10)
    finally:
        release.set()
        capture.stop()


def test_pipeline_figures_are_null_until_measured(tmp_path: Path) -> None:
    """bitrate before the first segment, live lag before the first upload: null, never 0."""
    cfg = config_from_dict(
        agent_config(tmp_path, uplink={"http": {"url": "http://127.0.0.1:9/never"}})
    )
    sink = RecordingSink()
    events = EventFanout()
    events.subscribe(sink.emit)
    pipeline = Pipeline(cfg, Secrets(), events)
    assert pipeline.encode.status()["bitrate_bps_actual"] is None  # no segment yet
    pipeline.start()
    try:
        assert wait_until(lambda: pipeline.segments_stored >= 2, timeout_s=30)
        status = pipeline.status()
        assert status["encode"]["bitrate_bps_actual"] > 0
        assert status["uplink"]["backlog_segments"] >= 2
        assert status["uplink"]["live_lag_s"] is None  # nothing upstream: no lag to tell
        _valid_heartbeat(status)
    finally:
        pipeline.stop()


def _valid_heartbeat(pipeline_status: dict[str, Any]) -> dict[str, Any]:
    body = payloads.heartbeat(
        STATION,
        at_utc="2024-05-01T07:00:00.000Z",
        seq=1,
        uptime_s=0.1,
        system={},
        clock=timesync.clock_state(1_714_546_800.0),
        pipeline=pipeline_status,
        status_error=None,
        telemetry={"mode": "stdout", "connected": True, "last_error": None},
    )
    schema = load_schema("heartbeat")
    schema["properties"]["system"] = {"type": "object"}  # the system figures are not the point
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(body)]
    assert not errors, errors
    return body


# --- one alarm per cause ------------------------------------------------------------------


def test_an_unplugged_camera_is_one_alarm(tmp_path: Path) -> None:
    """The capture's camera_lost is the alarm; camera health does not raise no_frames for
    the same outage (it did: two error alarms for one unplugged camera)."""
    video = tmp_path / "camera.mp4"
    write_video(video, seconds=1.0)
    cfg = config_from_dict(
        agent_config(
            tmp_path,
            capture={"source": f"file:{video}", "stall_timeout_s": 1, "reconnect_max_s": 1},
        )
    )
    events, sink = EventFanout(), RecordingSink()
    events.subscribe(sink.emit)
    pipeline = Pipeline(cfg, Secrets(), events)
    assert cfg.health.enabled
    pipeline.start()
    stopping = threading.Event()

    def supervise() -> None:  # what the service's main loop does once a second
        while not stopping.wait(0.2):
            pipeline.supervise()

    supervisor = threading.Thread(target=supervise, daemon=True)
    supervisor.start()
    try:
        assert wait_until(lambda: pipeline.capture.frames_in > 5, timeout_s=20)
        hidden = tmp_path / "unplugged.mp4"
        shutil.move(video, hidden)
        assert sink.wait_for("camera_lost", timeout_s=20) is not None
        stored = pipeline.segments_stored
        gap = cfg.health.no_frames
        outage_s = gap.gap_s + gap.raise_after_s + 2
        # the "no camera" card is recorded meanwhile: wait that many seconds of it
        assert wait_until(lambda: pipeline.segments_stored >= stored + outage_s, 30)
        shutil.move(hidden, video)
        assert sink.wait_for("camera_restored", timeout_s=20) is not None
    finally:
        stopping.set()
        supervisor.join(5)
        pipeline.stop()
    alarms = [(e.kind, e.fields.get("condition")) for e in sink.events if e.severity in ALARM]
    assert alarms == [("camera_lost", None)], alarms


# --- the real agent over MQTT -------------------------------------------------------------


def _on(topic: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == f"{PREFIX}/{topic}"


def _events(sub: Subscriber) -> list[dict[str, Any]]:
    found = [m.json() for m in list(sub.messages) if m.topic == f"{PREFIX}/event"]
    return sorted(found, key=lambda body: body["seq"])


def test_real_agent_reports_its_start_exactly(
    mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    missing_reference = tmp_path / "etc" / "reference.png"  # provisioned without one
    missing_reference.parent.mkdir()  # (retake_reference saves it there)
    data = agent_config(
        tmp_path,
        health={"reference_image": str(missing_reference)},
        uplink={"http": {"url": "http://127.0.0.1:9/never"}},  # nothing will be uploaded
        mqtt={"url": mosquitto.url, "heartbeat_s": 1, "keepalive_s": 3},
    )
    sub = subscriber(mosquitto, f"{PREFIX}/#")
    agent = AgentProcess(write_toml(tmp_path / "station.toml", data)).start()
    try:
        first = sub.wait_for(_on("heartbeat"), timeout_s=30)
        assert first is not None, agent.stderr()[-2000:]
        beat = valid(first.payload)
        assert beat["seq"] == 1
        assert beat["capture"]["state"] in ("opening", "running")  # never "stopped" at start
        if beat["encode"]["segments"] == 0:
            assert beat["encode"]["bitrate_bps_actual"] is None
        assert beat["uplink"]["live_lag_s"] is None  # nothing upstream, ever, here
        clock = beat["clock"]
        assert clock == timesync.clock_state(datetime.now(UTC).timestamp()) | {
            "ntp_synchronized": clock["ntp_synchronized"]
        }
        assert clock["ntp_synchronized"] == timesync.synchronized(timesync.kernel_max_error_us())

        for name, args in (
            ("ping", {}),
            ("snapshot", {}),
            ("set_rung", {"rung": "240p15"}),
            ("auto", {}),
            ("restart_capture", {}),
            ("retake_reference", {}),
        ):
            reply = sub.request(f"{PREFIX}/cmd/{name}", json.dumps(args).encode(), timeout_s=15)
            assert reply is not None, name

            def audited(m: Received, name: str = name) -> bool:
                if m.topic != f"{PREFIX}/event":
                    return False
                body = m.json()
                return body["kind"] == "command" and body["fields"]["command"] == name

            audit = sub.wait_for(audited, timeout_s=15)
            assert audit is not None, f"no audit event for {name}"
            assert valid(audit.payload)["fields"]["result"] == "ok", audit.json()
    finally:
        assert agent.terminate() == 0
    kinds = [body["kind"] for body in _events(sub)]
    assert kinds[0] == "agent_started", kinds  # first, before what the start ran into
    problem = next(b for b in _events(sub) if b["kind"] == "config_problem")
    assert "reference picture" in problem["message"], problem
    assert kinds.index("agent_started") < kinds.index("config_problem")
    seqs = [body["seq"] for body in _events(sub)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # none lost on the way


def test_camera_lost_at_start_comes_after_agent_started(tmp_path: Path) -> None:
    """Without a broker the same messages are JSON lines on stdout, in the same order."""
    data = agent_config(tmp_path, capture={"source": "v4l2:/dev/video-missing"})
    agent = AgentProcess(write_toml(tmp_path / "station.toml", data)).start()
    try:
        assert wait_until(
            lambda: any(line.get("kind") == "camera_lost" for line in agent.json_lines()), 30
        ), agent.stderr()[-2000:]
    finally:
        assert agent.terminate() == 0
    kinds = [line["kind"] for line in agent.json_lines() if line["type"] == "event"]
    assert kinds[0] == "agent_started" and "camera_lost" in kinds, kinds


# --- the clock ----------------------------------------------------------------------------


def test_ntp_state_as_timedatectl_reads_it() -> None:
    assert timesync.synchronized(250_000) is True
    assert timesync.synchronized(15_999_999) is True
    assert timesync.synchronized(16_000_000) is False  # the kernel's cap: nobody synced it
    assert timesync.synchronized(None) is None
    assert isinstance(timesync.kernel_max_error_us(), int)  # adjtimex works without systemd


def test_time_zone_name(tmp_path: Path) -> None:
    link = tmp_path / "localtime"
    link.symlink_to("/usr/share/zoneinfo/Europe/Berlin")
    plain = tmp_path / "timezone"
    plain.write_text("America/La_Paz\n")
    none = tmp_path / "none"
    assert timesync.zone_name({"TZ": ":Asia/Kolkata"}, none, none) == "Asia/Kolkata"
    assert timesync.zone_name({}, link, plain) == "Europe/Berlin"
    assert timesync.zone_name({}, none, plain) == "America/La_Paz"
    assert timesync.zone_name({}, none, none) is None
    assert (
        timesync.is_utc("Etc/UTC")
        and timesync.is_utc(None)
        and not timesync.is_utc("Europe/Berlin")
    )


def test_the_clock_section_is_pinned_in_the_schema_and_the_doc() -> None:
    schema = load_schema("heartbeat")
    assert "clock" in schema["required"]
    fields = schema["properties"]["clock"]["required"]
    assert fields == ["ntp_synchronized", "time_zone", "utc_offset", "utc_offset_s"]
    doc = (Path(__file__).parent.parent / "docs" / "telemetry.md").read_text()
    for name in fields:
        assert f"`clock.{name}`" in doc or f"`clock.{name.split('_s')[0]}`" in doc, name
    body = payloads.heartbeat(
        STATION,
        at_utc="2024-05-01T07:00:00.000Z",
        seq=1,
        uptime_s=0.1,
        system={},
        clock={},
        pipeline=None,
        status_error="the snapshot failed",
        telemetry={"mode": "stdout", "connected": True, "last_error": None},
    )
    del body["clock"]
    errors = list(Draft202012Validator(load_schema("heartbeat")).iter_errors(body))
    assert any("'clock' is a required property" in e.message for e in errors)


def test_offsets_as_people_read_them() -> None:
    assert [timesync.format_offset(s) for s in (7200, -12600, 0)] == ["+02:00", "-03:30", "+00:00"]
    assert [timesync.utc_label(s) for s in (7200, -12600, 0, 19800)] == [
        "UTC+2", "UTC-3:30", "UTC", "UTC+5:30",
    ]  # fmt: skip
    state = timesync.clock_state(0.0, max_error=lambda: 500, zone=lambda: "Europe/Berlin")
    assert state["ntp_synchronized"] is True and state["time_zone"] == "Europe/Berlin"
    assert state["utc_offset"] == timesync.format_offset(state["utc_offset_s"])


def test_the_overlay_shows_the_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        overlay = Overlay("AZ-0001")
        summer = datetime.fromtimestamp(1_720_000_000)  # 2024-07-03, local (naive) time
        assert overlay.text(summer) == "AZ-0001  2024-07-03 11:46:40 UTC+2"
        winter = datetime.fromtimestamp(1_700_000_000)
        assert overlay.text(winter) == "AZ-0001  2023-11-14 23:13:20 UTC+1"
        assert overlay.text(datetime.fromtimestamp(1_700_000_000, UTC)).endswith(" UTC")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


# --- the documented mosquitto_rr recipes -------------------------------------------------


def _documented_requests() -> list[str]:
    """The `mosquitto_rr` lines of docs/telemetry.md, as written there."""
    text = (Path(__file__).parent.parent / "docs" / "telemetry.md").read_text()
    return [line for line in text.splitlines() if line.startswith("mosquitto_rr ")]


def test_documented_mosquitto_rr_recipes_work(
    mosquitto: Mosquitto, subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    """Run as written (the broker's address added, as the doc says to): ping answers,
    snapshot gives a JPEG. Without -m, mosquitto_rr refuses to start."""
    recipes = _documented_requests()
    assert len(recipes) == 2 and all(" -m " in line for line in recipes), recipes
    data = agent_config(tmp_path, mqtt={"url": mosquitto.url, "heartbeat_s": 1})
    data["station_id"] = "AZ-0001"  # the station of the examples
    sub = subscriber(mosquitto, "stations/AZ-0001/status")
    agent = AgentProcess(write_toml(tmp_path / "station.toml", data)).start()
    try:
        assert sub.wait_for(lambda m: b'"online"' in m.payload, timeout_s=30), agent.stderr()
        assert wait_until(lambda: _snapshot_ready(mosquitto, recipes[1]), timeout_s=30)
        ping = _run_recipe(mosquitto, recipes[0])
        reply = valid(ping.stdout)
        assert reply["ok"] and reply["result"]["pong"] is True
        snapshot = _run_recipe(mosquitto, recipes[1])
        assert snapshot.stdout[:2] == b"\xff\xd8", snapshot.stdout[:80]
    finally:
        assert agent.terminate() == 0


def _recipe(broker: Mosquitto, line: str) -> subprocess.CompletedProcess[bytes]:
    """The line run as a shell would (its `> file` is the stdout kept), on `broker`."""
    command, _, _redirect = line.partition(" > ")
    argv = shlex.split(command.replace("$USER", "tech"))
    argv[1:1] = ["-h", "127.0.0.1", "-p", str(broker.port)]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False)


def _run_recipe(broker: Mosquitto, line: str) -> subprocess.CompletedProcess[bytes]:
    done = _recipe(broker, line)
    assert done.returncode == 0, (line, done.stderr)
    return done


def _snapshot_ready(broker: Mosquitto, line: str) -> bool:
    """The camera has delivered a frame: the snapshot command answers with a picture."""
    done = _recipe(broker, line)
    return done.returncode == 0 and done.stdout[:2] == b"\xff\xd8"
