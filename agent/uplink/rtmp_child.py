"""`python -m agent.uplink.rtmp_child`: the process that publishes one RTMP output.

The agent (agent/uplink/rtmp.py) starts one per `[[uplink.rtmp]]`, writes its settings and the
encoded packets to its stdin and reads its reports from stdout (agent/uplink/rtmp_pipe.py).
Whatever the server does (never answers, stalls, refuses), only this process waits: the
recording never does.

Here, on one asyncio loop: a reader task takes packets off stdin at once into a `LiveQueue`
(so the pipe never fills while the server is slow), the publish loop connects (jittered backoff
between attempts), starts at the newest fresh keyframe and sends packets in order, restarts the
stream at a keyframe whose picture differs (a rung change), and a ticker reports figures every
second (also the agent's sign that this process is alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
        self._arrived = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = False
        self._new_settings = False
        self._connected = False
        self._publisher: RtmpPublisher | None = None
        self._drops = Drops()
        self._frames_sent = 0
        self._sent_before = 0  # bytes sent on earlier connections
        self._lag_s: float | None = None

    # -- the agent's side ---------------------------------------------------------------------

    async def read_commands(self, reader: asyncio.StreamReader) -> None:
        """Packets into the queue as they arrive; settings, wake and quit."""
        try:
            while True:
                head = await reader.readexactly(pipe.FRAME_HEAD.size)
                kind, length = pipe.FRAME_HEAD.unpack(head)
                if length > pipe.MAX_FRAME_BYTES:
                    raise ValueError(f"a {length}-byte frame from the agent")
                body = await reader.readexactly(length)
                if kind == pipe.PACKET:
                    self._take(pipe.decode_packet(body))
                elif kind == pipe.SETTINGS:
                    self.settings = pipe.PublisherSettings.decode(body)
                    self._new_settings = True
                    self._wake.set()
                elif kind == pipe.WAKE:
                    self._wake.set()
                elif kind == pipe.QUIT:
                    break
        except asyncio.IncompleteReadError:
            pass  # the agent closed our stdin (or died): end as if told to quit
        self._stopping = True
        self._wake.set()
        self._arrived.set()

    def _take(self, packet: EncodedPacket) -> None:
        self.queue.push(packet, self._clock())
        self._note_drops()
        self._arrived.set()

    def _note_drops(self) -> None:
        drops = self.queue.take_drops()
        if self._connected:
            self._drops += drops  # while offline nothing is sent anyway: not a drop

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
            self._publisher, self._connected = publisher, True
            self._report("connected")
            try:
                why = await self._stream(publisher)
            except RtmpError as exc:
                self._connected = False
                self._report("disconnected", reason=self._redact(str(exc)))
                await publisher.abort()
                await self._pause(full_jitter_s(0, RECONNECT_BASE_S, self._cap(), self._rng))
                attempt = 1
                continue
            finally:
                self._connected, self._publisher = False, None
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

    async def _stream(self, publisher: RtmpPublisher) -> str:
        """Send until stopped, the picture changes or the settings do; returns which."""
        self.queue.restart()
        self._note_drops()
        clock = StreamClock()
        shown: tuple[int, int, int] | None = None
        parameter_sets: tuple[bytes, bytes] | None = None
        while True:
            packet, now_s = await self._next()
            if packet is None:
                return "stopping"
            if self._new_settings:
                return "new settings"
            units = wire.split_annexb(packet.data)
            sets = None
            if packet.keyframe:
                if shown is not None and picture(packet) != shown:
                    return "the picture changed ({}x{} {} fps)".format(*picture(packet))
                sets = wire.parameter_sets(units) or wire.parameter_sets(
                    wire.split_annexb(packet.extradata)
                )
            self.queue.pop(now_s)  # the packet peeked at: same time, no await since
            if shown is None and sets is None:
                log.warning("a keyframe without SPS/PPS; waiting for the next one")
                continue  # a stream cannot start without them
            timestamp_ms = clock.ms(packet.dts, packet.rung.fps)
            if shown is None:
                rung = packet.rung
                await publisher.send_metadata(rung.width, rung.height, rung.fps, rung.bitrate_bps)
                shown = picture(packet)
            if sets is not None and sets != parameter_sets:
                parameter_sets = sets
                await publisher.send_video(timestamp_ms, wire.avc_sequence_header(*sets))
            composition_ms = max(0, (packet.pts - packet.dts) // PTS_PER_MS)
            body = wire.avc_frame(units, packet.keyframe, composition_ms)
            await publisher.send_video(timestamp_ms, body)
            self._frames_sent += 1
            self._lag_s = self._clock() - packet.captured_s

    async def _next(self) -> tuple[EncodedPacket | None, float]:
        """The packet at the head of the queue (still in it) once there is one, and the time
        it was looked at; (None, ...) when stopping."""
        while not self._stopping:
            now_s = self._clock()
            packet = self.queue.peek(now_s)
            self._note_drops()
            if packet is not None:
                return packet, now_s
            self._arrived.clear()
            publisher = self._publisher
            if publisher is not None and publisher.failure is not None:
                raise RtmpError(publisher.failure)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), STATS_INTERVAL_S)
        return None, self._clock()

    # -- reports ------------------------------------------------------------------------------

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            self._note_drops()
            drops, self._drops = self._drops, Drops()
            publisher = self._publisher
            self._report(
                "stats",
                sent_bytes=self._sent_before + (publisher.sent_bytes if publisher else 0),
                frames_sent=self._frames_sent,
                lag_s=None if self._lag_s is None else round(self._lag_s, 3),
                dropped_frames=drops.frames,
                dropped_gops=drops.gops,
            )

    def _redact(self, text: str) -> str:
        return redact_text(text, self.secrets())

    def secrets(self) -> list[str]:
        return [self.settings.key, *url_secrets(self.settings.url)]


async def run(stdin: BinaryIO, stdout: BinaryIO) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=pipe.MAX_FRAME_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    head = await reader.readexactly(pipe.FRAME_HEAD.size)
    kind, length = pipe.FRAME_HEAD.unpack(head)
    if kind != pipe.SETTINGS or length > pipe.MAX_FRAME_BYTES:
        log.error("the agent did not send the settings first")
        return 2
    settings = pipe.PublisherSettings.decode(await reader.readexactly(length))
    sent_bytes = [0]

    def report(kind: str, **fields: Any) -> None:
        line = pipe.report_line(kind, **fields)
        stdout.write(line)
        stdout.flush()
        sent_bytes[0] += len(line)

    child = RtmpChild(settings, report)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(child.secrets()))
    tasks = [
        asyncio.create_task(child.read_commands(reader)),
        asyncio.create_task(child.tick()),
    ]
    try:
        await child.publish()
    finally:
        for task in tasks:
            task.cancel()
    return 0


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="rtmp publisher: %(levelname)s %(message)s"
    )
    try:
        return asyncio.run(run(sys.stdin.buffer, sys.stdout.buffer))
    except (BrokenPipeError, KeyboardInterrupt):
        return 0  # the agent went away


if __name__ == "__main__":
    sys.exit(main())
