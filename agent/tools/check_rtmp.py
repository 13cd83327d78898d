"""The `rtmp` items of `station-agent check`: publish one second to each live output.

One line per enabled `[[uplink.rtmp]]` (none without any): connect with the station's stream
key, publish one second of a test card (the station id and clock burnt in, at the ladder's
lowest rung) in real time, end the publish. PASS when the server took it; FAIL with the
server's reason and the fix otherwise. Viewers watching that stream at that moment see the card
for a second.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import cv2
import numpy as np

from agent.adapt.ladder import Rung, build_ladder
from agent.core.config import Secrets
from agent.encode.encoder import PTS_HZ, VideoEncoder
from agent.encode.overlay import Overlay
from agent.service.config import AgentConfig
from agent.tools.check import CheckResult
from agent.uplink import rtmp_wire as wire
from agent.uplink.config import RtmpOutputConfig
from agent.uplink.rtmp_client import RtmpError, RtmpPublisher, RtmpTarget, tls_context

PUBLISH_S = 1.0  # what the issue asks: one second on the air
SETTLE_S = 0.5  # after the last frame: a server that refuses late says so by then
# check's time limit per output: connect_timeout_s (<= 120) is the bound that matters; this
# covers the default 10 s, the second of video and the close
RTMP_LIMIT_S = 30.0
Frame = tuple[int, bytes, bool]  # pts, Annex B access unit, keyframe


def check_rtmp(cfg: AgentConfig, secrets: Secrets, name: str) -> CheckResult:
    """Publish one second to the output `name` ("rtmp-1")."""
    rtmp = dict(cfg.uplink.rtmp_outputs())[name]
    rung = build_ladder(cfg.adapt, cfg.capture.width, cfg.capture.height, cfg.capture.fps)[0]
    key = secrets.rtmp_keys[name].get_secret_value()
    data = {"output": name}
    try:
        asyncio.run(publish_briefly(rtmp, key, rung, test_card(cfg.station_id, rung)))
    except RtmpError as exc:
        detail = f"{name} {rtmp.url}: {exc}"
        return CheckResult("rtmp", "FAIL", detail, explain(str(exc), rtmp), data)
    detail = f"{name} {rtmp.url}: published {PUBLISH_S:g} s ({rung.label}); the key works"
    return CheckResult("rtmp", "PASS", detail, data=data)


def test_card(station_id: str, rung: Rung) -> list[Frame]:
    """One second of a grey card reading CHECK, with the station overlay, as H.264."""
    count = max(1, round(PUBLISH_S * rung.fps))
    encoder = VideoEncoder("libx264", rung, "ultrafast", 1, count)
    overlay = Overlay(station_id)
    card = np.full((rung.height, rung.width, 3), 96, np.uint8)
    scale = max(0.4, rung.height / 360)
    cv2.putText(card, "station-agent check", (rung.width // 10, rung.height // 2),
                cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    frames: list[Frame] = []
    for i in range(count):
        i420 = cv2.cvtColor(card, cv2.COLOR_BGR2YUV_I420)
        overlay.draw(i420, rung.width, rung.height, datetime.now().astimezone())
        pts = round(i * PTS_HZ / rung.fps)
        frames += [(p.pts or 0, bytes(p), p.is_keyframe) for p in encoder.encode(i420, pts, i == 0)]
    frames += [(p.pts or 0, bytes(p), p.is_keyframe) for p in encoder.flush()]
    return frames


async def publish_briefly(
    rtmp: RtmpOutputConfig, key: str, rung: Rung, frames: list[Frame]
) -> None:
    target = RtmpTarget.parse(rtmp.url)
    context = tls_context(rtmp.ca_file) if target.tls else None
    publisher = await RtmpPublisher.open(
        target, key, rtmp.connect_timeout_s, rtmp.stall_timeout_s, ssl_context=context
    )
    try:
        await publisher.send_metadata(rung.width, rung.height, rung.fps, rung.bitrate_bps)
        units = wire.split_annexb(frames[0][1])
        sets = wire.parameter_sets(units)
        if sets is None:
            raise RtmpError("the test card has no SPS/PPS (an encoder problem, not the server)")
        await publisher.send_video(0, wire.avc_sequence_header(*sets))
        for pts, data, keyframe in frames:
            body = wire.avc_frame(wire.split_annexb(data), keyframe)
            await publisher.send_video(pts * 1000 // PTS_HZ, body)
            await asyncio.sleep(1 / rung.fps)  # in real time, as the agent streams
        await asyncio.sleep(SETTLE_S)
        if publisher.failure is not None:
            raise RtmpError(publisher.failure)
    finally:
        await publisher.close()


def explain(reason: str, rtmp: RtmpOutputConfig) -> str:
    """The fix for a failed publish, from what happened."""
    if "publish request" in reason or "refused to publish" in reason:
        return (
            f"The server refuses this stream key: put this station's stream key (one line) in "
            f"{rtmp.key_file} (a running service takes it on `sudo systemctl reload "
            "station-agent`); ask central staff or the platform for it, and check that the "
            "stream there is set up to receive."
        )
    if "application" in reason or "in answer to 'connect'" in reason:
        return f"Check the application part of [[uplink.rtmp]] url ({rtmp.url})."
    if "certificate" in reason or "TLS" in reason:
        return "Check the url's host name, [[uplink.rtmp]] ca_file and the box's clock."
    if "resolve" in reason:
        return "Check the network (DNS) and the host name in [[uplink.rtmp]] url."
    return (
        f"Check the network and [[uplink.rtmp]] url ({rtmp.url}); the firewall must let the "
        "box out to that port (1935 for rtmp://, 443 for rtmps://)."
    )
