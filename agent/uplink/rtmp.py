"""RtmpOutput: one `[[uplink.rtmp]]`, a live stream to a streaming server beside the record.

The encode loop hands each encoded packet to `offer` (agent/encode/packet.py); a bounded
`LiveQueue` takes it and the call returns. A feeder thread writes the queue to a publisher
process (`python -m agent.uplink.rtmp_child`), which does all the network work; a supervisor
thread reads its reports, turns them into events and heartbeat figures, and kills and restarts
it when it stops reporting. So no server, however it misbehaves, can hold the encoder, the
spool or the uploads: the worst it can do is make this output drop groups of pictures.

Live only: nothing is kept for later. After an outage the stream starts again at a fresh
keyframe; the spool and the HTTP uploads remain the record.

Events: `rtmp_connected` (each connection), `rtmp_disconnected` (once per outage, with the
reason: the server's own words when it gave any), `rtmp_dropped` (frames and groups of pictures
dropped because the server took the data too slowly; at most one event per
DROP_EVENT_INTERVAL_S).
"""

from __future__ import annotations

import logging
import os
import random
import select
import selectors
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pydantic import SecretStr

import agent
from agent.core.backoff import full_jitter_s
from agent.core.config import Secrets
from agent.core.events import Event, EventSink
from agent.core.redact import redact_text, url_secrets
from agent.encode.packet import EncodedPacket
from agent.uplink import rtmp_pipe as pipe
from agent.uplink.config import RtmpOutputConfig
from agent.uplink.live import Drops, LiveQueue
from agent.uplink.output import OutputProgress

log = logging.getLogger(__name__)

CHILD_MODULE = "agent.uplink.rtmp_child"
# The publisher reports every second (rtmp_child.STATS_INTERVAL_S); this long without a line
# it is hung (it never should be: every wait in it has a timeout) and is killed and restarted.
CHILD_SILENT_S = 15.0
CHILD_RESTART_BASE_S = 1.0
CHILD_RESTART_MAX_S = 30.0
DROP_EVENT_INTERVAL_S = 10.0  # rtmp_dropped at most this often; counts add up in between
# ...and only once no frame was dropped for this long: a drop runs on to the next keyframe (up to
# a segment), and the event should count that whole group, not its first frames. The publisher
# reports its drops once a second: 1.5 s without is a second report without any.
DROP_QUIET_S = 1.5
BITRATE_WINDOW_S = 10.0  # the heartbeat's bitrate: bytes sent over the last 10 s
POLL_S = 0.5  # the supervisor's and the feeder's longest wait


