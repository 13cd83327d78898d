"""RTMP on the wire, as plain functions over bytes: AMF0, chunks, the handshake, FLV video tags.

Only what a publisher needs (Adobe RTMP 1.0 specification, 2012; FLV/F4V specification 10.1
for the video tag body; ISO/IEC 14496-15 for the AVC decoder configuration record). No I/O
here: agent/uplink/rtmp_client.py drives a connection with these, the tests and the latency
bench parse what a publisher sent with the same `ChunkReader`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

HANDSHAKE_SIZE = 1536  # C1/S1/C2/S2
RTMP_VERSION = 3
DEFAULT_CHUNK_SIZE = 128  # until a Set Chunk Size says otherwise (spec 5.4.1)
SEND_CHUNK_SIZE = 4096  # what we announce: FFmpeg and OBS use 4096 too
MAX_CHUNK_SIZE = 0x7FFFFFFF
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # a server message bigger than this is a broken stream
EXTENDED_TIMESTAMP = 0xFFFFFF  # in the 3-byte field: the real value follows in 4 bytes

# chunk stream ids (any in 3..63 would do; these are the ones FFmpeg uses)
CSID_PROTOCOL = 2  # protocol control and user control messages
CSID_COMMAND = 3  # AMF0 commands on stream 0
CSID_STREAM_COMMAND = 8  # publish, FCUnpublish... on the published stream
CSID_DATA = 4  # @setDataFrame
CSID_VIDEO = 6

# message type ids (spec 5.4, 6.2, 7.1)
SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
VIDEO = 9
DATA_AMF3 = 15
COMMAND_AMF3 = 17
DATA_AMF0 = 18
COMMAND_AMF0 = 20

PING_REQUEST = 6  # user control event types
PING_RESPONSE = 7

# H.264 NAL unit types (ITU-T H.264 table 7-1) the FLV tag treats apart
NAL_SPS, NAL_PPS, NAL_AUD = 7, 8, 9
FLV_KEYFRAME_AVC = 0x17  # frame type 1 (key) << 4 | codec id 7 (AVC)
FLV_INTER_AVC = 0x27
AVC_SEQUENCE_HEADER, AVC_NALU = 0, 1
FLV_CODEC_AVC = 7
# profiles whose decoder configuration record carries the chroma/bit-depth fields
# (ISO/IEC 14496-15 5.3.3.1.2)
HIGH_PROFILES = {100, 110, 122, 144}


class WireError(ValueError):
    """Bytes that are not valid RTMP / AMF0."""


# -- AMF0 -------------------------------------------------------------------------------------


class AmfNull:
    """AMF0 null, apart from Python's None (which encodes as null too, but decodes to this so a
    missing value and a null one stay apart in a command's arguments)."""

    def __repr__(self) -> str:
        return "null"


NULL = AmfNull()


@dataclass(frozen=True)
class EcmaArray:
    """AMF0 ECMA array (onMetaData's body)."""

    items: dict[str, Any] = field(default_factory=dict)


def amf_encode(*values: Any) -> bytes:
    return b"".join(_amf_value(v) for v in values)


