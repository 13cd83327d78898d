"""`station-agent provision`: write this box's config and secrets, take the
reference picture, then run `check`.

    sudo station-agent provision                      # asks for each value
    sudo station-agent provision --station-id AZ-0001 \\
        --camera v4l2:/dev/video0 \\
        --upload-url https://ingest.example.org/stations --upload-token-stdin \\
        --mqtt-url mqtts://broker.example.org:8883 --mqtt-password-stdin \\
        < secrets.txt
    sudo station-agent provision --roster roster.csv --station AZ-0001
    station-agent provision --roster roster.csv --output-dir staged/

Secrets are never taken on the command line: they come from stdin (the upload
token on the first line, the MQTT password on the next), from files
(--upload-token-file, roster columns) or from a hidden prompt. Files are written
0600 (owned by the service user when run as root). A roster is checked whole
first: every problem is listed, nothing is written until there is none.
"""

from __future__ import annotations

import argparse
import getpass
import glob
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from pydantic import SecretStr

from agent.capture.sources import SourceError, grab_frame
from agent.core.config import ConfigError, read_secret
from agent.core.keys import fingerprint
from agent.service.config import DEFAULT_CONFIG_PATH, load_config, load_secrets
from agent.tools.check import SERVICE, CheckOptions, System, sudo_technician, systemd_running
from agent.tools.check_cli import check_and_print, format_line, run_checks
from agent.tools.check_net import check_clock
from agent.tools.provision import (
    CONFIG_NAME,
    DEFAULT_SIZE,
    DEFAULT_SPOOL,
    FIELDS,
    ProvisionError,
    StationValues,
    existing_privacy,
    read_roster,
    roster_values,
    row_values,
    service_owner,
    validate,
    write_station,
)
from agent.tools.station_key import public_key_in, write_keys_file
from agent.tools.terminal import Waiting, camera_hints, fail, permission_hint, wrap
from agent.tools.verify_files import keys_file_line

