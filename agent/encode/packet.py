"""What the encode loop hands its packet observers: each encoded frame as it leaves the encoder.

Live outputs (RTMP) take the stream from here, not from the spool: no second encode and no
waiting for a segment to close. An observer runs on the encode thread, so it must only copy the
packet into its own bounded queue and return.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.adapt.ladder import Rung


@dataclass(frozen=True)
class EncodedPacket:
    data: bytes  # one H.264 access unit, Annex B (libx264 repeats SPS/PPS before every IDR)
    pts: int  # 1/90000 s; continuous across rung changes, from 0 again after an encoder restart
    dts: int
    keyframe: bool  # an IDR: a stream may start here
    rung: Rung  # the picture (and bitrate) the encoder was opened with
    extradata: bytes  # the codec's global header (SPS/PPS) when it keeps one apart, else b""
    captured_s: float  # monotonic time the picture was captured (the "no camera" card: its tick)


PacketObserver = Callable[[EncodedPacket], None]
