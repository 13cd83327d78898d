"""`python -m agent.uplink.rtmp_child`: the process that publishes one RTMP output.

The agent (agent/uplink/rtmp.py) starts one per `[[uplink.rtmp]]`, writes its settings and the
encoded packets to its stdin and reads its reports from stdout (agent/uplink/rtmp_pipe.py).
Whatever the server does (never answers, stalls, refuses), only this process waits: the
recording never does.

One asyncio loop. Stdin is read the moment it is readable, its packets go into a `LiveQueue`
(so the pipe never fills while the server is slow) and, while the connection takes data
without waiting, straight on to the server (`_pump`: no task switch per frame, the hot path of
the CPU budget). The publish loop connects (jittered backoff between attempts), starts each
publish at the newest fresh keyframe, waits for the connection when its buffer is full (a stall
ends it), restarts the stream at a keyframe whose picture differs (a rung change), and a ticker
reports figures every second (also the agent's sign that this process is alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from agent.core.backoff import full_jitter_s
from agent.core.redact import RedactingFilter, redact_text, url_secrets
from agent.encode.packet import EncodedPacket
from agent.uplink import rtmp_pipe as pipe
from agent.uplink import rtmp_wire as wire
from agent.uplink.live import Drops, LiveQueue
from agent.uplink.rtmp_client import RtmpError, RtmpPublisher, RtmpTarget, tls_context

log = logging.getLogger("agent.uplink.rtmp_child")

RECONNECT_BASE_S = 1.0  # first retry within a second: most outages are blips
STATS_INTERVAL_S = 1.0  # the agent declares this process hung after RtmpOutput's silence limit
PTS_PER_MS = 90
READ_BYTES = 1 << 20


class StreamClock:
    """Packet dts (1/90000 s) -> the stream's timestamps (ms from 0 at the publish's first
    packet), never going back: after an encoder restart (its pts start at 0 again) the
    timestamps continue one frame after the last."""

    def __init__(self) -> None:
        self._origin: int | None = None
        self._last_dts = 0
        self._last_ms = 0

    def ms(self, dts: int, fps: int) -> int:
        if self._origin is None:
            self._origin = dts
        elif dts <= self._last_dts:
            step = max(1, round(1000 / max(fps, 1)))
            self._origin = dts - (self._last_ms + step) * PTS_PER_MS
        self._last_dts = dts
        self._last_ms = max(self._last_ms, (dts - self._origin) // PTS_PER_MS)
        return self._last_ms


def picture(packet: EncodedPacket) -> tuple[int, int, int]:
    return packet.rung.width, packet.rung.height, packet.rung.fps


class Stream:
    """One publish: what the server was told so far, and whether the stream can go on."""

    def __init__(self, publisher: RtmpPublisher) -> None:
        self.publisher = publisher
        self.clock = StreamClock()
        self.shown: tuple[int, int, int] | None = None  # the picture announced
        self.parameter_sets: tuple[bytes, bytes] | None = None
        self.restart: str | None = None  # why it must start over at the queue's head
        self.error: str | None = None
        self.waiting = False  # the connection's buffer is full: wait before writing more

    def send(
        self, packet: EncodedPacket, units: list[bytes], sets: tuple[bytes, bytes] | None
    ) -> None:
        """Write one packet (after the metadata and sequence header it needs)."""
        publisher = self.publisher
        timestamp_ms = self.clock.ms(packet.dts, packet.rung.fps)
        if self.shown is None:
            rung = packet.rung
            publisher.write_metadata(rung.width, rung.height, rung.fps, rung.bitrate_bps)
            self.shown = picture(packet)
        if sets is not None and sets != self.parameter_sets:
            self.parameter_sets = sets
            publisher.write_video(timestamp_ms, wire.avc_sequence_header(*sets))
        composition_ms = max(0, (packet.pts - packet.dts) // PTS_PER_MS)
        body = wire.avc_frame(units, packet.keyframe, composition_ms)
        self.waiting = publisher.write_video(timestamp_ms, body)


class RtmpChild:
    def __init__(
        self,
        settings: pipe.PublisherSettings,
        report: Callable[..., None],
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._report = report
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.queue = LiveQueue(settings.max_lag_s)
        self.queue.counting = False  # on once a stream is on the air (see _pump)
        self._inbox = bytearray()
        self._changed = asyncio.Event()  # for the publish loop: look at the state again
        self._wake = asyncio.Event()  # cuts a backoff short
        self._stopping = False
        self._new_settings = False
        self._stream: Stream | None = None
        self._drops = Drops()
        self._frames_sent = 0
        self._sent_before = 0  # bytes sent on earlier connections
        self._lag_s: float | None = None

    # -- the agent's side ---------------------------------------------------------------------

    def on_input(self, data: bytes) -> None:
        """Bytes from stdin (b"" at its end): packets into the queue and on to the server."""
        if not data:
            self.quit()
            return
        self._inbox += data
        for kind, body in pipe.take_frames(self._inbox):
            if kind == pipe.PACKET:
                self.queue.push(pipe.decode_packet(body), self._clock())
            elif kind == pipe.SETTINGS:
                self.settings = pipe.PublisherSettings.decode(body)
                self._new_settings = True
                self._wake.set()
                self._changed.set()
            elif kind == pipe.WAKE:
                self._wake.set()
            elif kind == pipe.QUIT:
                self.quit()
        self._pump()

    def quit(self) -> None:
        self._stopping = True
        self._wake.set()
        self._changed.set()

    def _note_drops(self) -> None:
        self._drops += self.queue.take_drops()

    def _pump(self) -> None:
        """Send what the queue holds while the stream may go on and the connection takes it
        without waiting; anything else is the publish loop's (it is woken)."""
        stream = self._stream
        while stream is not None and not (stream.waiting or stream.restart or stream.error):
            if self._new_settings:
                break
            now_s = self._clock()
            packet = self.queue.peek(now_s)
            if packet is None:
                break
            units = wire.split_annexb(packet.data)
            sets = None
            if packet.keyframe:
                if stream.shown is not None and picture(packet) != stream.shown:
                    stream.restart = "the picture changed ({}x{} {} fps)".format(*picture(packet))
                    break
                sets = wire.parameter_sets(units) or wire.parameter_sets(
                    wire.split_annexb(packet.extradata)
                )
            self.queue.pop(now_s)  # the packet peeked at: same time, same head
            if stream.shown is None and sets is None:
                log.warning("a keyframe without SPS/PPS; waiting for the next one")
                continue  # a stream cannot start without them
            try:
                stream.send(packet, units, sets)
            except RtmpError as exc:
                stream.error = str(exc)
                break
            self._frames_sent += 1
            self._lag_s = self._clock() - packet.captured_s
            # from its first frame on, what the stream does not carry is a drop
            self.queue.counting = True
        self._note_drops()
        if stream is not None and (stream.waiting or stream.restart or stream.error):
            self._changed.set()

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self) -> None:
        attempt = 0
        while not self._stopping:
            self._new_settings = False
            self._report("connecting")
            try:
                publisher = await self._open()
            except RtmpError as exc:
                self._report("failed", reason=self._redact(str(exc)))
                await self._pause(full_jitter_s(attempt, RECONNECT_BASE_S, self._cap(), self._rng))
                attempt += 1
                continue
            attempt = 0
            self._report("connected")
            try:
                why = await self._run_stream(publisher)
            except RtmpError as exc:
                self._report("disconnected", reason=self._redact(str(exc)))
                await publisher.abort()
                await self._pause(full_jitter_s(0, RECONNECT_BASE_S, self._cap(), self._rng))
                attempt = 1
                continue
            finally:
                self._sent_before += publisher.sent_bytes
            await publisher.close()
            if why != "stopping":
                self._report("restart", reason=why)
        self._report("closed")

    def _cap(self) -> float:
        return self.settings.backoff_max_s

    async def _open(self) -> RtmpPublisher:
        s = self.settings
        target = RtmpTarget.parse(s.url)
        context = tls_context(s.ca_path) if target.tls else None
        return await RtmpPublisher.open(
            target, s.key, s.connect_timeout_s, s.stall_timeout_s, ssl_context=context
        )

    async def _pause(self, delay_s: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay_s)

    async def _run_stream(self, publisher: RtmpPublisher) -> str:
        """Publish until stopped, the picture changes or the settings do (returns which);
        RtmpError when the connection fails or stalls."""
        self.queue.restart()  # start at the newest fresh keyframe
        self.queue.take_drops()
        stream = self._stream = Stream(publisher)
        publisher.on_failure = self._changed.set
        try:
            self._pump()
            while True:
                if self._stopping:
                    self._pump()  # what is queued already, then the polite end
                    return "stopping"
                if publisher.failure is not None or stream.error is not None:
                    raise RtmpError(publisher.failure or stream.error or "connection lost")
                if self._new_settings:
                    return "new settings"
                if stream.restart is not None:
                    return stream.restart
                if stream.waiting:
                    await publisher.drained()
                    stream.waiting = False
                    self._pump()
                    continue
                self._changed.clear()
                await self._changed.wait()
        finally:
            self._stream = None
            self.queue.counting = False

    # -- reports ------------------------------------------------------------------------------

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            self._note_drops()
            drops, self._drops = self._drops, Drops()
            stream = self._stream
            sent_now = stream.publisher.sent_bytes if stream is not None else 0
            self._report(
                "stats",
                sent_bytes=self._sent_before + sent_now,
                frames_sent=self._frames_sent,
                lag_s=None if self._lag_s is None else round(self._lag_s, 3),
                dropped_frames=drops.frames,
                dropped_gops=drops.gops,
            )

    def _redact(self, text: str) -> str:
        return redact_text(text, self.secrets())

    def secrets(self) -> list[str]:
        return [self.settings.key, *url_secrets(self.settings.url)]


