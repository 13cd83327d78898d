"""What the agent and its RTMP publisher process say to each other.

Agent -> publisher (the child's stdin), binary frames `kind (1 byte) | length (u32 LE) | body`:
    C  settings, JSON (url, the stream key, timeouts...): first, and again after SIGHUP
    P  one encoded packet: PACKET_HEAD, the extradata, then the Annex B data
    W  wake: retry a connection now instead of waiting out the backoff
    Q  quit: end the publish politely and exit

Publisher -> agent (the child's stdout), one JSON object per line with a "kind":
    connecting, connected, failed {reason}, disconnected {reason}, restart {reason},
    stats {sent_bytes, frames_sent, lag_s, dropped_frames, dropped_gops}, closed

The stream key travels only here (never argv, never the environment, so never in
/proc/*/cmdline or /proc/*/environ), and every reason text is redacted before it leaves.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.adapt.ladder import Rung
from agent.encode.packet import EncodedPacket

FRAME_HEAD = struct.Struct("<cI")
# pts, dts, captured_s, width, height, fps, bitrate_bps, keyframe, extradata length
PACKET_HEAD = struct.Struct("<qqdHHHIBI")
MAX_FRAME_BYTES = 16 * 1024 * 1024  # an access unit is a few hundred KB at most

SETTINGS, PACKET, WAKE, QUIT = b"C", b"P", b"W", b"Q"


@dataclass(frozen=True)
class PublisherSettings:
    """Everything the publisher process needs, the key included (hence never logged)."""

    name: str
    url: str
    key: str
    ca_file: str | None
    connect_timeout_s: float
    stall_timeout_s: float
    backoff_max_s: float
    max_lag_s: float

    def encode(self) -> bytes:
        return frame(SETTINGS, json.dumps(asdict(self)).encode())

    @classmethod
    def decode(cls, body: bytes) -> PublisherSettings:
        return cls(**json.loads(body))

    @property
    def ca_path(self) -> Path | None:
        return Path(self.ca_file) if self.ca_file else None


def frame(kind: bytes, body: bytes = b"") -> bytes:
    return FRAME_HEAD.pack(kind, len(body)) + body


def take_frames(buffer: bytearray) -> list[tuple[bytes, bytes]]:
    """The complete frames at the start of `buffer` as (kind, body), removed from it; a
    partial frame stays for the next read. ValueError on a frame no agent sends."""
    frames, pos = [], 0
    while len(buffer) - pos >= FRAME_HEAD.size:
        kind, length = FRAME_HEAD.unpack_from(buffer, pos)
        if length > MAX_FRAME_BYTES:
            raise ValueError(f"a {length}-byte frame on the pipe: not from the agent")
        end = pos + FRAME_HEAD.size + length
        if end > len(buffer):
            break
        frames.append((kind, bytes(buffer[pos + FRAME_HEAD.size : end])))
        pos = end
    del buffer[:pos]
    return frames


def encode_packet(packet: EncodedPacket) -> bytes:
    rung = packet.rung
    head = PACKET_HEAD.pack(
        packet.pts, packet.dts, packet.captured_s, rung.width, rung.height, rung.fps,
        rung.bitrate_bps, packet.keyframe, len(packet.extradata),
    )  # fmt: skip
    return frame(PACKET, head + packet.extradata + packet.data)


def decode_packet(body: bytes) -> EncodedPacket:
    pts, dts, captured_s, width, height, fps, bitrate_bps, keyframe, extra_len = (
        PACKET_HEAD.unpack_from(body)
    )
    start = PACKET_HEAD.size
    return EncodedPacket(
        data=body[start + extra_len :],
        pts=pts,
        dts=dts,
        keyframe=bool(keyframe),
        rung=Rung(width, height, fps, bitrate_bps),
        extradata=body[start : start + extra_len],
        captured_s=captured_s,
    )


def report_line(kind: str, **fields: Any) -> bytes:
    return (json.dumps({"kind": kind} | fields) + "\n").encode()


def parse_report(line: bytes) -> dict[str, Any] | None:
    """A publisher's line, or None when it is not one of ours (a stray print)."""
    try:
        report = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("kind"), str) else None
