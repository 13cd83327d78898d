"""The `station-agent` command: run, demo, spool, and the technicians' tools."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from agent import __version__, build_id
from agent.core import logs  # first: sets OPENCV_LOG_LEVEL before anything imports cv2
from agent.core.config import ConfigError
from agent.core.redact import redact_logging
from agent.service.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    config_from_dict,
    load_config,
    load_secrets,
    secret_values,
)
from agent.service.runner import serve
from agent.spool.store import Spool, SpoolError
from agent.tools.terminal import narrow_help

log = logging.getLogger("agent")

# The technicians' commands: each module adds its subcommand through `add_parser(subparsers)`.
SERVICE_COMMANDS = ("run", "demo")  # these log at INFO; the tools only warnings and errors
# Imported only when the command line is not the service's: `run` starts without them (~4 MB of
# memory and their imports at every service start).
TOOL_MODULES = ("spool_cli", "health_cli", "mask_cli", "check_cli", "provision_cli", "verify_cli")


class _VersionAction(argparse.Action):
    """`station-agent 0.2.0 (build 0123abcd4567)`: the build (git commit) only on request, as
    asking git takes a moment."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        build = build_id()
        print(f"station-agent {__version__}" + (f" (build {build})" if build else ""))
        parser.exit()


def build_parser(with_tools: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="station-agent",
        description="Polling-station webcam agent: capture, encode, spool, upload, report.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and build")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent (the service)")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="TOML config")
    run.set_defaults(func=_run)

    demo = sub.add_parser("demo", help="the whole pipeline on a synthetic camera, locally")
    demo.add_argument("--duration", type=float, default=None, help="seconds (default: forever)")
    demo.add_argument("--output", type=Path, default=Path("demo-output"), help="output dir")
    demo.set_defaults(func=_demo)

    for name in TOOL_MODULES if with_tools else ():
        importlib.import_module(f"agent.tools.{name}").add_parser(sub)
    narrow_help(parser)  # every --help fits 80 columns
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(with_tools=command not in SERVICE_COMMANDS)
    args = parser.parse_args(argv)
    # journald priorities under systemd; the technicians' commands print their own lines
    logs.configure_logging(verbose=args.verbose, tool=args.command not in SERVICE_COMMANDS)
    redact_logging()  # no log line carries a URL's password or token (agent/core/redact.py)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def demo_config(output: Path) -> AgentConfig:
    """The embedded default: synthetic camera, local spool, local upload target, a station key
    (made under output/keys on the first run) so the recording is signed and verifiable."""
    # (imported here: `run` starts without the technicians' tools)
    from agent.tools.station_key import KEY_NAME, load_or_make_key, write_key_files

    keys = output / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    key, new = load_or_make_key(keys)
    write_key_files(keys, key, new, owner=None)
    return config_from_dict(
        {
            "station_id": "DEMO-0001",
            "capture": {"source": "test:", "width": 1280, "height": 720, "fps": 30},
            "encode": {"segment_s": 2},
            "spool": {
                "path": str(output / "spool"),
                "max_bytes": "2GB",
                "min_free_bytes": 0,
                "signing_key_file": str(keys / KEY_NAME),
            },
            "uplink": {"http": {"url": f"file://{output.resolve() / 'upstream'}"}},
        },
        source="built-in demo config",
    )


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    redact_logging(secret_values(cfg, load_secrets(cfg)))  # the secret files' contents too
    return serve(cfg, status_line=False, config_path=args.config)


def _demo(args: argparse.Namespace) -> int:
    args.output.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(args.output)
    station = args.output.resolve() / "upstream" / cfg.station_id
    print(f"demo: writing under {args.output.resolve()}", file=sys.stderr)
    print(f"demo: the live edge is {station / 'live.m3u8'}", file=sys.stderr)
    code = serve(cfg, status_line=True, duration_s=args.duration)
    try:  # the recording's folder is named by the spool's recording id
        recording_id = Spool.open_read_only(cfg.spool.path).recording_id
    except SpoolError as exc:
        log.debug("no recording to show: %s", exc)
    else:
        print(f"demo: the recording is {station / recording_id / 'archive.m3u8'}", file=sys.stderr)
        from agent.tools.station_key import PUBLIC_NAME

        public = args.output / "keys" / PUBLIC_NAME
        print(
            f"demo: check it with: station-agent verify {station} --key {public}", file=sys.stderr
        )
    return code