def _amf_string(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        return b"\x0c" + struct.pack(">I", len(raw)) + raw
    return b"\x02" + struct.pack(">H", len(raw)) + raw


def _amf_pairs(items: dict[str, Any]) -> bytes:
    out = b""
    for key, value in items.items():
        raw = key.encode()
        out += struct.pack(">H", len(raw)) + raw + _amf_value(value)
    return out + b"\x00\x00\x09"


def _amf_value(value: Any) -> bytes:
    if value is None or isinstance(value, AmfNull):
        return b"\x05"
    if isinstance(value, bool):
        return b"\x01" + (b"\x01" if value else b"\x00")
    if isinstance(value, int | float):
        return b"\x00" + struct.pack(">d", float(value))
    if isinstance(value, str):
        return _amf_string(value)
    if isinstance(value, EcmaArray):
        return b"\x08" + struct.pack(">I", len(value.items)) + _amf_pairs(value.items)
    if isinstance(value, dict):
        return b"\x03" + _amf_pairs(value)
    if isinstance(value, list | tuple):
        return b"\x0a" + struct.pack(">I", len(value)) + b"".join(_amf_value(v) for v in value)
    raise TypeError(f"no AMF0 encoding for {type(value).__name__}")


class _AmfReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise WireError("AMF0 value runs past the end of the message")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def key(self) -> str:
        (length,) = struct.unpack(">H", self.take(2))
        return self.take(length).decode("utf-8", "replace")

    def pairs(self) -> dict[str, Any]:
        items: dict[str, Any] = {}
        while True:
            name = self.key()
            if name == "" and self.data[self.pos : self.pos + 1] == b"\x09":
                self.pos += 1
                return items
            items[name] = self.value()

    def value(self) -> Any:
        marker = self.take(1)[0]
        if marker == 0x00:
            return struct.unpack(">d", self.take(8))[0]
        if marker == 0x01:
            return self.take(1) != b"\x00"
        if marker == 0x02:
            return self.key()
        if marker == 0x03:
            return self.pairs()
        if marker in (0x05, 0x06):  # null, undefined
            return NULL
        if marker == 0x08:
            self.take(4)  # the count is a hint only; the end marker ends it
            return EcmaArray(self.pairs())
        if marker == 0x0A:
            (count,) = struct.unpack(">I", self.take(4))
            return [self.value() for _ in range(count)]
        if marker == 0x0B:  # date: ms since epoch + time zone
            value = struct.unpack(">d", self.take(8))[0]
            self.take(2)
            return value
        if marker == 0x0C:
            (length,) = struct.unpack(">I", self.take(4))
            return self.take(length).decode("utf-8", "replace")
        raise WireError(f"unsupported AMF0 type marker 0x{marker:02x}")


def amf_decode(data: bytes) -> list[Any]:
    """Every AMF0 value in `data`, in order."""
    reader = _AmfReader(data)
    values = []
    while reader.pos < len(data):
        values.append(reader.value())
    return values


# -- chunks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    type_id: int
    stream_id: int
    timestamp: int  # ms
    payload: bytes


def encode_message(
    csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes, chunk_size: int
) -> bytes:
    """One message as chunks: a type-0 chunk, then type-3 continuations (spec 5.3.1)."""
    if not 2 <= csid <= 63:
        raise ValueError(f"chunk stream id {csid} needs a one-byte basic header (2..63)")
    if len(payload) > 0xFFFFFF:
        raise ValueError(f"an RTMP message holds at most 16 MiB ({len(payload)} bytes)")
    timestamp &= 0xFFFFFFFF  # RTMP timestamps wrap after ~49.7 days (spec 5.3.1.3)
    extended = timestamp >= EXTENDED_TIMESTAMP
    field_ts = EXTENDED_TIMESTAMP if extended else timestamp
    extra = struct.pack(">I", timestamp) if extended else b""
    head = bytes([csid]) + field_ts.to_bytes(3, "big") + len(payload).to_bytes(3, "big")
    head += bytes([type_id]) + struct.pack("<I", stream_id) + extra
    parts = [head, payload[:chunk_size]]
    continuation = bytes([0xC0 | csid]) + extra
    for start in range(chunk_size, len(payload), chunk_size):
        parts += [continuation, payload[start : start + chunk_size]]
    return b"".join(parts)


def control_message(type_id: int, value: int) -> bytes:
    """Set Chunk Size, Acknowledgement or Window Acknowledgement Size (4-byte body)."""
    return encode_message(CSID_PROTOCOL, type_id, 0, 0, struct.pack(">I", value), 128)


def ping_response(payload: bytes) -> bytes:
    """The answer to a user control Ping Request: the same timestamp back (spec 7.1.7)."""
    body = struct.pack(">H", PING_RESPONSE) + payload[2:6]
    return encode_message(CSID_PROTOCOL, USER_CONTROL, 0, 0, body, 128)


@dataclass
class _ChunkStream:
    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False
    partial: bytearray = field(default_factory=bytearray)


class _NeedMore(Exception):
    pass


class ChunkReader:
    """Reassembles messages from a peer's chunk stream; applies its Set Chunk Size itself."""

    def __init__(self) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.received_bytes = 0
        self._buffer = bytearray()
        self._streams: dict[int, _ChunkStream] = {}

    def feed(self, data: bytes) -> list[Message]:
        self.received_bytes += len(data)
        self._buffer += data
        messages: list[Message] = []
        while True:
            try:
                used, message = self._chunk()
            except _NeedMore:
                return messages
            del self._buffer[:used]
            if message is not None:
                if message.type_id == SET_CHUNK_SIZE and len(message.payload) >= 4:
                    size = struct.unpack(">I", message.payload[:4])[0] & MAX_CHUNK_SIZE
                    if size < 1:
                        raise WireError("the peer set a chunk size of 0")
                    self.chunk_size = size
                messages.append(message)

    def _take(self, pos: int, n: int) -> bytes:
        if pos + n > len(self._buffer):
            raise _NeedMore
        return bytes(self._buffer[pos : pos + n])

    def _chunk(self) -> tuple[int, Message | None]:
        """(bytes used, a finished message or None) for the chunk at the buffer's start."""
        first = self._take(0, 1)[0]
        fmt, csid, pos = first >> 6, first & 0x3F, 1
        if csid == 0:
            csid, pos = 64 + self._take(1, 1)[0], 2
        elif csid == 1:
            low, high = self._take(1, 2)
            csid, pos = 64 + low + 256 * high, 3
        state = self._streams.get(csid)
        if state is None:
            if fmt != 0:
                raise WireError(f"chunk stream {csid} starts without a full header")
            state = self._streams[csid] = _ChunkStream()
        new_message = not state.partial
        if fmt <= 2:
            ts_field = int.from_bytes(self._take(pos, 3), "big")
            pos += 3
        if fmt <= 1:
            length = int.from_bytes(self._take(pos, 3), "big")
            type_id = self._take(pos + 3, 1)[0]
            pos += 4
        if fmt == 0:
            stream_id = struct.unpack("<I", self._take(pos, 4))[0]
            pos += 4
        extended = ts_field == EXTENDED_TIMESTAMP if fmt <= 2 else state.extended
        if extended:
            ext = struct.unpack(">I", self._take(pos, 4))[0]
            pos += 4
            if fmt <= 2:
                ts_field = ext
        body = min(self.chunk_size, (length if fmt <= 1 else state.length) - len(state.partial))
        data = self._take(pos, body)
        # nothing was missing: commit the header to the chunk stream's state
        if fmt <= 1:
            if length > MAX_MESSAGE_BYTES:
                raise WireError(f"a {length}-byte message: not a stream we can read")
            state.length, state.type_id = length, type_id
        if fmt == 0:
            state.stream_id, state.timestamp, state.delta = stream_id, ts_field, 0
        elif fmt <= 2 and new_message:
            state.delta = ts_field
            state.timestamp = (state.timestamp + ts_field) & 0xFFFFFFFF
        elif fmt == 3 and new_message:
            state.timestamp = (state.timestamp + state.delta) & 0xFFFFFFFF
        state.extended = extended
        state.partial += data
        if len(state.partial) < state.length:
            return pos + body, None
        message = Message(state.type_id, state.stream_id, state.timestamp, bytes(state.partial))
        state.partial = bytearray()
        return pos + body, message


# -- handshake --------------------------------------------------------------------------------


def c0_c1(random_bytes: bytes) -> bytes:
    """The client's opening: version 3, then C1 (time 0, zero, 1528 random bytes). The plain
    handshake (spec 5.2), as librtmp and so OBS send it to every platform."""
    if len(random_bytes) != HANDSHAKE_SIZE - 8:
        raise ValueError("C1 needs 1528 random bytes")
    return bytes([RTMP_VERSION]) + bytes(8) + random_bytes


# -- FLV video tag bodies ---------------------------------------------------------------------


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit (start codes 00 00 01 / 00 00 00 01)."""
    units = []
    for part in data.split(b"\x00\x00\x01"):
        unit = part.rstrip(b"\x00")  # a 4-byte start code leaves a zero on the unit before
        if unit:
            units.append(unit)
    return units


def nal_type(unit: bytes) -> int:
    return unit[0] & 0x1F


def parameter_sets(units: list[bytes]) -> tuple[bytes, bytes] | None:
    """(SPS, PPS), the first of each, or None when the access unit lacks one of them."""
    sps = next((u for u in units if nal_type(u) == NAL_SPS), None)
    pps = next((u for u in units if nal_type(u) == NAL_PPS), None)
    return None if sps is None or pps is None or len(sps) < 4 else (sps, pps)


def avc_sequence_header(sps: bytes, pps: bytes) -> bytes:
    """The FLV video tag body announcing the decoder configuration (AVCDecoderConfiguration-
    Record with one SPS and one PPS, 4-byte NAL lengths). The encoder always makes 8-bit 4:2:0
    (agent/encode/encoder.py), which the High-profile fields state."""
    record = bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1])
    record += struct.pack(">H", len(sps)) + sps + b"\x01" + struct.pack(">H", len(pps)) + pps
    if sps[1] in HIGH_PROFILES:
        record += bytes([0xFC | 1, 0xF8 | 0, 0xF8 | 0, 0])  # 4:2:0, 8-bit luma and chroma
    return bytes([FLV_KEYFRAME_AVC, AVC_SEQUENCE_HEADER, 0, 0, 0]) + record


def avc_frame(units: list[bytes], keyframe: bool, composition_ms: int = 0) -> bytes:
    """The FLV video tag body of one access unit: its NAL units with 4-byte lengths. Parameter
    sets and access unit delimiters stay out (the sequence header carries the former)."""
    head = bytes([FLV_KEYFRAME_AVC if keyframe else FLV_INTER_AVC, AVC_NALU])
    head += (composition_ms & 0xFFFFFF).to_bytes(3, "big")
    kept = [u for u in units if nal_type(u) not in (NAL_SPS, NAL_PPS, NAL_AUD)]
    return head + b"".join(struct.pack(">I", len(u)) + u for u in kept)


def video_tag_info(payload: bytes) -> tuple[bool, bool]:
    """(keyframe, sequence header) of an FLV video tag body, for readers of a stream."""
    if len(payload) < 2:
        return False, False
    return payload[0] >> 4 == 1, payload[0] & 0x0F == FLV_CODEC_AVC and payload[1] == 0