def _write_all(fd: int, data: bytes) -> None:
    """All of `data` into a non-blocking pipe, waiting for room; OSError (EPIPE) when the
    reader is gone, which is also how a killed publisher ends the wait."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [], POLL_S)


class RtmpOutput:
    """One live RTMP output; a SegmentOutput (start, stop, wake, credentials, status)."""

    def __init__(
        self,
        cfg: RtmpOutputConfig,
        name: str,
        key: SecretStr,
        sink: EventSink,
        *,
        python: str = sys.executable,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self._key = key
        self._sink = sink
        self._python = python
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._queue = LiveQueue(cfg.max_lag_s)
        self._queue.counting = False  # drops count while a publish is on the air
        self._control: deque[bytes] = deque()  # settings / wake frames for the feeder to write
        # the publisher's stdin (non-blocking) while a feeder runs; one writer at a time: the
        # encode thread (offer) or the feeder, which also finishes a frame the pipe took in part
        self._fd: int | None = None
        self._pending = b""
        self._feeder_writing = False
        self._cond = threading.Condition()  # guards the queue, the control frames, the counters
        self._stop = threading.Event()
        self._stop_by_s = 0.0  # set by stop(): when the publisher must have ended its publish
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.state = "stopped"
        self._ever_connected = False
        self._in_outage = False  # rtmp_disconnected reported for the outage going on
        self._down_since_s: float | None = None
        self._restarting = False
        self.reconnects = 0
        self.last_error: str | None = None
        self._sent_before = 0  # bytes sent by earlier publisher processes
        self._child_sent = 0
        self.frames_sent = 0
        self.dropped = Drops()
        self._unreported = Drops()
        self._last_drop_event_s = float("-inf")
        self._last_drop_s = float("-inf")
        self.lag_s: float | None = None
        self._samples: deque[tuple[float, int]] = deque()  # (now_s, sent bytes) for the bitrate

    # -- the encoder's side -------------------------------------------------------------------

    def offer(self, packet: EncodedPacket) -> None:
        """From the encode thread: queue the packet and return at once. While the pipe takes
        it without waiting (the usual case) it goes straight in: no thread hand-over per frame
        (the hot path of the CPU budget); otherwise the feeder thread writes it."""
        with self._cond:
            now_s = self._clock()
            self._queue.push(packet, now_s)
            fd = self._fd
            if fd is not None and not (self._feeder_writing or self._pending or self._control):
                self._write_nowait(fd, now_s)
            self._count_drops(self._queue.take_drops())
            if self._pending or self._control or len(self._queue):
                self._cond.notify()

    def _write_nowait(self, fd: int, now_s: float) -> None:
        """(Holding the lock) queued packets into the pipe while it takes them; the rest of a
        frame it took in part waits in `_pending` for the feeder."""
        while (packet := self._queue.pop(now_s)) is not None:
            data = pipe.encode_packet(packet)
            try:
                written = os.write(fd, data)
            except BlockingIOError:
                written = 0
            except OSError:  # the publisher is gone; the supervisor restarts it
                return
            if written < len(data):
                self._pending = data[written:]
                return

    def _count_drops(self, drops: Drops) -> None:
        if drops:
            self.dropped += drops
            self._unreported += drops
            self._last_drop_s = self._clock()

    # -- SegmentOutput ------------------------------------------------------------------------

    def start(self) -> None:
        self.state = "connecting"
        self._thread = threading.Thread(target=self._run, name=f"uplink-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, drain_s: float) -> None:
        """End the publish politely within `drain_s`, then kill the publisher if it lingers."""
        self._stop_by_s = self._clock() + drain_s
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(drain_s)
            proc = self._proc
            if self._thread.is_alive() and proc is not None:
                proc.kill()  # it did not end its publish in time
                self._thread.join(POLL_S)
        self.state = "stopped"

    def wake(self) -> None:
        self._send_control(pipe.frame(pipe.WAKE))

    def reload_credentials(self, secrets: Secrets) -> None:
        key = secrets.rtmp_keys.get(self.name)
        if key is None or key == self._key:
            return
        log.info("%s: new stream key; reconnecting with it", self.name)
        self._key = key
        self._send_control(self._settings().encode())

    def status(self, now_s: float) -> dict[str, Any]:
        with self._cond:
            sent = self._sent_before + self._child_sent
            return {
                "name": self.name,
                "url": self.cfg.url,
                "state": self.state,
                "bitrate_bps": self._bitrate_bps(now_s),
                "sent_bytes": sent,
                "frames_sent": self.frames_sent,
                "dropped_frames": self.dropped.frames,
                "dropped_gops": self.dropped.gops,
                "reconnects": self.reconnects,
                "lag_s": self.lag_s,
                "last_error": self.last_error,
            }

    def progress(self) -> OutputProgress:
        """Never busy for the watchdog: this output cannot hold anything up, and its own
        supervisor restarts a publisher that hangs."""
        return OutputProgress(busy_since_s=None, sent_bytes=self._sent_before + self._child_sent)

    # -- the publisher process ----------------------------------------------------------------

    def _settings(self) -> pipe.PublisherSettings:
        cfg = self.cfg
        return pipe.PublisherSettings(
            name=self.name,
            url=cfg.url,
            key=self._key.get_secret_value(),
            ca_file=str(cfg.ca_file) if cfg.ca_file else None,
            connect_timeout_s=cfg.connect_timeout_s,
            stall_timeout_s=cfg.stall_timeout_s,
            backoff_max_s=cfg.backoff_max_s,
            max_lag_s=cfg.max_lag_s,
        )

    def _send_control(self, data: bytes) -> None:
        with self._cond:
            self._control.append(data)
            self._cond.notify()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            started_s = self._clock()
            try:
                self._run_publisher()
            except OSError as exc:  # cannot start the process at all (no memory, no python)
                self._failed(f"cannot start the RTMP publisher process: {exc}", connected=False)
            if self._stop.is_set():
                break
            if self._clock() - started_s > CHILD_RESTART_MAX_S:
                attempt = 0  # it ran a good while: a fresh failure
            delay_s = full_jitter_s(attempt, CHILD_RESTART_BASE_S, CHILD_RESTART_MAX_S, self._rng)
            attempt += 1
            self._stop.wait(delay_s)
        with self._cond:
            self.state = "stopped"

    def _run_publisher(self) -> None:
        package_root = str(Path(agent.__file__).resolve().parent.parent)
        env = os.environ | {
            "PYTHONPATH": os.pathsep.join(
                p for p in (package_root, os.environ.get("PYTHONPATH")) if p
            )
        }
        # argv and environment hold no key: it goes through stdin
        proc = subprocess.Popen(  # noqa: S603 - fixed argv: this python, our module
            [self._python, "-m", CHILD_MODULE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )  # fmt: skip
        self._proc = proc
        if proc.stdin is None or proc.stdout is None:
            raise OSError("the publisher process has no pipes")
        with self._cond:  # (the new publisher starts each stream at a keyframe by itself)
            self._control.clear()
            self._control.append(self._settings().encode())
        feeder = threading.Thread(
            target=self._feed, args=(proc.stdin,), name=f"uplink-{self.name}-feed", daemon=True
        )
        feeder.start()
        try:
            self._supervise(proc, proc.stdout)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            feeder.join(POLL_S * 4)
            proc.stdout.close()
            with self._cond:
                self._sent_before += self._child_sent
                self._child_sent = 0
            self._proc = None
        if not self._stop.is_set():
            self._failed(
                f"the RTMP publisher process ended (exit code {proc.returncode})",
                connected=self.state == "connected",
            )

    def _feed(self, stdin: IO[bytes]) -> None:
        """Writes to the publisher's stdin what `offer` could not: the rest of a frame the pipe
        took in part, control frames, packets that waited; and QUIT at the stop."""
        fd = stdin.fileno()
        os.set_blocking(fd, False)
        with self._cond:
            self._pending, self._fd = b"", fd
        try:
            while True:
                with self._cond:
                    data = self._next_frame()
                    self._feeder_writing = data is not None
                    if data is None:  # stopping: the encode thread writes no more
                        data, self._pending, self._fd = self._pending, b"", None
                        break
                _write_all(fd, data)
                with self._cond:
                    self._feeder_writing = False
            _write_all(fd, data + pipe.frame(pipe.QUIT))
        except OSError:
            return  # the publisher went away; the supervisor restarts it
        finally:
            with self._cond:
                self._fd, self._feeder_writing = None, False
            try:
                stdin.close()
            except OSError:
                pass  # it is gone already

    def _next_frame(self) -> bytes | None:
        """(Holding the lock) the next bytes to write, waiting for some; None when stopping.
        A frame's rest first (nothing may come between), then control frames, then packets."""
        while not self._stop.is_set():
            if self._pending:
                data, self._pending = self._pending, b""
                return data
            if self._control:
                return self._control.popleft()
            packet = self._queue.pop(self._clock())
            self._count_drops(self._queue.take_drops())
            if packet is not None:
                return pipe.encode_packet(packet)
            self._cond.wait(POLL_S)
        return None

    def _supervise(self, proc: subprocess.Popen[bytes], stdout: IO[bytes]) -> None:
        """Reads the publisher's reports until it exits; kills it when it goes silent, or when
        it outlives the stop by its drain time."""
        selector = selectors.DefaultSelector()
        selector.register(stdout, selectors.EVENT_READ)
        buffer = b""
        heard_s = self._clock()
        try:
            while True:
                now_s = self._clock()
                if self._stop.is_set() and now_s > self._stop_by_s:
                    log.info("%s: the publisher did not end in time; killing it", self.name)
                    return
                if now_s - heard_s > CHILD_SILENT_S:
                    log.warning("%s: the publisher stopped answering; restarting it", self.name)
                    return
                if not selector.select(POLL_S / 5 if self._stop.is_set() else POLL_S):
                    self._maybe_report_drops(now_s)
                    continue
                data = os.read(stdout.fileno(), 65536)
                if not data:
                    return  # it exited
                heard_s = self._clock()
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    report = pipe.parse_report(line)
                    if report is not None:
                        self._on_report(report, heard_s)
                self._maybe_report_drops(heard_s)
        finally:
            selector.close()

    # -- reports -> state, events ---------------------------------------------------------------

    def _on_report(self, report: dict[str, Any], now_s: float) -> None:
        kind = report["kind"]
        if kind == "connected":
            self._connected(now_s)
        elif kind in ("failed", "disconnected"):
            self._failed(self._redact(str(report.get("reason", ""))), kind == "disconnected")
        elif kind == "restart":
            log.info("%s: restarting the stream: %s", self.name, report.get("reason"))
            self._restarting = True
        elif kind == "stats":
            self._stats(report, now_s)
        elif kind == "connecting" and self.state == "stopped":
            self.state = "connecting"

    def _connected(self, now_s: float) -> None:
        outage_s = None if self._down_since_s is None else round(now_s - self._down_since_s, 1)
        with self._cond:
            if self._ever_connected and not self._restarting:
                self.reconnects += 1
            self.state = "connected"
            self._queue.counting = True
        restarted, self._restarting = self._restarting, False
        self._ever_connected = True
        self._in_outage = False
        self._down_since_s = None
        if restarted:
            return  # a planned restart (new picture): rung_changed tells it already
        log.info("%s: publishing to %s", self.name, self.cfg.url)
        self._sink.emit(
            Event(
                "rtmp_connected",
                "info",
                f"{self.name}: live stream publishing to {self.cfg.url}",
                {
                    "output": self.name,
                    "url": self.cfg.url,
                    "reconnects": self.reconnects,
                    "outage_s": outage_s,
                },
            )
        )

    def _failed(self, reason: str, connected: bool) -> None:
        with self._cond:
            self.last_error = reason
            self.state = "reconnecting" if self._ever_connected else "connecting"
            self._queue.counting = False  # offline: nothing is sent anyway
        self._restarting = False
        if self._down_since_s is None:
            self._down_since_s = self._clock()
        if self._in_outage:
            log.info("%s: still no live stream: %s", self.name, reason)
            return
        self._in_outage = True
        what = "live stream lost" if connected else "live stream cannot connect"
        log.warning("%s: %s: %s", self.name, what, reason)
        self._sink.emit(
            Event(
                "rtmp_disconnected",
                "warning",
                f"{self.name}: {what}: {reason}",
                {
                    "output": self.name,
                    "url": self.cfg.url,
                    "reason": reason,
                    "was_connected": connected,
                },
            )
        )

    def _stats(self, report: dict[str, Any], now_s: float) -> None:
        drops = Drops(int(report.get("dropped_frames", 0)), int(report.get("dropped_gops", 0)))
        with self._cond:
            self._child_sent = int(report.get("sent_bytes", 0))
            self.frames_sent = int(report.get("frames_sent", 0))
            lag_s = report.get("lag_s")
            self.lag_s = float(lag_s) if isinstance(lag_s, int | float) else None
            self.dropped += drops
            self._unreported += drops
            if drops:
                self._last_drop_s = now_s
            self._samples.append((now_s, self._sent_before + self._child_sent))
            while self._samples and now_s - self._samples[0][0] > BITRATE_WINDOW_S:
                self._samples.popleft()

    def _bitrate_bps(self, now_s: float) -> int:
        """(Holding the lock) bits per second sent over the last BITRATE_WINDOW_S."""
        if len(self._samples) < 2 or self.state != "connected":
            return 0
        (first_s, first), (last_s, last) = self._samples[0], self._samples[-1]
        return round((last - first) * 8 / (last_s - first_s)) if last_s > first_s else 0

    def _maybe_report_drops(self, now_s: float) -> None:
        with self._cond:
            drops = self._unreported
            if not drops or now_s - self._last_drop_event_s < DROP_EVENT_INTERVAL_S:
                return
            if now_s - self._last_drop_s < DROP_QUIET_S:
                return  # still dropping: the rest of that group of pictures
            self._unreported, self._last_drop_event_s = Drops(), now_s
        log.warning("%s: dropped %d frames (%d GOPs): the server takes the stream too slowly",
                    self.name, drops.frames, drops.gops)  # fmt: skip
        self._sink.emit(
            Event(
                "rtmp_dropped",
                "warning",
                f"{self.name}: {drops.frames} frames ({drops.gops} groups of pictures) not "
                "streamed: the server or the link took them too slowly",
                {"output": self.name, "frames": drops.frames, "gops": drops.gops},
            )
        )

    def _redact(self, text: str) -> str:
        return redact_text(text, [self._key.get_secret_value(), *url_secrets(self.cfg.url)])
