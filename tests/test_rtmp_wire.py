"""RTMP pieces without a network: AMF0, chunks, FLV video tags, the live queue, stream times."""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from agent.adapt.ladder import Rung
from agent.core.events import RecordingSink
from agent.encode.encoder import VideoEncoder
from agent.encode.packet import EncodedPacket
from agent.uplink import rtmp_pipe as pipe
from agent.uplink import rtmp_wire as wire
from agent.uplink.config import RtmpOutputConfig
from agent.uplink.live import Drops, LiveQueue
from agent.uplink.rtmp import RtmpOutput
from agent.uplink.rtmp_child import StreamClock
from agent.uplink.rtmp_client import RtmpTarget

RUNG = Rung(160, 120, 10, 200_000)

# -- AMF0 ---------------------------------------------------------------------------------------

amf_scalars = (
    st.floats(allow_nan=False)
    | st.booleans()
    | st.text(max_size=40)
    | st.just(wire.NULL)
    | st.integers(-(2**53), 2**53).map(float)
)
amf_values = st.recursive(
    amf_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(min_size=1, max_size=10), inner, max_size=5)
        | st.dictionaries(st.text(min_size=1, max_size=10), inner, max_size=5).map(wire.EcmaArray)
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, wire.EcmaArray) and isinstance(b, wire.EcmaArray):
        return same(a.items, b.items)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) or (a is wire.NULL and b is wire.NULL)


@given(st.lists(amf_values, max_size=6))
def test_amf0_values_come_back_as_they_went(values: list[Any]) -> None:
    decoded = wire.amf_decode(wire.amf_encode(*values))
    assert len(decoded) == len(values)
    assert all(same(a, b) for a, b in zip(values, decoded, strict=True))


def test_a_truncated_amf0_value_is_an_error_not_a_crash() -> None:
    data = wire.amf_encode("onStatus", 0.0, {"code": "NetStream.Publish.Start"})
    for cut in range(1, len(data)):
        try:
            wire.amf_decode(data[:cut])
        except wire.WireError:
            pass


# -- chunks -------------------------------------------------------------------------------------

messages = st.lists(
    st.tuples(
        st.integers(3, 63),  # chunk stream id
        st.sampled_from([wire.VIDEO, wire.COMMAND_AMF0, wire.DATA_AMF0]),
        st.integers(0, 2**32 - 1),  # stream id
        st.integers(0, 2**32 - 1),  # timestamp, extended beyond 0xFFFFFF
        st.binary(max_size=3000),
    ),
    max_size=8,
)


@given(messages, st.integers(1, 5000), st.lists(st.integers(1, 700), max_size=30))
def test_chunked_messages_are_reassembled_whatever_the_reads(
    sent: list[tuple[int, int, int, int, bytes]], chunk_size: int, cuts: list[int]
) -> None:
    data = wire.control_message(wire.SET_CHUNK_SIZE, chunk_size)
    for csid, type_id, stream_id, timestamp, payload in sent:
        data += wire.encode_message(csid, type_id, stream_id, timestamp, payload, chunk_size)
    reader, got, pos = wire.ChunkReader(), [], 0
    for cut in [*cuts, len(data)]:
        got += reader.feed(data[pos : pos + cut])
        pos += cut
    got += reader.feed(data[pos:])
    assert got[0].type_id == wire.SET_CHUNK_SIZE and reader.chunk_size == chunk_size
    assert [(m.type_id, m.stream_id, m.timestamp, m.payload) for m in got[1:]] == [
        message[1:] for message in sent
    ]


def test_compressed_headers_of_a_server_are_read() -> None:
    """Type 1, 2 and 3 headers (deltas), as servers send them, and an extended timestamp."""
    body = b"x" * 200
    data = bytes([0x03]) + (1000).to_bytes(3, "big") + (200).to_bytes(3, "big") + b"\x14"
    data += struct.pack("<I", 1) + body[:128] + bytes([0xC3]) + body[128:]  # fmt 0 + fmt 3
    data += bytes([0x43]) + (40).to_bytes(3, "big") + (3).to_bytes(3, "big") + b"\x14" + b"abc"
    data += bytes([0x83]) + (25).to_bytes(3, "big") + b"def"  # fmt 2: same length and type
    data += bytes([0xC3]) + b"ghi"  # fmt 3 opening a message: the previous delta again
    data += bytes([0x04]) + b"\xff\xff\xff" + (1).to_bytes(3, "big") + b"\x09" + bytes(4)
    data += struct.pack(">I", 0x1234567) + b"v"
    got = wire.ChunkReader().feed(data)
    assert [(m.timestamp, m.payload) for m in got] == [
        (1000, body), (1040, b"abc"), (1065, b"def"), (1090, b"ghi"), (0x1234567, b"v"),
    ]  # fmt: skip


# -- FLV video tags: what nginx records must decode --------------------------------------------


