"""The RTMP live output against real nginx-rtmp (record on) and scripted peers: what the server
records plays with the station overlay, outages end at a keyframe at the live edge while the
HTTP record stays complete, refusals carry the server's reason, a peer that never answers
costs the record nothing, a rung change keeps the recordings playable, the key stays secret."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from jsonschema import Draft202012Validator, ValidationError

from agent.adapt.ladder import Rung
from agent.core.clock import parse_utc
from agent.core.config import ConfigError
from agent.core.events import Event
from agent.core.timesync import clock_state
from agent.encode.encoder import VideoEncoder
from agent.encode.overlay import Overlay, _margin, render_patch
from agent.encode.packet import EncodedPacket
from agent.service.config import (
    AgentConfig,
    config_from_dict,
    load_secrets,
    plaintext_credentials,
    secret_values,
)
from agent.telemetry import load_schema, payloads
from agent.telemetry.system import SystemStats
from agent.tools.check_rtmp import check_rtmp
from agent.uplink import rtmp_pipe as pipe
from agent.uplink.rtmp import RtmpOutput
from tests.peers.agent import Running, assert_all_on_server, wait_until
from tests.peers.config import SMALL_RUNG, STATION, agent_config
from tests.peers.ffprobe import ffprobe_json
from tests.peers.nginx import Nginx, NginxFactory
from tests.peers.rtmp_server import ScriptedRtmpServer

KEY = "station-key-7f3a9c"  # the stream name nginx allows
WAIT_S = 30.0
FAST_RTMP = {"allow_insecure": True, "backoff_max_s": 1.0, "connect_timeout_s": 3.0}
FAST_HTTP = {"backoff_max_s": 0.5, "timeout_s": 3.0, "archive_interval_s": 0}
SMALL_LOW_RUNG = {"width": 160, "height": 120, "fps": 15, "bitrate_bps": 150_000}

RunAgent = Callable[[AgentConfig], Running]


def key_file(tmp_path: Path, key: str = KEY) -> Path:
    path = tmp_path / "stream-key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


def rtmp_config(
    tmp_path: Path, url: str, key: str = KEY, http: str | None = None, **sections: Any
) -> AgentConfig:
    uplink: dict[str, Any] = {
        "rtmp": [{"url": url, "key_file": str(key_file(tmp_path, key))} | FAST_RTMP]
    }
    if http is not None:
        uplink["http"] = {"url": http} | FAST_HTTP
    return config_from_dict(agent_config(tmp_path, uplink=uplink, **sections))


def rtmp_events(running: Running, kind: str) -> list[Event]:
    return [e for e in running.sink.events if e.kind == kind]


def output(running: Running) -> RtmpOutput:
    (live,) = running.pipeline.live_outputs
    return live


def wait_frames_sent(running: Running, frames: int) -> None:
    live = output(running)
    start = live.frames_sent
    assert wait_until(lambda: live.frames_sent >= start + frames, WAIT_S), live.status(0.0)


def frames_of(recording: Path) -> list[av.VideoFrame]:
    with av.open(str(recording), "r") as container:
        return list(container.decode(video=0))


def assert_starts_at_a_keyframe(recording: Path) -> dict[str, Any]:
    probe = ffprobe_json(recording, show_frames=True)
    frames = [f for f in probe["frames"] if f["media_type"] == "video"]
    assert frames, f"{recording.name} holds no picture"
    assert frames[0]["key_frame"] == 1 and frames[0]["pict_type"] == "I", recording.name
    return probe


# -- the recording ----------------------------------------------------------------------------


def test_the_recording_plays_with_the_station_overlay(
    nginx_factory: NginxFactory, tmp_path: Path, run_agent: RunAgent
) -> None:
    nginx = nginx_factory(rtmp_keys=[KEY])
    running = run_agent(rtmp_config(tmp_path, nginx.rtmp_url, http=nginx.url))
    assert running.sink.wait_for("rtmp_connected", WAIT_S), running.sink.kinds()
    wait_frames_sent(running, 45)  # 3 s at 15 fps
    heartbeat_rtmp = running.pipeline.status()["rtmp"]
    schema = load_schema("heartbeat")
    validator = Draft202012Validator({"$defs": schema["$defs"]} | schema["properties"]["rtmp"])
    assert not list(validator.iter_errors(heartbeat_rtmp)), heartbeat_rtmp
    assert heartbeat_rtmp[0]["state"] == "connected" and heartbeat_rtmp[0]["bitrate_bps"] > 0
    running.stop()
    recording = nginx.wait_for_recording(KEY, timeout_s=WAIT_S)
    probe = assert_starts_at_a_keyframe(recording)
    (video,) = probe["streams"]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    frames = frames_of(recording)
    assert len(frames) >= 45
    # the station id as the overlay draws it, top-left: text on black, not a blank corner
    luma = frames[len(frames) // 2].to_ndarray(format="gray").astype(int)
    overlay = Overlay(STATION)
    one = render_patch(overlay.text(datetime(2026, 1, 1, 0, 0, 0)), 320, 240).astype(int)
    other = render_patch(overlay.text(datetime(2027, 9, 9, 9, 9, 9)), 320, 240).astype(int)
    width = int(np.argmax((one != other).any(axis=0)))  # columns before the clock: the id
    y = x = _margin(240)
    seen = luma[y : y + one.shape[0], x : x + width]
    assert width > 40 and seen.std() > 40, "the overlay corner is blank"
    assert np.abs(seen - one[:, :width]).mean() < 25, "the station id is not in the picture"


def test_a_box_with_rtmp_only_sends_heartbeats_that_follow_the_schema(
    nginx_factory: NginxFactory, tmp_path: Path, run_agent: RunAgent
) -> None:
    nginx = nginx_factory(rtmp_keys=[KEY])
    running = run_agent(rtmp_config(tmp_path, nginx.rtmp_url))  # no [uplink.http]
    wait_frames_sent(running, 15)
    heartbeat = payloads.heartbeat(
        STATION, at_utc="2026-11-30T10:00:00.000Z", seq=1, uptime_s=3.0,
        system=SystemStats(tmp_path).sample(), clock=clock_state(time.time()),
        pipeline=running.pipeline.status(), status_error=None,
        telemetry={"mode": "stdout", "connected": True, "last_error": None},
    )  # fmt: skip
    validator = Draft202012Validator(load_schema("heartbeat"))
    errors = [f"{e.json_path}: {e.message}" for e in best_errors(validator, heartbeat)]
    assert not errors, errors
    assert "uplink" not in heartbeat and heartbeat["rtmp"][0]["frames_sent"] >= 15


def best_errors(validator: Draft202012Validator, document: dict[str, Any]) -> list[ValidationError]:
    """The errors, with those under an anyOf spelled out (its message alone names no field)."""
    found: list[ValidationError] = []
    for error in validator.iter_errors(document):
        found.extend(error.context or [error])
    return found


# -- outages ----------------------------------------------------------------------------------


def test_after_the_server_is_back_the_stream_resumes_at_the_live_edge(
    nginx_factory: NginxFactory, tmp_path: Path, run_agent: RunAgent
) -> None:
    """nginx (HTTP and RTMP) away for 15 s: the HTTP record is complete afterwards; the live
    stream reconnects and its new recording starts at a keyframe captured after the return."""
    nginx = nginx_factory(rtmp_keys=[KEY])
    running = run_agent(rtmp_config(tmp_path, nginx.rtmp_url, http=nginx.url))
    assert running.sink.wait_for("rtmp_connected", WAIT_S)
    wait_frames_sent(running, 30)
    nginx.stop()
    assert running.sink.wait_for("rtmp_disconnected", WAIT_S)
    time.sleep(15.0)  # the outage itself (what is measured is the agent's behaviour after it)
    nginx.start()
    frames_at_return = running.pipeline.encode.frames_out
    assert wait_until(lambda: len(rtmp_events(running, "rtmp_connected")) >= 2, WAIT_S)
    wait_frames_sent(running, 30)
    assert wait_until(lambda: running.pending() == 0, WAIT_S), "the HTTP backlog stays"
    frames_at_stop = running.pipeline.encode.frames_out
    spool = running.stop()
    assert_all_on_server(spool, nginx.root / STATION)
    lost = rtmp_events(running, "rtmp_disconnected")
    assert len(lost) == 1 and lost[0].fields["was_connected"], [e.message for e in lost]
    back = rtmp_events(running, "rtmp_connected")[-1]
    assert back.fields["reconnects"] >= 1 and back.fields["outage_s"] >= 15.0
    assert output(running).status(0.0)["reconnects"] >= 1
    after = nginx.wait_for_recording(KEY, timeout_s=WAIT_S)
    (before,) = [p for p in nginx.rtmp_dir.glob(f"{KEY}-*.flv") if p != after]
    assert frames_of(before)  # cut short by nginx's stop, and yet it plays
    assert_starts_at_a_keyframe(after)
    # live edge: nothing from the outage was replayed (at most the one-second lag bound early)
    assert len(frames_of(after)) <= frames_at_stop - frames_at_return + 15


def test_a_slow_server_costs_whole_groups_of_pictures_and_the_stream_still_decodes(
    nginx: Nginx, tmp_path: Path, run_agent: RunAgent, fault_proxy: Any
) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.rtmp_port, http=False)
    cfg = rtmp_config(tmp_path, f"rtmp://127.0.0.1:{proxy.port}/live")
    running = run_agent(cfg)
    assert running.sink.wait_for("rtmp_connected", WAIT_S)
    wait_frames_sent(running, 15)
    proxy.set_rate(100_000)  # a third of the stream's 300 kbit/s
    dropped = running.sink.wait_for("rtmp_dropped", WAIT_S)
    assert dropped is not None and dropped.fields["frames"] > 0 and dropped.fields["gops"] > 0
    proxy.set_rate(None)
    wait_frames_sent(running, 15)
    running.stop()
    recording = nginx.wait_for_recording(KEY, timeout_s=WAIT_S)
    frames = frames_of(recording)  # decodes from end to end: no frame lost its reference
    status = output(running).status(0.0)
    assert status["dropped_frames"] >= dropped.fields["frames"] and len(frames) > 30


# -- refusals -----------------------------------------------------------------------------------


def test_a_wrong_key_is_refused_with_what_the_server_did(
    nginx_factory: NginxFactory, tmp_path: Path, run_agent: RunAgent
) -> None:
    nginx = nginx_factory(rtmp_keys=["the-right-key-0000"])
    wrong = "a-wrong-key-1234"
    running = run_agent(rtmp_config(tmp_path, nginx.rtmp_url, key=wrong))
    event = running.sink.wait_for("rtmp_disconnected", WAIT_S)
    assert event is not None
    assert "in answer to the publish request" in event.fields["reason"]  # nginx only closes
    assert "stream key is refused" in event.message
    assert not event.fields["was_connected"]
    assert wait_until(lambda: output(running).status(0.0)["last_error"] is not None, WAIT_S)
    running.stop()
    assert len(rtmp_events(running, "rtmp_disconnected")) == 1  # once per outage
    assert all(wrong not in repr(e) for e in running.sink.events)
    assert not nginx.recordings("a-wrong-key-1234")


def test_a_fixed_key_file_is_used_after_a_reload(
    nginx_factory: NginxFactory, tmp_path: Path, run_agent: RunAgent
) -> None:
    """SIGHUP (Pipeline.reload_secrets): the publisher reconnects with the new key at once."""
    nginx = nginx_factory(rtmp_keys=[KEY])
    cfg = rtmp_config(tmp_path, nginx.rtmp_url, key="a-wrong-key-1234")
    running = run_agent(cfg)
    assert running.sink.wait_for("rtmp_disconnected", WAIT_S)
    key_file(tmp_path, KEY)
    running.pipeline.reload_secrets(load_secrets(cfg))
    assert running.sink.wait_for("rtmp_connected", WAIT_S)
    wait_frames_sent(running, 15)
    running.stop()
    assert frames_of(nginx.wait_for_recording(KEY, timeout_s=WAIT_S))


def test_a_refusal_carries_the_servers_own_words(tmp_path: Path, run_agent: RunAgent) -> None:
    server = ScriptedRtmpServer("refuse", reason="Invalid stream key a-wrong-key-1234")
    server.start()
    try:
        running = run_agent(rtmp_config(tmp_path, server.url, key="a-wrong-key-1234"))
        event = running.sink.wait_for("rtmp_disconnected", WAIT_S)
        running.stop()
    finally:
        server.stop()
    assert event is not None
    assert event.fields["reason"] == (
        "the server refused to publish the stream: Invalid stream key *** "
        "(NetStream.Publish.BadName)"
    )
    assert server.publish_names == ["a-wrong-key-1234"] * len(server.publish_names)


def test_a_server_that_never_answers_does_not_delay_the_record(
    nginx: Nginx, tmp_path: Path, run_agent: RunAgent
) -> None:
    silent = ScriptedRtmpServer("silent")
    silent.start()
    try:
        running = run_agent(rtmp_config(tmp_path, silent.url, http=nginx.url))
        event = running.sink.wait_for("rtmp_disconnected", WAIT_S)
        assert wait_until(lambda: silent.connections >= 2, WAIT_S)  # it keeps trying
        assert wait_until(lambda: running.pipeline.segments_stored >= 8, WAIT_S)
        assert wait_until(lambda: running.pending() == 0, WAIT_S)
        spool = running.stop()
    finally:
        silent.stop()
    assert event is not None
    assert event.fields["reason"].startswith(f"no answer from 127.0.0.1:{silent.port} within 3 s")
    starts = [parse_utc(r.started_utc) for r in spool.segments()]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    segment_s = running.cfg.encode.segment_s
    assert max(gaps) <= 2 * segment_s, gaps  # never more than one segment late
    assert_all_on_server(spool, nginx.root / STATION)


# -- rung changes -------------------------------------------------------------------------------


def test_a_rung_change_restarts_the_stream_on_a_keyframe(
    nginx_factory: NginxFactory, tmp_path: Path, run_agent: RunAgent
) -> None:
    nginx = nginx_factory(rtmp_keys=[KEY])
    ladder = {"ladder": [SMALL_RUNG, SMALL_LOW_RUNG], "start_rung": "240p15"}
    running = run_agent(rtmp_config(tmp_path, nginx.rtmp_url, adapt=ladder))
    assert running.sink.wait_for("rtmp_connected", WAIT_S)
    wait_frames_sent(running, 20)
    running.pipeline.pin_rung("120p15")
    assert wait_until(lambda: running.pipeline.encode.rung.height == 120, WAIT_S)
    assert wait_until(lambda: len(nginx.recordings(KEY)) >= 1, WAIT_S)  # the first one closed
    wait_frames_sent(running, 20)
    running.stop()
    assert wait_until(lambda: len(nginx.recordings(KEY)) >= 2, WAIT_S)
    first, second = nginx.recordings(KEY)[:2]
    for recording, height in ((first, 240), (second, 120)):
        probe = assert_starts_at_a_keyframe(recording)
        assert probe["streams"][0]["height"] == height
        assert frames_of(recording)
    assert len(rtmp_events(running, "rtmp_connected")) == 1  # a planned restart, no event
    assert not rtmp_events(running, "rtmp_disconnected")


# -- the key ------------------------------------------------------------------------------------


def test_the_key_is_never_on_a_command_line_nor_in_an_environment(
    nginx_factory: NginxFactory, tmp_path: Path, run_agent: RunAgent
) -> None:
    nginx = nginx_factory(rtmp_keys=[KEY])
    running = run_agent(rtmp_config(tmp_path, nginx.rtmp_url))
    assert running.sink.wait_for("rtmp_connected", WAIT_S)
    live = output(running)
    proc = live._proc
    assert proc is not None
    proc_dir = Path(f"/proc/{proc.pid}")
    assert KEY.encode() not in (proc_dir / "cmdline").read_bytes()
    assert KEY.encode() not in (proc_dir / "environ").read_bytes()
    assert KEY not in repr(live.status(0.0)) and KEY not in repr(running.pipeline.status())
    running.stop()
    assert proc.poll() is not None  # the publisher ended with the agent


def test_config_and_secrets_of_rtmp_outputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stream key crosses the network in clear"):
        config_from_dict(
            agent_config(tmp_path, uplink={"rtmp": [{"url": "rtmp://h/live", "key_file": "/k"}]})
        )
    path = key_file(tmp_path)
    cfg = config_from_dict(
        agent_config(
            tmp_path,
            uplink={
                "rtmp": [
                    {"url": "rtmps://h/live", "key_file": str(tmp_path / "absent"),
                     "enabled": False},
                    {"url": "rtmp://h/live", "key_file": str(path), "allow_insecure": True},
                ]
            },
        )
    )  # fmt: skip
    secrets = load_secrets(cfg)  # the disabled output's key file is not read
    assert list(secrets.rtmp_keys) == ["rtmp-2"]
    assert KEY in secret_values(cfg, secrets)
    assert plaintext_credentials(cfg) == [
        "[[uplink.rtmp]] rtmp-2 sends its stream key over rtmp://"
    ]
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_secrets(cfg)


# -- check ----------------------------------------------------------------------------------------


def test_check_publishes_one_second_and_names_the_fix(
    nginx_factory: NginxFactory, tmp_path: Path
) -> None:
    nginx = nginx_factory(rtmp_keys=[KEY])
    cfg = rtmp_config(tmp_path, nginx.rtmp_url)
    passed = check_rtmp(cfg, load_secrets(cfg), "rtmp-1")
    assert passed.result == "PASS", passed
    recording = nginx.wait_for_recording(KEY, timeout_s=WAIT_S)
    assert len(frames_of(recording)) == 15  # one second of the lowest rung, 15 fps
    wrong_dir = tmp_path / "wrong"
    wrong_dir.mkdir()
    cfg = rtmp_config(wrong_dir, nginx.rtmp_url, key="not-the-key-5678")
    failed = check_rtmp(cfg, load_secrets(cfg), "rtmp-1")
    assert failed.result == "FAIL"
    assert "in answer to the publish request" in failed.detail
    assert failed.fix is not None and str(wrong_dir / "stream-key") in failed.fix
    assert "not-the-key-5678" not in repr(failed)


# -- the publisher process on its own -----------------------------------------------------------


def publisher_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.uplink.rtmp_child"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_the_publisher_takes_settings_and_packets_written_in_one_go(nginx: Nginx) -> None:
    # a lag bound of 30 s: the packets must not age out while the process starts
    settings = pipe.PublisherSettings("rtmp-1", nginx.rtmp_url, KEY, None, 5.0, 5.0, 1.0, 30.0)
    rung = Rung(160, 120, 10, 200_000)
    encoder = VideoEncoder("libx264", rung, "ultrafast", 1, 10)
    data = settings.encode()
    for i in range(20):
        picture = np.full((180, 160), i * 10, np.uint8)
        for p in encoder.encode(picture, i * 9000, i % 10 == 0):
            packet = EncodedPacket(bytes(p), i * 9000, i * 9000, p.is_keyframe, rung, b"",
                                   time.monotonic())  # fmt: skip
            data += pipe.encode_packet(packet)
    proc = publisher_process()
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(data)  # the settings and every packet in one write
    proc.stdin.flush()
    reports = [json.loads(proc.stdout.readline()) for _ in range(3)]  # the first stats: 1 s
    out, err = proc.communicate(pipe.frame(pipe.QUIT), timeout=WAIT_S)
    kinds = [r["kind"] for r in reports] + [json.loads(line)["kind"] for line in out.splitlines()]
    assert proc.returncode == 0 and kinds[:3] == ["connecting", "connected", "stats"], err
    # two GOPs were waiting when it connected: it starts at the newer one (the live edge)
    assert reports[2]["frames_sent"] == 10 and kinds[-1] == "closed"
    assert len(frames_of(nginx.wait_for_recording(KEY, timeout_s=WAIT_S))) == 10


def test_a_publisher_whose_pipe_is_out_of_step_ends(nginx: Nginx) -> None:
    settings = pipe.PublisherSettings("rtmp-1", nginx.rtmp_url, KEY, None, 5.0, 5.0, 1.0, 1.0)
    proc = publisher_process()
    garbage = pipe.FRAME_HEAD.pack(pipe.PACKET, 1 << 30)
    out, err = proc.communicate(settings.encode() + garbage, timeout=WAIT_S)
    assert proc.returncode == 0 and b"not from the agent" in err
    assert KEY.encode() not in out + err