DEFAULT_DIR = DEFAULT_CONFIG_PATH.parent
REFERENCE_TIMEOUT_S = 15.0  # a USB camera needs a few seconds to open and settle its exposure
SYSTEMCTL_TIMEOUT_S = 90.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "provision",
        help="write this box's config and secrets, take the reference picture, run check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # no "--upload-token SECRET" by abbreviation
    )
    p.add_argument("--station-id", help="e.g. AZ-0001 (letters, digits, . _ -)")
    p.add_argument("--camera", help="v4l2:/dev/video0, rtsp://..., file:..., test:")
    p.add_argument("--width", type=int, help=f"camera width (default {DEFAULT_SIZE[0]})")
    p.add_argument("--height", type=int, help=f"camera height (default {DEFAULT_SIZE[1]})")
    p.add_argument("--fps", type=int, help=f"camera frame rate (default {DEFAULT_SIZE[2]})")
    p.add_argument("--upload-url", help="https://... given by central staff")
    # one way or the other each (checked in run(): argparse's exclusive groups make a usage
    # line it cannot fit in 80 columns)
    p.add_argument(
        "--upload-token-file", type=Path, metavar="FILE", help="read the upload token from FILE"
    )
    p.add_argument(
        "--upload-token-stdin", action="store_true", help="read the upload token from stdin"
    )
    p.add_argument("--mqtt-url", help="mqtts://broker:8883 (optional)")
    p.add_argument("--mqtt-username", help="MQTT user (default: the station id)")
    p.add_argument(
        "--mqtt-password-file", type=Path, metavar="FILE", help="read the password from FILE"
    )
    p.add_argument(
        "--mqtt-password-stdin", action="store_true",
        help="read the MQTT password from stdin (after the upload token, if both)",
    )  # fmt: skip
    p.add_argument("--mqtt-prefix", help="MQTT topic prefix (default: stations)")
    p.add_argument("--spool-path", type=Path, help=f"where video is kept (default {DEFAULT_SPOOL})")
    p.add_argument("--roster", type=Path, help="CSV of stations (provisioning/roster.example.csv)")
    p.add_argument("--station", help="with --roster: provision this box as that row's station")
    p.add_argument(
        "--output-dir", type=Path,
        help=f"where to write (default {DEFAULT_DIR}; with --roster alone: a folder per station)",
    )  # fmt: skip
    p.add_argument(
        "--install-dir", type=Path,
        help=f"where the files will be on the box (default: --output-dir; roster: {DEFAULT_DIR})",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing config")
    p.add_argument("--no-reference", action="store_true", help="do not take a reference picture")
    p.add_argument(
        "--allow-insecure", action="store_true",
        help="accept a token over http://, a password over mqtt:// (sent in clear: tests only)",
    )  # fmt: skip
    p.add_argument("--no-check", action="store_true", help="do not run check afterwards")
    p.add_argument(
        "--json", action="store_true",
        help="print one JSON object at the end instead (needs every value as an option)",
    )  # fmt: skip
    p.set_defaults(func=run)


class Report:
    """What provision tells the technician: lines as they come (80 columns), or with --json
    one object at the end. Errors always go to stderr, with their next step."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.data: dict[str, Any] = {"ok": False, "errors": []}

    def say(self, text: str = "", wrapped: bool = True) -> None:
        if not self.as_json:
            print(wrap(text, indent=2) if wrapped else text, flush=True)

    def error(self, message: str, hints: list[str | None] | None = None) -> int:
        fail(message, [hint for hint in hints or [] if hint])
        self.data["errors"].append(message)
        return 2

    def problems(self, exc: ProvisionError) -> int:
        for problem in exc.problems:
            self.error(problem)
        if len(exc.problems) > 1:
            fail(f"{len(exc.problems)} problems: fix them all, then run the command again")
        return 2

    def done(self, code: int) -> int:
        if self.as_json:
            self.data["ok"] = code == 0
            print(json.dumps(self.data, indent=2))
        return code


def run(args: argparse.Namespace) -> int:
    report = Report(args.json)
    try:
        if args.roster is not None and args.station is None:
            return report.done(stage_roster(args, report))
        if args.station is not None and args.roster is None:
            raise ProvisionError("--station needs --roster")
        for what in ("upload_token", "mqtt_password"):
            if getattr(args, f"{what}_file") and getattr(args, f"{what}_stdin"):
                flag = what.replace("_", "-")
                raise ProvisionError(f"--{flag}-file or --{flag}-stdin, not both")
        values = gather(args, sys.stdin)
    except ProvisionError as exc:
        return report.done(report.problems(exc))
    return report.done(provision_box(values, args, report))


# --- collecting the values -----------------------------------------------------------------


def _flag_name(key: str) -> str:
    return FIELDS[key][0] if key in FIELDS else key


def gather(args: argparse.Namespace, stdin: TextIO) -> StationValues:
    if args.roster is not None:
        rows = read_roster(args.roster)
        for row in rows:
            if row.cells.get("station_id") == args.station:
                return row_values(row, args.roster)
        raise ProvisionError(f"{args.roster}: no row with station_id {args.station!r}")
    interactive = stdin.isatty() and not args.json
    ask = _prompter(interactive)
    station_id = args.station_id or ask("station id (e.g. AZ-0001)", None, "--station-id")
    cameras = sorted(glob.glob("/dev/video*"))
    camera = args.camera or ask(
        "camera", f"v4l2:{cameras[0]}" if cameras else "v4l2:/dev/video0", "--camera"
    )
    upload_url = args.upload_url or ask("upload URL", None, "--upload-url")
    upload_token = _secret(args.upload_token_file, args.upload_token_stdin, stdin, "upload token")
    if upload_token is None and interactive:
        upload_token = _hidden("upload token (not shown; empty for none)")
    mqtt_url = args.mqtt_url or (ask("MQTT URL (empty for none)", "", "") if interactive else None)
    mqtt_password = _secret(
        args.mqtt_password_file, args.mqtt_password_stdin, stdin, "MQTT password"
    )
    if mqtt_url and mqtt_password is None and interactive:
        mqtt_password = _hidden("MQTT password (not shown)")
    username = args.mqtt_username or (station_id if mqtt_url else None)
    values = StationValues(
        station_id=station_id,
        camera=camera,
        upload_url=upload_url,
        width=args.width or DEFAULT_SIZE[0],
        height=args.height or DEFAULT_SIZE[1],
        fps=args.fps or DEFAULT_SIZE[2],
        upload_token=upload_token,
        mqtt_url=mqtt_url or None,
        mqtt_username=username,
        mqtt_password=mqtt_password,
        mqtt_prefix=args.mqtt_prefix,
        spool_path=args.spool_path or DEFAULT_SPOOL,
        allow_insecure=args.allow_insecure,
    )
    validate(values, _install_dir(args), _flag_name)
    return values


def _prompter(interactive: bool) -> Callable[[str, str | None, str], str]:
    def ask(label: str, default: str | None, flag: str) -> str:
        if not interactive:
            raise ProvisionError(f"{flag} is missing (or run provision in a terminal to be asked)")
        while True:
            shown = f" [{default}]" if default else ""
            answer = input(f"{label}{shown}: ").strip() or (default or "")
            if answer or default is not None:
                return answer

    return ask


def _hidden(label: str) -> SecretStr | None:
    answer = getpass.getpass(f"{label}: ").strip()
    return SecretStr(answer) if answer else None


def _secret(path: Path | None, from_stdin: bool, stdin: TextIO, what: str) -> SecretStr | None:
    if path is not None:
        try:
            return read_secret(path, what, private=False)  # copied into a 0600 file
        except ConfigError as exc:
            raise ProvisionError(str(exc)) from None
    if from_stdin:
        line = stdin.readline().strip()
        if not line:
            raise ProvisionError(f"no {what} on stdin (one line each: token, then password)")
        return SecretStr(line)
    return None


def _install_dir(args: argparse.Namespace) -> Path:
    return (args.install_dir or args.output_dir or DEFAULT_DIR).absolute()


# --- one box -------------------------------------------------------------------------------


def provision_box(values: StationValues, args: argparse.Namespace, report: Report) -> int:
    output_dir: Path = (args.output_dir or DEFAULT_DIR).absolute()
    config_path = output_dir / CONFIG_NAME
    report.data["station_id"] = values.station_id
    if config_path.exists() and not args.force:
        return report.error(f"{config_path} exists: add --force to replace it")
    if not writable(output_dir):
        return report.error(f"cannot write to {output_dir}", [permission_hint("provision")])
    # The running service holds the camera and would keep the old config: stop it meanwhile.
    is_service_dir = output_dir == DEFAULT_DIR and systemd_running()
    if is_service_dir:
        _systemctl("stop")
    try:
        return _write_and_check(values, args, output_dir, is_service_dir, report)
    finally:
        if is_service_dir and args.no_check:  # otherwise check has started it again
            _systemctl("restart")


def writable(folder: Path) -> bool:
    """Whether `folder` (or the nearest folder above it that exists) can be written."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK)


def _write_and_check(
    values: StationValues,
    args: argparse.Namespace,
    output_dir: Path,
    is_service_dir: bool,
    report: Report,
) -> int:
    config_path = output_dir / CONFIG_NAME
    frame = None if args.no_reference else take_reference(values, report)
    problems = 1 if frame is None and not args.no_reference else 0
    install_dir = _install_dir(args)
    try:
        written = write_station(
            values, output_dir, install_dir, frame, service_owner(), existing_privacy(config_path)
        )
        cfg = load_config(config_path)
        if install_dir == output_dir:  # secrets staged elsewhere are read where they are now
            load_secrets(cfg)
    except (OSError, ProvisionError, ConfigError) as exc:
        hint = permission_hint("provision") if isinstance(exc, PermissionError) else None
        if is_service_dir and not args.no_check:
            _systemctl("start")
        return report.error(str(exc), [hint])
    for path in written:
        report.say(f"wrote {path} (0600)")
    report.data["written"] = [str(path) for path in written]
    print_station_key(values.station_id, output_dir, report)
    if args.no_check:
        clock = check_clock(None, System())  # the time the picture will show, and NTP
        report.say()
        report.say(format_line(clock), wrapped=False)  # (already wrapped)
        report.data["clock"] = clock.as_dict()
        return problems
    options = CheckOptions(
        config_path=config_path,
        pause_service=is_service_dir,
        technician=sudo_technician(os.environ),
    )
    if report.as_json:
        results = run_checks(options)
        ok = not any(r.result == "FAIL" for r in results)
        report.data["check"] = {"ok": ok, "checks": [r.as_dict() for r in results]}
        return (0 if ok else 1) or problems
    report.say()
    report.say("running check:")
    code = check_and_print(options)
    return code or problems


def take_reference(values: StationValues, report: Report) -> np.ndarray | None:
    try:
        with Waiting(f"taking the reference picture from {values.camera}", REFERENCE_TIMEOUT_S):
            return grab_frame(values.camera, values.width, values.height, REFERENCE_TIMEOUT_S)
    except SourceError as exc:
        report.error(
            f"cannot take the reference picture: {exc}",
            [
                *camera_hints(values.camera),
                "Then run provision again (with --force), or add --no-reference.",
            ],
        )
        return None


def _systemctl(action: str) -> None:
    with Waiting(f"systemctl {action} {SERVICE}", SYSTEMCTL_TIMEOUT_S):
        proc = subprocess.run(  # noqa: S603 - fixed argv
            ["systemctl", action, SERVICE],  # noqa: S607 - systemctl from PATH, as a person would
            capture_output=True,
            text=True,
            timeout=SYSTEMCTL_TIMEOUT_S,
            check=False,
        )
    if proc.returncode != 0:
        print(f"warning: systemctl {action} {SERVICE}: {proc.stderr.strip()}", file=sys.stderr)


# --- many boxes ----------------------------------------------------------------------------


def stage_roster(args: argparse.Namespace, report: Report) -> int:
    """One folder per roster row, for copying to each box (no camera, no check)."""
    if args.output_dir is None:
        raise ProvisionError("--roster without --station needs --output-dir (one folder per row)")
    roster: Path = args.roster
    stations = roster_values(read_roster(roster), roster)  # every row checked before writing
    install_dir = args.install_dir or DEFAULT_DIR
    out: Path = args.output_dir
    existing = [
        f"{out / values.station_id / CONFIG_NAME} exists: add --force to replace it"
        for values in stations
        if (out / values.station_id / CONFIG_NAME).exists() and not args.force
    ]
    if existing:
        raise ProvisionError(*existing)
    staged = []
    for values in stations:
        folder = out / values.station_id
        privacy = existing_privacy(folder / CONFIG_NAME)
        try:
            write_station(values, folder, install_dir, None, None, privacy)
            load_config(folder / CONFIG_NAME)
        except (OSError, ConfigError) as exc:
            raise ProvisionError(f"cannot write {folder}: {exc}") from None
        key = fingerprint(public_key_in(folder))
        report.say(f"wrote {folder}/ ({values.station_id}, station key {key})")
        staged.append({"station_id": values.station_id, "folder": str(folder), "fingerprint": key})
    keys = write_keys_file(out, {v.station_id: public_key_in(out / v.station_id) for v in stations})
    report.say(
        f"{len(stations)} station(s) staged in {out}; on each box copy its folder to {install_dir}"
    )
    report.say(f"the stations' public keys are in {keys}: give it to central staff (for verify)")
    report.data |= {"staged": staged, "keys_file": str(keys)}
    return 0


def print_station_key(station_id: str, folder: Path, report: Report) -> None:
    """What the technician reads aloud, and the line central staff add to their keys file."""
    key = public_key_in(folder)
    line = keys_file_line(station_id, key)
    report.say()
    report.say(f"station key fingerprint: {fingerprint(key)} (read it to central staff)")
    report.say("keys file line for central staff:")
    report.say(f"  {line}")
    report.data["station_key"] = {"fingerprint": fingerprint(key), "keys_file_line": line}