def encoded_packets(count: int, rung: Rung = RUNG) -> list[EncodedPacket]:
    encoder = VideoEncoder("libx264", rung, "ultrafast", 1, rung.fps)
    packets = []
    step = 90_000 // rung.fps
    for i in range(count):
        picture = np.full((rung.height * 3 // 2, rung.width), (i * 7) % 256, np.uint8)
        for packet in encoder.encode(picture, i * step, i % rung.fps == 0):
            pts = packet.pts or 0
            data, key = bytes(packet), packet.is_keyframe
            packets.append(EncodedPacket(data, pts, pts, key, rung, b"", float(i)))
    return packets


def flv_file(tags: list[tuple[int, bytes]]) -> bytes:
    out = b"FLV\x01\x01" + struct.pack(">I", 9) + struct.pack(">I", 0)
    for timestamp, body in tags:
        head = bytes([wire.VIDEO]) + len(body).to_bytes(3, "big")
        head += (timestamp & 0xFFFFFF).to_bytes(3, "big") + bytes([timestamp >> 24]) + bytes(3)
        out += head + body + struct.pack(">I", len(head) + len(body))
    return out


def test_video_tags_make_a_stream_a_decoder_plays() -> None:
    packets = encoded_packets(25)
    units = wire.split_annexb(packets[0].data)
    sets = wire.parameter_sets(units)
    assert sets is not None
    tags = [(0, wire.avc_sequence_header(*sets))]
    for packet in packets:
        body = wire.avc_frame(wire.split_annexb(packet.data), packet.keyframe)
        tags.append((packet.dts // 90, body))
        assert wire.video_tag_info(body) == (packet.keyframe, False)
    assert wire.video_tag_info(tags[0][1]) == (True, True)
    with av.open(io.BytesIO(flv_file(tags)), "r", format="flv") as container:
        frames = list(container.decode(video=0))
    assert len(frames) == len(packets)
    assert (frames[0].width, frames[0].height) == (RUNG.width, RUNG.height)
    shade = [int(f.to_ndarray(format="gray")[60, 80]) for f in frames]
    assert abs(shade[10] - 70) < 12  # the picture came through, not a grey blur


# -- the pipe to the publisher ------------------------------------------------------------------


def test_a_packet_crosses_the_pipe_whole() -> None:
    packet = EncodedPacket(b"\x00\x00\x00\x01\x65abc", 9000, 8000, True, RUNG, b"\x01\x02", 12.5)
    data = pipe.encode_packet(packet)
    kind, length = pipe.FRAME_HEAD.unpack_from(data)
    assert kind == pipe.PACKET and length == len(data) - pipe.FRAME_HEAD.size
    assert pipe.decode_packet(data[pipe.FRAME_HEAD.size :]) == packet


def test_frames_are_taken_whole_whatever_the_reads() -> None:
    packet = EncodedPacket(bytes(5000), 0, 0, True, RUNG, b"", 1.0)
    stream = pipe.frame(pipe.WAKE) + pipe.encode_packet(packet) + pipe.frame(pipe.QUIT)
    buffer, got = bytearray(), []
    for start in range(0, len(stream), 777):
        buffer += stream[start : start + 777]
        got += pipe.take_frames(buffer)
    assert [kind for kind, _ in got] == [pipe.WAKE, pipe.PACKET, pipe.QUIT] and not buffer
    assert pipe.decode_packet(got[1][1]) == packet
    with pytest.raises(ValueError, match="not from the agent"):
        pipe.take_frames(bytearray(pipe.FRAME_HEAD.pack(pipe.PACKET, 1 << 30)))


def test_targets_take_the_app_from_the_url_and_the_default_ports() -> None:
    plain = RtmpTarget.parse("rtmp://h/live")
    assert plain == RtmpTarget("rtmp://h/live", "h", 1935, False, "live")
    target = RtmpTarget.parse("rtmps://a.example.org/live2/")
    assert (target.port, target.tls, target.app, target.url) == (
        443, True, "live2", "rtmps://a.example.org/live2",
    )  # fmt: skip
    with pytest.raises(ValueError, match="key_file"):
        RtmpTarget.parse("rtmp://h/live?key=abc")


# -- the live queue (pure) ----------------------------------------------------------------------


def packet(index: int, gop: int, captured_s: float, size: int = 100) -> EncodedPacket:
    return EncodedPacket(bytes(size), index * 9000, index * 9000, index % gop == 0, RUNG, b"",
                         captured_s)  # fmt: skip


def test_a_consumer_that_keeps_up_gets_every_packet_in_order() -> None:
    queue = LiveQueue(max_lag_s=1.0)
    out = []
    for i in range(50):
        queue.push(packet(i, 10, i * 0.1), i * 0.1 + 0.01)
        out.append(queue.pop(i * 0.1 + 0.02))
    assert [p.pts for p in out if p] == [i * 9000 for i in range(50)]
    assert queue.take_drops() == Drops()


def test_a_slow_consumer_skips_to_the_newest_keyframe_and_drops_whole_gops() -> None:
    queue = LiveQueue(max_lag_s=1.0)
    for i in range(35):  # 3.5 s of 10 fps, gop 10, nothing popped
        queue.push(packet(i, 10, i * 0.1), i * 0.1)
    head = queue.pop(3.45)
    assert head is not None and head.keyframe and head.pts == 30 * 9000
    assert queue.take_drops() == Drops(30, 3)


def test_when_no_keyframe_is_fresh_everything_waits_for_the_next_one() -> None:
    queue = LiveQueue(max_lag_s=1.0)
    for i in range(5):
        queue.push(packet(i, 10, i * 0.1), i * 0.1)
    assert queue.pop(2.0) is None  # the whole group is stale
    for i in range(5, 10):  # the rest of that group is dropped on arrival
        queue.push(packet(i, 10, 2.0), 2.0)
    queue.push(packet(10, 10, 2.1), 2.1)
    head = queue.pop(2.1)
    assert head is not None and head.pts == 10 * 9000 and head.keyframe
    assert queue.take_drops() == Drops(10, 1)


@given(
    st.lists(
        st.tuples(st.floats(0.0, 0.5), st.booleans(), st.integers(1, 5000), st.integers(0, 3)),
        max_size=300,
    ),
    st.integers(2, 12),
)
def test_the_queue_stays_bounded_and_what_leaves_it_always_decodes(
    steps: list[tuple[float, bool, int, int]], gop: int
) -> None:
    """Whatever the timing: never more than max_bytes or older than max_lag_s out, every run of
    popped packets starts at a keyframe and has no hole, and nothing is lost uncounted."""
    queue = LiveQueue(max_lag_s=0.8, max_bytes=20_000)
    now_s, pushed = 0.0, 0
    popped: list[EncodedPacket] = []
    restarts: set[int] = set()
    for i, (wait_s, restart, size, pops) in enumerate(steps):
        now_s += wait_s
        queue.push(packet(i, gop, now_s, size), now_s)
        pushed += 1
        assert queue.bytes <= queue.max_bytes
        if restart:
            queue.restart()
            restarts.add(len(popped))
        for _ in range(pops):
            out = queue.pop(now_s)
            if out is not None:
                assert now_s - out.captured_s <= queue.max_lag_s
                popped.append(out)
    drops = queue.take_drops()
    assert drops.frames + queue.uncounted.frames + len(popped) + len(queue) == pushed
    for k, out in enumerate(popped):
        index = out.pts // 9000
        previous = popped[k - 1].pts // 9000 if k else None
        if previous is None or k in restarts or index != previous + 1:
            assert out.keyframe, f"packet {index} follows {previous}: a hole before a non-key frame"


def test_a_drop_that_began_offline_is_not_counted_even_when_the_link_is_back() -> None:
    queue = LiveQueue(max_lag_s=1.0)
    queue.counting = False  # not connected
    for i in range(3):
        queue.push(packet(i, 10, 0.0), 0.0)
    assert queue.pop(1.5) is None  # too old: dropped, waiting for the next keyframe
    queue.counting = True  # connected again, the rest of that group still goes
    for i in range(3, 10):
        queue.push(packet(i, 10, 1.6), 1.6)
    queue.push(packet(10, 10, 1.7), 1.7)
    assert queue.take_drops() == Drops() and queue.uncounted == Drops(10, 1)
    for i in range(11, 30):  # now a slow consumer: counted, whole groups
        queue.push(packet(i, 10, 1.7 + i * 0.1), 1.7 + i * 0.1)
    assert queue.pop(4.7) is not None
    assert queue.take_drops() == Drops(10, 1)


def test_stream_times_start_at_zero_and_never_go_back() -> None:
    clock = StreamClock()
    assert [clock.ms(dts, 10) for dts in (90_000, 99_000, 108_000)] == [0, 100, 200]
    assert clock.ms(0, 10) == 300  # the encoder restarted: one frame after the last
    assert clock.ms(9000, 10) == 400


def test_a_drop_is_reported_once_whole_and_at_most_every_ten_seconds(tmp_path: Path) -> None:
    now = [100.0]
    sink = RecordingSink()
    cfg = RtmpOutputConfig(url="rtmp://h/live", key_file=tmp_path / "k", allow_insecure=True)
    output = RtmpOutput(cfg, "rtmp-1", SecretStr("k3y-k3y"), sink, clock=lambda: now[0])

    def stats(frames: int, gops: int) -> None:
        report = {"kind": "stats", "sent_bytes": 0, "frames_sent": 0, "lag_s": 0.05,
                  "dropped_frames": frames, "dropped_gops": gops}  # fmt: skip
        output._on_report(report, now[0])
        output._maybe_report_drops(now[0])
        now[0] += 1.0

    output._on_report({"kind": "connected"}, now[0])
    stats(12, 1)  # a group's head...
    stats(18, 0)  # ...and the rest of it, dropped as it arrives
    stats(0, 0)
    stats(0, 0)
    dropped = [e.fields for e in sink.events if e.kind == "rtmp_dropped"]
    assert dropped == [{"output": "rtmp-1", "frames": 30, "gops": 1}]
    stats(5, 1)  # a second episode within 10 s of the first event: waits
    stats(0, 0)
    assert len([e for e in sink.events if e.kind == "rtmp_dropped"]) == 1
    now[0] += 10.0
    stats(0, 0)
    assert [e.fields["frames"] for e in sink.events if e.kind == "rtmp_dropped"] == [30, 5]
    assert output.status(now[0])["dropped_frames"] == 35