def read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("stdin closed before the settings")
        data += chunk
    return data


def read_settings(fd: int) -> pipe.PublisherSettings:
    """The first frame on stdin, read before the loop starts (and not a byte more): the
    settings."""
    kind, length = pipe.FRAME_HEAD.unpack(read_exactly(fd, pipe.FRAME_HEAD.size))
    if kind != pipe.SETTINGS or length > pipe.MAX_FRAME_BYTES:
        raise ValueError("the agent did not send the settings first")
    return pipe.PublisherSettings.decode(read_exactly(fd, length))


async def run(settings: pipe.PublisherSettings, stdin_fd: int, stdout: BinaryIO) -> None:
    def report(kind: str, **fields: Any) -> None:
        stdout.write(pipe.report_line(kind, **fields))
        stdout.flush()

    child = RtmpChild(settings, report)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(child.secrets()))
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(stdin_fd, READ_BYTES)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(stdin_fd)
        try:
            child.on_input(data)
        except ValueError as exc:  # the pipe is out of step: nothing more can be trusted
            log.error("%s; ending (the agent starts a new publisher)", exc)
            loop.remove_reader(stdin_fd)
            child.quit()

    os.set_blocking(stdin_fd, False)
    loop.add_reader(stdin_fd, readable)
    ticker = asyncio.create_task(child.tick())
    try:
        await child.publish()
    finally:
        ticker.cancel()
        loop.remove_reader(stdin_fd)


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="rtmp publisher: %(levelname)s %(message)s"
    )
    stdin_fd = sys.stdin.buffer.fileno()
    try:
        settings = read_settings(stdin_fd)
        asyncio.run(run(settings, stdin_fd, sys.stdout.buffer))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return 0  # the agent went away
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
