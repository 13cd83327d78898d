"""The `station-agent` command: run, demo, spool, and the technicians' tools."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from agent import __version__
from agent.adapt.ladder import format_bps, picture_label
from agent.core.config import ConfigError
from agent.core.events import EventFanout
from agent.service.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    config_from_dict,
    load_config,
    load_secrets,
)
from agent.service.pipeline import Pipeline, run_until
from agent.service.remote import command_handlers
from agent.service.sdnotify import SdNotifier
from agent.service.supervision import ProgressWatchdog, Supervisor
from agent.spool.store import SpoolError
from agent.telemetry import Telemetry, open_channel
from agent.tools import check_cli, health_cli, mask_cli, provision_cli, spool_cli

log = logging.getLogger("agent")

# The technicians' commands: each module adds its subcommand through `add_parser(subparsers)`.
TOOL_MODULES = (spool_cli, health_cli, mask_cli, check_cli, provision_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="station-agent",
        description="Polling-station webcam agent: capture, encode, spool, upload, report.",
    )
    parser.add_argument("--version", action="version", version=f"station-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent (the service)")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="TOML config")
    run.set_defaults(func=_run)

    demo = sub.add_parser("demo", help="the whole pipeline on a synthetic camera, locally")
    demo.add_argument("--duration", type=float, default=None, help="seconds (default: forever)")
    demo.add_argument("--output", type=Path, default=Path("demo-output"), help="output dir")
    demo.set_defaults(func=_demo)

    for module in TOOL_MODULES:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def demo_config(output: Path) -> AgentConfig:
    """The embedded default: synthetic camera, local spool, local upload target."""
    return config_from_dict(
        {
            "station_id": "DEMO-0001",
            "capture": {"source": "test:", "width": 1280, "height": 720, "fps": 30},
            "encode": {"segment_s": 2},
            "spool": {"path": str(output / "spool"), "max_bytes": "2GB", "min_free_bytes": 0},
            "uplink": {"http": {"url": f"file://{output.resolve() / 'upstream'}"}},
        },
        source="built-in demo config",
    )


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    return serve(cfg, status_line=False, config_path=args.config)


def _demo(args: argparse.Namespace) -> int:
    args.output.mkdir(parents=True, exist_ok=True)
    print(f"demo: writing under {args.output.resolve()}", file=sys.stderr)
    return serve(demo_config(args.output), status_line=True, duration_s=args.duration)


def serve(
    cfg: AgentConfig,
    status_line: bool,
    duration_s: float | None = None,
    config_path: Path | None = None,
) -> int:
    """Run the pipeline until SIGTERM/SIGINT (or `duration_s`), then stop cleanly: exit 0."""
    secrets = load_secrets(cfg)
    events = EventFanout()
    try:
        pipeline = Pipeline(cfg, secrets, events)
    except OSError as exc:  # e.g. a client certificate and key that do not match (ssl.SSLError)
        print(f"error: cannot set up the agent: {exc}", file=sys.stderr)
        return 2
    password = secrets.mqtt_password.get_secret_value() if secrets.mqtt_password else None
    channel = open_channel(
        cfg.mqtt,
        station_id=cfg.station_id,
        state_dir=cfg.spool.path / "telemetry",
        password=password,
    )
    telemetry = Telemetry(
        channel,
        station_id=cfg.station_id,
        status=pipeline.status,
        summary=pipeline.summary(),
        commands=command_handlers(pipeline),
        version=__version__,
        spool_path=cfg.spool.path,
    )
    events.subscribe(telemetry.emit)
    notifier = SdNotifier(os.environ)  # systemd Type=notify; does nothing outside systemd
    faulthandler.enable()  # a watchdog abort leaves every thread's stack in the journal
    progress = ProgressWatchdog(cfg.watchdog.deadlines_s(), time.monotonic())
    supervisor = Supervisor(notifier, progress, pipeline.status_line, sink=events)
    stop = threading.Event()
    reload_requested = threading.Event()
    reason = ["signal"]

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        reason[0] = signal.Signals(signum).name
        stop.set()

    def on_hangup(_signum: int, _frame: FrameType | None) -> None:
        reload_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    try:
        pipeline.start()  # first: the first heartbeat reads the spool, which start() opens
        telemetry.start()
    except (SpoolError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        telemetry.stop(f"start failed: {exc}")
        return 2
    notifier.ready(pipeline.status_line())
    deadline_s = None if duration_s is None else time.monotonic() + duration_s

    def tick() -> None:
        now_s = time.monotonic()
        pipeline.supervise()
        pipeline.report_progress(progress, now_s)
        supervisor.tick(now_s)
        if reload_requested.is_set():
            reload_requested.clear()
            _reload_secrets(pipeline, config_path)
        if status_line:
            print(describe(pipeline.status()), file=sys.stderr, flush=True)
        if deadline_s is not None and time.monotonic() >= deadline_s:
            reason[0] = "demo duration reached"
            stop.set()

    run_until(stop, tick, supervisor.interval_s)
    notifier.stopping(f"stopping: {reason[0]}")
    pipeline.stop()
    telemetry.stop(reason[0])
    return 0


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
        f"{format_bps(float(encode['bitrate_bps_actual']))}bit/s ({encode['encoder']}) | "
        f"segments {spool['segments']} on disk, {int(spool['bytes']) / 1e6:.1f} MB, "
        f"lost {spool['lost_segments']}" + _describe_uplink(status.get("uplink"))
    )


def _describe_uplink(uplink: dict[str, Any] | None) -> str:
    if uplink is None:
        return ""
    return f" | uploaded {uplink['uploaded']}, backlog {uplink['backlog_segments']}"
