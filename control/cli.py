"""The `station-control` command: serve, simulate, watch, user, report, demo.

station-control serve --config /etc/station-control/control.toml
station-control simulate --broker mqtt://127.0.0.1:1883 --stations 1000
station-control watch --config /etc/station-control/control.toml
station-control user add maria --role operator --users-file /etc/station-control/users
station-control report --config ... --day 2024-05-01 > report.csv
station-control demo
"""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from agent.core.config import ConfigError
from control.config import DEFAULT_CONFIG_PATH, load_control_config
from control.roster import RosterError

Command = Callable[[argparse.Namespace], int]


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"control centre config (default {DEFAULT_CONFIG_PATH})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="station-control", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="ingest telemetry and serve the dashboard")
    _config_arg(serve)
    serve.set_defaults(func=_serve)

    sim = sub.add_parser("simulate", help="a simulated fleet on an MQTT broker")
    sim.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    sim.add_argument("--stations", type=int, default=100, help="how many (default 100)")
    sim.add_argument("--prefix", default="stations", help="topic prefix (default stations)")
    sim.add_argument("--id-prefix", default="SIM-", help="station ids: PREFIX0001, ...")
    sim.add_argument("--heartbeat-s", type=float, default=10.0, help="heartbeat interval")
    sim.add_argument("--keepalive-s", type=int, default=10, help="MQTT keepalive")
    sim.add_argument(
        "--faulty",
        type=float,
        default=0.05,
        help="share of stations in trouble at any time (default 0.05)",
    )
    sim.add_argument("--fault-mean-s", type=float, default=120.0, help="mean fault duration")
    sim.add_argument(
        "--own-connections",
        type=int,
        default=200,
        help="up to this many stations get their own connection and last will",
    )
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--duration", type=float, default=None, help="seconds (default: forever)")
    sim.add_argument(
        "--command-key",
        type=Path,
        default=None,
        help="the control centre's public key: answer only signed commands",
    )
    sim.add_argument(
        "--roster-out",
        type=Path,
        default=None,
        help="write a roster CSV of the simulated stations (names, regions)",
    )
    sim.add_argument(
        "--burst",
        type=int,
        default=None,
        metavar="N",
        help="publish statuses, events and N heartbeats per station at once, exit",
    )
    sim.set_defaults(func=_simulate)

    watch = sub.add_parser("watch", help="the overview in a terminal (80 columns)")
    _config_arg(watch)
    watch.add_argument("--url", default=None, help="the dashboard (default: from --config)")
    watch.add_argument("--user", default=getpass.getuser(), help="dashboard user name")
    watch.add_argument(
        "--password-file",
        type=Path,
        default=None,
        help="read the password from this file (default: ask)",
    )
    watch.add_argument("--once", action="store_true", help="print once and exit")
    watch.add_argument("--interval-s", type=float, default=2.0)
    watch.add_argument("--region", default="")
    watch.add_argument("--rows", type=int, default=None, help="rows (default: fit the terminal)")
    watch.set_defaults(func=_watch)

    user = sub.add_parser("user", help="manage dashboard users")
    user_sub = user.add_subparsers(dest="action", required=True)
    add = user_sub.add_parser("add", help="add or change a user (password read from stdin)")
    add.add_argument("name")
    add.add_argument("--role", choices=("read-only", "operator"), default="read-only")
    add.add_argument("--users-file", type=Path, required=True)
    add.set_defaults(func=_user_add)

    report = sub.add_parser("report", help="the day's station report as CSV on stdout")
    _config_arg(report)
    report.add_argument("--day", default=None, help="YYYY-MM-DD (UTC; default today)")
    report.set_defaults(func=_report)

    demo = sub.add_parser("demo", help="mosquitto, the control centre, a fleet and an agent")
    demo.add_argument("--duration", type=float, default=None, help="seconds (default: forever)")
    demo.add_argument("--output", type=Path, default=Path("demo-output"))
    demo.add_argument("--stations", type=int, default=24)
    demo.add_argument("--port", type=int, default=8080, help="dashboard port (0: any free)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Command = args.func
    try:
        return func(args)
    except (ConfigError, RosterError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _serve(args: argparse.Namespace) -> int:
    from control.web.app import serve

    return serve(load_control_config(args.config))


def _simulate(args: argparse.Namespace) -> int:
    from control.simulate import SimOptions, Simulator, burst, load_public_key, write_sim_roster

    key = None if args.command_key is None else load_public_key(args.command_key)
    opts = SimOptions(
        args.broker,
        args.stations,
        prefix=args.prefix,
        id_prefix=args.id_prefix,
        heartbeat_s=args.heartbeat_s,
        keepalive_s=args.keepalive_s,
        faulty=args.faulty,
        fault_mean_s=args.fault_mean_s,
        own_connections=args.own_connections,
        seed=args.seed,
        command_key=key,
    )
    if args.roster_out is not None:
        write_sim_roster(args.roster_out, opts)
    if args.burst is not None:
        sent = burst(opts, args.burst)
        print(f"published {sent} messages", flush=True)
        return 0
    sim = Simulator(opts)
    stop = stop_on_signals()
    sim.start()
    print(f"simulating {args.stations} stations on {args.broker}", file=sys.stderr, flush=True)
    stop.wait(args.duration)
    sim.stop()
    return 0


def _watch(args: argparse.Namespace) -> int:
    from control.config import ControlConfig
    from control.watch import watch

    cfg = ControlConfig() if args.url else load_control_config(args.config)
    return watch(cfg, args)


def _user_add(args: argparse.Namespace) -> int:
    from control.web.auth import add_user, read_new_password

    password = read_new_password(sys.stdin)
    add_user(args.users_file, args.name, args.role, password)
    print(f"{args.users_file}: {args.name} ({args.role}) saved", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    from control.report import day_report_csv, parse_day
    from control.roster import read_roster
    from control.store import Store

    cfg = load_control_config(args.config)
    store = Store(cfg.store.path)
    try:
        records = store.station_records()
        if cfg.roster.path is not None:
            for sid, entry in read_roster(cfg.roster.path).items():
                records.setdefault(sid, {"name": entry.name, "region": entry.region})
        sys.stdout.write(day_report_csv(store, records, parse_day(args.day)))
    finally:
        store.close()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from control.demo import run_demo

    return run_demo(args)
