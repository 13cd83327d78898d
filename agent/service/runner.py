"""The service's life: build the pipeline and telemetry, start them, supervise once a second
until SIGTERM/SIGINT (or a demo's duration), stop cleanly.

    return serve(cfg, status_line=False, config_path=path)   # `station-agent run`
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import __version__, build_id
from agent.adapt.ladder import format_bps, picture_label
from agent.core.config import ConfigError
from agent.core.events import EventFanout
from agent.core.memory import TRIM_INTERVAL_S, release_free_memory, tune_allocator
from agent.service.config import AgentConfig, load_command_key, load_config, load_secrets
from agent.service.pipeline import Pipeline, run_until
from agent.service.remote import command_handlers
from agent.service.sdnotify import SdNotifier
from agent.service.supervision import ProgressWatchdog, Supervisor
from agent.spool.store import SpoolError
from agent.telemetry import Telemetry, open_channel
from agent.telemetry.outbox import move_outbox

log = logging.getLogger("agent")


class _Signals:
    """SIGTERM/SIGINT ask for a stop (remembering which), SIGHUP for a credentials reload."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.reason = "signal"
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hangup)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.reason = signal.Signals(signum).name
        self.stop.set()

    def _on_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload.set()

    def finish(self, reason: str) -> None:
        self.reason = reason
        self.stop.set()


def serve(
    cfg: AgentConfig,
    status_line: bool,
    duration_s: float | None = None,
    config_path: Path | None = None,
) -> int:
    """Run the pipeline until SIGTERM/SIGINT (or `duration_s`), then stop cleanly: exit 0.
    Exit 2 when the agent cannot be set up (the message says why)."""
    tune_allocator()  # before any worker thread: their arenas follow it
    secrets = load_secrets(cfg)
    command_key = load_command_key(cfg)
    events = EventFanout(keep_early=True)  # until the telemetry subscribes, after its start
    try:
        pipeline = Pipeline(cfg, secrets, events)
    except OSError as exc:  # e.g. a client certificate and key that do not match (ssl.SSLError)
        print(f"error: cannot set up the agent: {exc}", file=sys.stderr)
        return 2
    telemetry = _telemetry(cfg, pipeline, secrets.mqtt_password, command_key)
    notifier = SdNotifier(os.environ)  # systemd Type=notify; does nothing outside systemd
    faulthandler.enable()  # a watchdog abort leaves every thread's stack in the journal
    progress = ProgressWatchdog(cfg.watchdog.deadlines_s(), time.monotonic())
    supervisor = Supervisor(notifier, progress, pipeline.status_line, sink=events)
    signals = _Signals()
    try:
        pipeline.start()  # first: the first heartbeat reads the spool, which start() opens
        telemetry.start()  # queues agent_started
    except (SpoolError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        telemetry.stop(f"start failed: {exc}")
        return 2
    # then every event since the pipeline was built (a config_problem, the spool's recovery,
    # a camera that did not open), in order, and the rest as they come
    events.subscribe(telemetry.emit, replay_early=True)
    notifier.ready(pipeline.status_line())
    deadline_s = None if duration_s is None else time.monotonic() + duration_s
    trim_at_s = time.monotonic() + TRIM_INTERVAL_S

    def tick() -> None:
        nonlocal trim_at_s
        now_s = time.monotonic()
        if now_s >= trim_at_s:
            trim_at_s = now_s + TRIM_INTERVAL_S
            release_free_memory()  # what the threads freed, back to the kernel
        pipeline.supervise()
        pipeline.report_progress(progress, now_s)
        supervisor.tick(now_s)
        if signals.reload.is_set():
            signals.reload.clear()
            _reload_secrets(pipeline, config_path)
        if status_line:
            print(describe(pipeline.status()), file=sys.stderr, flush=True)
        if deadline_s is not None and time.monotonic() >= deadline_s:
            signals.finish("demo duration reached")

    run_until(signals.stop, tick, supervisor.interval_s)
    notifier.stopping(f"stopping: {signals.reason}")
    pipeline.stop()
    telemetry.stop(signals.reason)
    return 0


def telemetry_state_dir(cfg: AgentConfig) -> Path:
    """The event outbox's folder: beside the spool, not in it, so a replaced or re-created
    spool keeps the event seq (docs/telemetry.md)."""
    return cfg.spool.path.parent / "telemetry"


def _telemetry(
    cfg: AgentConfig, pipeline: Pipeline, password: Any, command_key: Ed25519PublicKey | None
) -> Telemetry:
    state_dir = telemetry_state_dir(cfg)
    if cfg.mqtt is not None:
        try:  # earlier versions kept the outbox inside the spool
            move_outbox(cfg.spool.path / "telemetry", state_dir)
        except (sqlite3.Error, OSError) as exc:
            log.error("cannot take over the old telemetry outbox in %s: %s", cfg.spool.path, exc)
    channel = open_channel(
        cfg.mqtt,
        station_id=cfg.station_id,
        state_dir=state_dir,
        password=password.get_secret_value() if password is not None else None,
        command_key=command_key,
    )
    return Telemetry(
        channel,
        station_id=cfg.station_id,
        status=pipeline.status,
        summary=pipeline.summary(),
        commands=command_handlers(pipeline),
        version=__version__,
        build=build_id(),
        spool_path=cfg.spool.path,
    )


def _reload_secrets(pipeline: Pipeline, config_path: Path | None) -> None:
    """SIGHUP: re-read the secret files (the rest of the config needs a restart)."""
    try:
        cfg = load_config(config_path) if config_path else pipeline.cfg
        pipeline.reload_secrets(load_secrets(cfg))
        log.info("credentials reloaded")
    except ConfigError as exc:
        log.error("reload failed, keeping the old credentials: %s", exc)


def describe(status: dict[str, Any]) -> str:
    """One line for people: fps, bitrate, segments, spool size."""
    capture, encode, spool = status["capture"], status["encode"], status["spool"]
    rung = encode["rung"]
    picture = picture_label(rung["height"], rung["fps"])
    return (
        f"{picture} {capture['state']} in {capture['fps_in']:.1f} fps | "
        f"{format_bps(float(encode['bitrate_bps_actual'] or 0))}bit/s ({encode['encoder']}) | "
        f"segments {spool['segments']} on disk, {int(spool['bytes']) / 1e6:.1f} MB, "
        f"lost {spool['lost_segments']}" + _describe_uplink(status.get("uplink"))
    )


def _describe_uplink(uplink: dict[str, Any] | None) -> str:
    if uplink is None:
        return ""
    return f" | uploaded {uplink['uploaded']}, backlog {uplink['backlog_segments']}"
