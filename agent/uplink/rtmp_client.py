"""An RTMP(S) publisher on asyncio: connect, publish one stream, send H.264 video tags.

Why not PyAV's (FFmpeg's) RTMP output: PyAV opens it with `avio_open` without options, so
there is no way to give it a connect or read timeout (a server that accepts the connection and
never answers holds it, with the GIL, for good), nor to make rtmps:// check the server's
certificate (FFmpeg's `tls_verify` is off by default: an untrusted certificate is accepted
silently, tried on this machine). Here every step has a deadline, rtmps:// verifies the
certificate and host name like the HTTP uploads, and a refusal carries the server's own words.

    publisher = await RtmpPublisher.open(RtmpTarget.parse(url), key, timeout_s=10)
    await publisher.send_video(timestamp_ms, avc_sequence_header(sps, pps))
    await publisher.send_video(timestamp_ms, avc_frame(units, keyframe=True))
    await publisher.close()

Every failure is an `RtmpError` whose text says what happened in plain words; it never holds
the stream key (the caller redacts it anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from agent.uplink import rtmp_wire as wire

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443}
FLASH_VERSION = "FMLE/3.0 (compatible; station-agent)"  # what encoders announce (OBS: FMLE/3.0)
# Bytes our side queues before a send waits: with the kernel's send buffer below, the most video
# that can sit between the encoder and the network (~0.4 s at 2.5 Mbit/s), so a slow link shows
# up as waiting sends (and dropped GOPs upstream), not as a growing delay.
WRITE_BUFFER_BYTES = 64 * 1024
SEND_BUFFER_BYTES = 64 * 1024  # SO_SNDBUF; Linux doubles it
READ_BYTES = 64 * 1024
CLOSE_TIMEOUT_S = 2.0
PUBLISH_START = "NetStream.Publish.Start"
SERVER_CLOSED = "the server closed the connection"

T = TypeVar("T")


class RtmpError(Exception):
    """A connection or a publish that failed; the text is the reason in plain words."""


@dataclass(frozen=True)
class RtmpTarget:
    """Where to publish: `rtmp[s]://host[:port]/app[/instance]`; the stream key is apart."""

    url: str
    host: str
    port: int
    tls: bool
    app: str

    @classmethod
    def parse(cls, url: str) -> RtmpTarget:
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{url!r} is not an rtmp:// or rtmps:// URL with a host")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("the RTMP url holds no user, password or query: those go in key_file")
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        return cls(url.rstrip("/"), parts.hostname, port, parts.scheme == "rtmps",
                   parts.path.strip("/"))  # fmt: skip

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificate and host name checked, against `ca_file` or the system's CAs."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


class RtmpPublisher:
    """One connection publishing one stream. Build it with `open`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        target: RtmpTarget,
        key: str,
        stall_timeout_s: float,
    ) -> None:
        self.target = target
        self._reader, self._writer = reader, writer
        self._key = key
        self._stall_timeout_s = stall_timeout_s
        self._chunks = wire.ChunkReader()
        self._ack_window = 0
        self._acked = 0
        self._replies: dict[int, asyncio.Future[list[Any]]] = {}
        self._status: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._failure: str | None = None
        self._failed = asyncio.Event()
        self._stream_id = 0
        self._publishing = False
        self._read_task: asyncio.Task[None] | None = None
        self.sent_bytes = 0
        self.on_failure: Callable[[], None] | None = None  # called once the connection failed

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        target: RtmpTarget,
        key: str,
        timeout_s: float,
        stall_timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RtmpPublisher:
        """Connect, handshake, connect to the app and publish `key`, all within `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + timeout_s
        step = ["connecting"]

        async def within(awaitable: Awaitable[T], what: str) -> T:
            step[0] = what
            remaining_s = max(0.0, deadline_s - loop.time())
            return await asyncio.wait_for(awaitable, remaining_s)

        publisher: RtmpPublisher | None = None
        try:
            context = (ssl_context or tls_context(None)) if target.tls else None
            reader, writer = await within(
                asyncio.open_connection(
                    target.host, target.port, ssl=context,
                    server_hostname=target.host if context else None, limit=READ_BYTES,
                ),
                "connecting",
            )  # fmt: skip
            publisher = cls(reader, writer, target, key, stall_timeout_s)
            await within(publisher._handshake(), "the RTMP handshake")
            publisher._read_task = asyncio.create_task(publisher._read_loop())
            await within(publisher._connect_app(), f"connecting to the application '{target.app}'")
            await within(publisher._publish(), "publishing the stream")
        except TimeoutError:
            await _discard(publisher)
            timeout_text = f"{timeout_s:g}"
            raise RtmpError(
                f"no answer from {target.where} within {timeout_text} s ({step[0]})"
            ) from None
        except RtmpError:
            await _discard(publisher)
            raise
        except (OSError, EOFError, asyncio.IncompleteReadError, wire.WireError) as exc:
            await _discard(publisher)
            raise RtmpError(_describe_os_error(exc, target, step[0])) from None
        return publisher

    async def _handshake(self) -> None:
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
        self._writer.write(wire.c0_c1(os.urandom(wire.HANDSHAKE_SIZE - 8)))
        s0_s1 = await self._reader.readexactly(1 + wire.HANDSHAKE_SIZE)
        if s0_s1[0] != wire.RTMP_VERSION:
            raise RtmpError(
                f"{self.target.where} does not speak RTMP (version byte {s0_s1[0]}): "
                "check the port (and rtmp:// against rtmps://)"
            )
        self._writer.write(s0_s1[1:])  # C2: S1 echoed
        await self._reader.readexactly(wire.HANDSHAKE_SIZE)  # S2
        self._writer.write(wire.control_message(wire.SET_CHUNK_SIZE, wire.SEND_CHUNK_SIZE))

    async def _connect_app(self) -> None:
        command = {
            "app": self.target.app,
            "type": "nonprivate",
            "flashVer": FLASH_VERSION,
            "tcUrl": self.target.url,
        }
        reply = await self._call(wire.CSID_COMMAND, 0, "connect", 1, command)
        if reply[0] == "_error":
            raise RtmpError(
                f"the server refused the connection to the application '{self.target.app}': "
                f"{_said(reply)}"
            )

    async def _publish(self) -> None:
        self._send_command(wire.CSID_COMMAND, 0, "releaseStream", 2, None, self._key)
        self._send_command(wire.CSID_COMMAND, 0, "FCPublish", 3, None, self._key)
        reply = await self._call(wire.CSID_COMMAND, 0, "createStream", 4, None)
        if reply[0] == "_error" or len(reply) < 4 or not isinstance(reply[3], float):
            raise RtmpError(f"the server refused to create a stream: {_said(reply)}")
        self._stream_id = int(reply[3])
        self._send_command(
            wire.CSID_STREAM_COMMAND, self._stream_id, "publish", 0, None, self._key, "live"
        )
        while True:
            status = await self._next_status()
            code = str(status.get("code", ""))
            if code == PUBLISH_START:
                self._publishing = True
                return
            if status.get("level") == "error":
                raise RtmpError(f"the server refused to publish the stream: {_status_text(status)}")

    async def _next_status(self) -> dict[str, Any]:
        hint = "the stream key is refused, or publishing there is not allowed"
        status = asyncio.ensure_future(self._status.get())
        return await self._unless_failed(status, "in answer to the publish request", hint)

    async def _call(self, csid: int, stream_id: int, name: str, txn: int, *args: Any) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._replies[txn] = future
        self._send_command(csid, stream_id, name, txn, *args)
        hint = f"is the application '{self.target.app}' in the url right?" if txn == 1 else ""
        try:
            return await self._unless_failed(future, f"in answer to '{name}'", hint)
        finally:
            self._replies.pop(txn, None)

    async def _unless_failed(self, future: asyncio.Future[T], when: str, hint: str) -> T:
        """The future's result, or RtmpError when the connection fails first."""
        failed: asyncio.Future[Any] = asyncio.ensure_future(self._failed.wait())
        waiters: set[asyncio.Future[Any]] = {future, failed}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
        if future.done() and not future.cancelled():
            return future.result()
        future.cancel()
        reason = self._failure or "connection lost"
        if reason == SERVER_CLOSED:  # nothing said: say when, and what it usually means
            reason = f"{reason} {when}" + (f" ({hint})" if hint else "")
        raise RtmpError(reason)

    def _send_command(self, csid: int, stream_id: int, name: str, txn: int, *args: Any) -> None:
        payload = wire.amf_encode(name, txn, *args)
        data = wire.encode_message(
            csid, wire.COMMAND_AMF0, stream_id, 0, payload, wire.SEND_CHUNK_SIZE
        )
        self._writer.write(data)

    # -- the server's messages ----------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(READ_BYTES)
                if not data:
                    self._fail(SERVER_CLOSED)
                    return
                for message in self._chunks.feed(data):
                    self._handle(message)
                self._acknowledge()
        except (OSError, wire.WireError) as exc:
            self._fail(f"connection lost: {_os_reason(exc)}")

    def _handle(self, message: wire.Message) -> None:
        if message.type_id == wire.WINDOW_ACK_SIZE and len(message.payload) >= 4:
            self._ack_window = struct.unpack(">I", message.payload[:4])[0]
        elif message.type_id == wire.USER_CONTROL and len(message.payload) >= 6:
            if struct.unpack(">H", message.payload[:2])[0] == wire.PING_REQUEST:
                self._writer.write(wire.ping_response(message.payload))
        elif message.type_id in (wire.COMMAND_AMF0, wire.COMMAND_AMF3):
            payload = (
                message.payload[1:] if message.type_id == wire.COMMAND_AMF3 else message.payload
            )
            self._command(wire.amf_decode(payload))

    def _command(self, values: list[Any]) -> None:
        if len(values) < 2 or not isinstance(values[0], str):
            return
        name, txn = values[0], values[1]
        if name in ("_result", "_error") and isinstance(txn, float):
            future = self._replies.get(int(txn))
            if future is not None and not future.done():
                future.set_result(values)
            elif name == "_error":
                log.info("RTMP server error answer: %s", _said(values))
        elif name == "onStatus":
            status = next((v for v in values[2:] if isinstance(v, dict)), {})
            if self._publishing and status.get("level") == "error":
                self._fail(f"the server stopped the stream: {_status_text(status)}")
            else:
                self._status.put_nowait(status)
        elif name == "close":
            self._fail("the server closed the stream")

    def _acknowledge(self) -> None:
        received = self._chunks.received_bytes
        if self._ack_window and received - self._acked >= self._ack_window:
            self._acked = received
            self._writer.write(wire.control_message(wire.ACKNOWLEDGEMENT, received & 0xFFFFFFFF))

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
        self._failed.set()
        if self.on_failure is not None:
            self.on_failure()

    # -- publishing ---------------------------------------------------------------------------

    @property
    def failure(self) -> str | None:
        """Why the connection ended, once it has (the server closed it, an error status...)."""
        return self._failure

    def write_metadata(self, width: int, height: int, fps: int, bitrate_bps: int) -> bool:
        """@setDataFrame onMetaData; see write_video for the return value."""
        body = wire.amf_encode(
            "@setDataFrame",
            "onMetaData",
            wire.EcmaArray({
                "width": width, "height": height, "framerate": fps,
                "videocodecid": wire.FLV_CODEC_AVC, "videodatarate": bitrate_bps / 1000,
                "encoder": "station-agent",
            }),
        )  # fmt: skip
        return self._write(wire.CSID_DATA, wire.DATA_AMF0, 0, body)

    def write_video(self, timestamp_ms: int, body: bytes) -> bool:
        """Queue one FLV video tag body for sending, at once. True when more than
        WRITE_BUFFER_BYTES now wait to go out: `await drained()` before writing more."""
        return self._write(wire.CSID_VIDEO, wire.VIDEO, timestamp_ms, body)

    async def drained(self) -> None:
        """Until the connection took the queued bytes; RtmpError after the stall timeout."""
        try:
            await asyncio.wait_for(self._writer.drain(), self._stall_timeout_s)
        except TimeoutError:
            self._fail(f"the server took no data for {self._stall_timeout_s:g} s")
            raise RtmpError(self._failure or "stalled") from None
        except OSError as exc:
            self._fail(f"connection lost: {_os_reason(exc)}")
            raise RtmpError(self._failure or "connection lost") from None

    async def send_metadata(self, width: int, height: int, fps: int, bitrate_bps: int) -> None:
        if self.write_metadata(width, height, fps, bitrate_bps):
            await self.drained()

    async def send_video(self, timestamp_ms: int, body: bytes) -> None:
        """write_video, waiting for the connection when its buffer is full."""
        if self.write_video(timestamp_ms, body):
            await self.drained()

    def _write(self, csid: int, type_id: int, timestamp_ms: int, body: bytes) -> bool:
        if self._failure is not None:
            raise RtmpError(self._failure)
        data = wire.encode_message(
            csid, type_id, self._stream_id, timestamp_ms, body, wire.SEND_CHUNK_SIZE
        )
        try:
            self._writer.write(data)
        except OSError as exc:
            self._fail(f"connection lost: {_os_reason(exc)}")
            raise RtmpError(self._failure or "connection lost") from None
        self.sent_bytes += len(data)
        return self._writer.transport.get_write_buffer_size() > WRITE_BUFFER_BYTES

    async def close(self) -> None:
        """End the publish politely (the server closes its recording), then the connection."""
        if self._failure is None and self._publishing:
            self._send_command(
                wire.CSID_STREAM_COMMAND, self._stream_id, "FCUnpublish", 5, None, self._key
            )
            self._send_command(
                wire.CSID_STREAM_COMMAND, self._stream_id, "deleteStream", 6, None,
                float(self._stream_id),
            )  # fmt: skip
        self._publishing = False
        await self.abort()

    async def abort(self) -> None:
        """Close the connection without a word (after a failure)."""
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(self._writer.wait_closed(), CLOSE_TIMEOUT_S)


async def _discard(publisher: RtmpPublisher | None) -> None:
    if publisher is not None:
        await publisher.abort()


def _said(reply: list[Any]) -> str:
    info = next((v for v in reply[2:] if isinstance(v, dict)), None)
    if info is None:
        return "no reason given"
    return _status_text(info)


def _status_text(status: dict[str, Any]) -> str:
    """'description (code)', the server's words, or what there is of them."""
    description = str(status.get("description") or "").strip()
    code = str(status.get("code") or "").strip()
    if description and code:
        return f"{description} ({code})"
    return description or code or "no reason given"


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _describe_os_error(exc: BaseException, target: RtmpTarget, step: str) -> str:
    where = target.where
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the TLS certificate of {where} is not trusted ({exc.verify_message}): check the "
            "url's host name, ca_file and the box's clock"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS with {where} failed ({exc.reason or exc}): is it really rtmps:// there?"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name {target.host!r} ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}: no RTMP server listens there (is the port right?)"
    if isinstance(exc, asyncio.IncompleteReadError | EOFError):
        return f"the server closed the connection during {step}"
    if isinstance(exc, wire.WireError):
        return f"the server sent something that is not RTMP during {step}: {exc}"
    return f"{step} with {where} failed: {_os_reason(exc)}"
