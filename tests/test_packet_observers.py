"""The encode loop hands every encoded packet to its packet observers as it leaves the encoder:
before its segment closes, with its picture's capture time, keyframes where segments start."""

from __future__ import annotations

import threading
import time

from agent.adapt.ladder import Rung
from agent.capture.capture import Capture
from agent.capture.config import CaptureConfig
from agent.capture.sources import open_source
from agent.core.events import RecordingSink
from agent.encode.config import EncodeConfig
from agent.encode.loop import EncodeLoop
from agent.encode.packet import EncodedPacket
from agent.encode.segmenter import EncodedSegment
from tests.peers.config import SMALL_CAPTURE, SMALL_RUNG, STATION

WAIT_S = 30.0


def test_packets_reach_observers_before_their_segment_closes() -> None:
    sink = RecordingSink()
    capture_cfg = CaptureConfig(**SMALL_CAPTURE)
    capture = Capture(
        capture_cfg,
        sink,
        source_factory=lambda: open_source(
            capture_cfg.source, capture_cfg.width, capture_cfg.height, capture_cfg.fps
        ),
    )
    rung = Rung(**SMALL_RUNG)
    packets: list[tuple[float, EncodedPacket]] = []
    segments: list[tuple[float, EncodedSegment]] = []
    two_segments = threading.Event()

    def on_segment(segment: EncodedSegment) -> None:
        segments.append((time.monotonic(), segment))
        if len(segments) >= 2:
            two_segments.set()

    def broken_observer(_packet: EncodedPacket) -> None:
        raise RuntimeError("an output's bug")

    loop = EncodeLoop(
        STATION,
        EncodeConfig(segment_s=1.0, preset="ultrafast"),
        capture,
        rung,
        on_segment=on_segment,
        sink=sink,
        stale_after_s=capture_cfg.stall_timeout_s,
        choose_rung=lambda _figures: rung,
        packet_observers=[broken_observer, lambda p: packets.append((time.monotonic(), p))],
    )
    capture.start()
    loop.start()
    try:
        assert two_segments.wait(WAIT_S)
    finally:
        loop.stop()
        capture.stop()
    closed_s, first = segments[0]
    in_first = [(seen_s, p) for seen_s, p in packets if p.pts < segments[1][1].start_pts]
    assert len(in_first) == first.frames  # every frame of the segment, none twice
    assert in_first[0][1].keyframe and in_first[0][1].pts == first.start_pts
    assert not any(p.keyframe for _, p in in_first[1:])
    assert all(seen_s < closed_s for seen_s, _ in in_first)  # not held until the segment closed
    assert all(p.captured_s <= seen_s for seen_s, p in packets)  # capture time, not later
    assert all(p.rung == rung and p.data.startswith(b"\x00\x00") for _, p in packets)
    assert loop.observer_errors >= len(packets)  # the broken observer failed alone
    assert not [e for e in sink.events if e.kind == "encoder_failed"]
