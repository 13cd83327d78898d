"""Telemetry: status, heartbeats, events and commands, over MQTT or as JSON lines on stdout.

    channel = open_channel(cfg.mqtt, station_id=..., state_dir=..., password=secret)
    telemetry = Telemetry(channel, station_id=..., status=pipeline.status, summary={...},
                          commands={"snapshot": ..., ...}, version=__version__,
                          spool_path=cfg.spool.path)
    telemetry.start()
    fanout.subscribe(telemetry.emit)    # it is an EventSink
    ...
    telemetry.stop("SIGTERM")

The channel (agent/telemetry/channel.py) carries the payloads: MQTT, or JSON lines on stdout
without an [mqtt] section. `emit` only hands the event to it (the on-disk outbox, or the
stream) and wakes the worker; it never waits for the network. One worker thread sends
heartbeats and drains the outbox; one more runs commands, so a slow handler never holds up
paho's network thread. Every command, run or refused, becomes an audit event (`command`,
`command_refused`: agent/telemetry/commands.py); refusals are themselves rate limited
(`AuditGate`), so a flood of junk cannot push real events out of the outbox.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.core.events import Event, utc_now_iso
from agent.core.timesync import clock_state
from agent.telemetry import payloads
from agent.telemetry.channel import ChannelHooks, CommandRequest, TelemetryChannel
from agent.telemetry.commands import AuditGate, CommandHandler, CommandOutcome, CommandRouter
from agent.telemetry.config import MqttConfig
from agent.telemetry.jsonlines import JsonLinesChannel
from agent.telemetry.mqtt_channel import MqttChannel
from agent.telemetry.system import SystemStats

log = logging.getLogger(__name__)

HEARTBEAT_EXPIRY_INTERVALS = 2  # a heartbeat two intervals old is stale: the broker drops it
# Stop is part of the agent's shutdown, which must fit systemd's stop timeout (90 s default)
# with room to spare; 3 s drains a normal backlog on any link that works at all.
STOP_FLUSH_TIMEOUT_S = 3.0
THREAD_JOIN_TIMEOUT_S = 5.0
COMMAND_QUEUE_MAX = 8  # commands come from people, a few a minute; more waiting is a stuck handler
WORKER_ERROR_PAUSE_S = 1.0  # after an unexpected error in the worker, before it tries again


def open_channel(
    cfg: MqttConfig | None,
    *,
    station_id: str,
    state_dir: Path,
    password: str | None = None,
    command_key: Ed25519PublicKey | None = None,
    out: TextIO = sys.stdout,
) -> TelemetryChannel:
    """MQTT as `cfg` says (events wait in an outbox under `state_dir`; `command_key` is the
    key `cfg.command_key_file` names, loaded by the caller); JSON lines on `out` without an
    [mqtt] section."""
    if cfg is None:
        return JsonLinesChannel(out)
    return MqttChannel(
        cfg, station_id=station_id, state_dir=state_dir, password=password, command_key=command_key
    )


class Telemetry:
    def __init__(
        self,
        channel: TelemetryChannel,
        *,
        station_id: str,
        status: Callable[[], dict[str, Any]],
        summary: dict[str, Any],
        commands: Mapping[str, CommandHandler],
        version: str,
        build: str | None = None,
        spool_path: Path | None = None,
        heartbeat_s: float | None = None,
        clock: Callable[[float], dict[str, Any]] = clock_state,
    ) -> None:
        self._channel = channel
        self._station_id = station_id
        self._status = status
        self._summary = summary
        self._version = version
        self._build = build  # the git commit (status `build`), None when unknown
        self._heartbeat_s = heartbeat_s or channel.heartbeat_s
        self._started_utc = utc_now_iso()
        self._started_s = time.monotonic()
        self._system = SystemStats(spool_path)
        self._clock = clock  # wall seconds -> the heartbeat's clock section
        self._router = CommandRouter(
            station_id, {**commands, "ping": self._ping}, channel.command_policy
        )
        self._audit_lock = threading.Lock()  # audits come from the command and paho threads
        self._audit_gate = AuditGate()
        self._heartbeat_seq = 0
        self._worker_errors = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._requests: queue.Queue[CommandRequest | None] = queue.Queue(COMMAND_QUEUE_MAX)
        self._started = self._stopped = False

    # -- public face --------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._started_utc = utc_now_iso()
        self._started_s = time.monotonic()
        self._channel.start(
            ChannelHooks(
                online_body=self._status_online,
                will_body=lambda: self._status_offline("connection_lost", clean=False),
                on_command=self._on_command,
                on_activity=self._wake.set,
            )
        )
        self._spawn(self._run_commands, "telemetry-commands")
        self.emit(
            Event(
                "agent_started",
                "info",
                f"station agent {self._version} started",
                {"version": self._version},
            )
        )
        self._spawn(self._run, "telemetry")

    def emit(self, event: Event) -> None:
        """Queues the event (outbox on disk, or one JSON line); never waits on the network."""
        body = payloads.to_json(payloads.event(self._station_id, event, event_id=uuid.uuid4().hex))
        self._channel.add_event(event.kind, body)
        self._wake.set()

    def stop(self, reason: str) -> None:
        """Offline status with `reason`, after sending what it can within a few seconds."""
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            self.emit(
                Event(
                    "agent_stopping",
                    "info",
                    f"station agent stopping: {reason}",
                    {"reason": reason},
                )
            )
        self._stop.set()
        self._wake.set()
        try:
            self._requests.put(None, timeout=THREAD_JOIN_TIMEOUT_S)
        except queue.Full:
            log.error("telemetry: command queue stuck at stop; a handler is hanging")
        for thread in self._threads:
            thread.join(THREAD_JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.error(
                    "telemetry: thread %s did not stop within %.0f s",
                    thread.name,
                    THREAD_JOIN_TIMEOUT_S,
                )
        if self._started:
            self._channel.stop(self._status_offline(reason, clean=True), STOP_FLUSH_TIMEOUT_S)

    def connection(self) -> dict[str, Any]:
        """The telemetry section of the heartbeat; also for the local status line."""
        return {
            **self._channel.state(),
            "worker_errors": self._worker_errors,
            "commands_done": self._audit_gate.done,
            "commands_refused": self._audit_gate.refused,
        }

    # -- payloads -----------------------------------------------------------------------------

    def _status_online(self) -> str:
        return payloads.to_json(
            payloads.status_online(
                self._station_id,
                at_utc=utc_now_iso(),
                version=self._version,
                build=self._build,
                started_utc=self._started_utc,
                summary=self._summary,
            )
        )

    def _status_offline(self, reason: str, *, clean: bool) -> str:
        return payloads.to_json(
            payloads.status_offline(
                self._station_id,
                at_utc=utc_now_iso(),
                version=self._version,
                build=self._build,
                started_utc=self._started_utc,
                reason=reason,
                clean=clean,
            )
        )

    def _heartbeat(self) -> str:
        pipeline: dict[str, Any] | None = None
        error: str | None = None
        try:
            pipeline = self._status()
        except Exception as exc:  # the pipeline's bug must not silence the heartbeat
            log.exception("telemetry: the pipeline status snapshot failed")
            error = f"{type(exc).__name__}: {exc}"
        self._heartbeat_seq += 1
        return payloads.to_json(
            payloads.heartbeat(
                self._station_id,
                at_utc=utc_now_iso(),
                seq=self._heartbeat_seq,
                uptime_s=time.monotonic() - self._started_s,
                system=self._system.sample(),
                clock=self._clock(time.time()),
                pipeline=pipeline,
                status_error=error,
                telemetry=self.connection(),
            )
        )

    # -- threads ------------------------------------------------------------------------------

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self) -> None:
        next_heartbeat_s = time.monotonic()
        connects_seen = 0
        while not self._stop.is_set():
            try:
                now_s = time.monotonic()
                connects = self._channel.connects
                if connects != connects_seen:  # just (re)connected: show the full picture now
                    connects_seen, next_heartbeat_s = connects, now_s
                if now_s >= next_heartbeat_s:
                    self._send_heartbeat()
                    next_heartbeat_s += self._heartbeat_s
                    if next_heartbeat_s <= now_s:  # fell behind (suspend, overload): no burst
                        next_heartbeat_s = now_s + self._heartbeat_s
                self._channel.deliver()
            except Exception:  # report, pause, carry on: telemetry must outlive its own bugs
                self._worker_errors += 1
                log.exception("telemetry worker failed; retrying in %.0f s", WORKER_ERROR_PAUSE_S)
                self._stop.wait(WORKER_ERROR_PAUSE_S)
            self._wake.wait(max(0.0, next_heartbeat_s - time.monotonic()))
            self._wake.clear()

    def _send_heartbeat(self) -> None:
        if not self._channel.connected:  # nobody to tell: skip the work, keep seq contiguous
            return
        expiry_s = max(1, round(HEARTBEAT_EXPIRY_INTERVALS * self._heartbeat_s))
        self._channel.publish_heartbeat(self._heartbeat(), expiry_s)

    # -- commands -----------------------------------------------------------------------------

    def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "pong": True,
            "version": self._version,
            "uptime_s": round(time.monotonic() - self._started_s, 3),
        }

    def _on_command(self, request: CommandRequest) -> None:
        """Called in paho's network thread: hand over, never run the handler here."""
        try:
            self._requests.put_nowait(request)
        except queue.Full:
            self._finish(request, self._router.refuse_busy(request, time.time()))

    def _run_commands(self) -> None:
        while (request := self._requests.get()) is not None:
            try:
                outcome = self._router.handle(request, now_s=time.monotonic(), wall_s=time.time())
                self._finish(request, outcome)
            except Exception:  # the router never raises; a reply that cannot be sent is logged
                self._worker_errors += 1
                log.exception("telemetry: command %r could not be answered", request.name[:64])

    def _finish(self, request: CommandRequest, outcome: CommandOutcome) -> None:
        self._audit(outcome)
        if outcome.reply is not None:
            self._send_reply(request, outcome.reply)

    def _audit(self, outcome: CommandOutcome) -> None:
        with self._audit_lock:
            event = self._audit_gate.admit(outcome, time.monotonic())
        if event is None:
            return
        log.log(logging.INFO if event.severity == "info" else logging.WARNING, "%s", event.message)
        self.emit(event)

    def _send_reply(self, request: CommandRequest, reply: dict[str, Any] | bytes) -> None:
        if request.response_topic is None:
            log.info("command %r came without a response topic: no reply sent", request.name)
            return
        if isinstance(reply, bytes):
            content_type = "image/jpeg" if reply[:2] == b"\xff\xd8" else "application/octet-stream"
            body = reply
        else:
            content_type, body = "application/json", payloads.to_json(reply).encode("utf-8")
        self._channel.reply(request.response_topic, request.correlation, body, content_type)
