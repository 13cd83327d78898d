"""`station-agent check`: run the pre-flight list in order and print it.

    sudo station-agent check --pause-service
    station-agent check [--config FILE] [--json] [--snapshot-dir DIR]

Each line: PASS / WARN / FAIL (SKIP when what it needs failed earlier), the
check's name, what was measured and, below a WARN or FAIL, the fix. Exit code 0
only when nothing FAILs. Run through sudo, the masked snapshot goes to your home
folder (yours, to copy with scp).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from agent.core.config import Secrets
from agent.service.config import DEFAULT_CONFIG_PATH, AgentConfig, secret_values
from agent.tools import check_net
from agent.tools.check import (
    DEFAULT_HOURS,
    LIMITS_S,
    SERVICE,
    CameraSample,
    CheckOptions,
    CheckResult,
    bounded,
    check_camera,
    check_config,
    check_encoder,
    check_picture,
    check_service,
    check_spool,
    redact_result,
    sudo_technician,
)
from agent.tools.check_rtmp import RTMP_LIMIT_S, check_rtmp
from agent.tools.station_key import SIGNING_LIMIT_S, check_signing
from agent.tools.terminal import Waiting, paint, use_colour, wrap

NEED_CONFIG = (
    "camera", "picture", "encoder", "upload", "throughput", "mqtt", "clock", "spool", "signing",
)  # fmt: skip
STOP_START_TIMEOUT_S = 90.0  # TimeoutStartSec of the unit is 60 s
DETAIL_COLUMN = 18  # "PASS  throughput  " : where the detail and the fix start


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check",
        help="pre-flight check of this box: camera, picture, encoder, upload, MQTT, clock, disk",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="TOML config")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument(
        "--snapshot-dir", type=Path, metavar="DIR",
        help="where to save the masked camera snapshot (default: next to the spool, or /tmp)",
    )  # fmt: skip
    p.add_argument(
        "--hours", type=float, default=DEFAULT_HOURS,
        help=f"hours of video the spool disk must hold at the top rung (default {DEFAULT_HOURS:g})",
    )  # fmt: skip
    p.add_argument(
        "--public-key", metavar="KEY",
        help="the station's public key as central staff have it (base64, or a file): must match",
    )  # fmt: skip
    p.add_argument(
        "--pause-service", action="store_true",
        help="stop the running service during the checks (it holds the camera), start it after",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = CheckOptions(
        config_path=args.config,
        snapshot_dir=args.snapshot_dir,
        hours=args.hours,
        pause_service=args.pause_service,
        public_key=args.public_key,
        technician=sudo_technician(os.environ),
    )
    return check_and_print(options, as_json=args.json)


def check_and_print(options: CheckOptions, as_json: bool = False) -> int:
    """Runs the list, prints it (lines as they come, or one JSON object); the exit code."""
    if not as_json:
        print(wrap(f"station-agent check: {options.config_path}", indent=4), flush=True)
    results = run_checks(options, on_result=None if as_json else print_line)
    ok = not any(r.result == "FAIL" for r in results)
    if as_json:
        print(json.dumps({"ok": ok, "checks": [r.as_dict() for r in results]}, indent=2))
    else:
        print(summary(results))
    return 0 if ok else 1


def format_line(result: CheckResult, colour: bool = False) -> str:
    """The result at most 80 columns wide: the detail and the fix wrap under column 18."""
    head = f"{result.result:<4}  {result.name:<10}  "
    text = wrap(head + result.detail, indent=DETAIL_COLUMN)
    if colour:
        text = paint(result.result, True) + text[len(result.result) :]
    if result.fix and result.result in ("WARN", "FAIL"):
        fix = wrap(f"fix: {result.fix}", indent=DETAIL_COLUMN, first_indent=DETAIL_COLUMN)
        text += "\n" + fix
    return text


def print_line(result: CheckResult) -> None:
    print(format_line(result, use_colour(sys.stdout)), flush=True)


def summary(results: list[CheckResult]) -> str:
    counts = {kind: sum(r.result == kind for r in results) for kind in ("FAIL", "WARN", "PASS")}
    text = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    if counts["FAIL"]:
        return f"result: {text}. Fix the FAIL lines, then run check again."
    if counts["WARN"]:
        return f"result: {text}. Ready; read the WARN lines."
    return f"result: {text}. Ready."


def run_checks(
    options: CheckOptions, on_result: Callable[[CheckResult], None] | None = None
) -> list[CheckResult]:
    """The whole list in order; `on_result` sees each result as soon as it is known."""
    system = options.system
    results: list[CheckResult] = []

    hidden: list[str] = []  # the station's secrets, once the config is loaded

    def add(result: CheckResult) -> None:
        result = redact_result(result, hidden)
        results.append(result)
        if on_result is not None:
            on_result(result)

    loaded: list[tuple[AgentConfig | None, Secrets | None]] = []

    def config_check() -> CheckResult:
        result, cfg, secrets = check_config(options.config_path)
        loaded.append((cfg, secrets))
        return result

    add(checking("config", LIMITS_S["config"], config_check))
    cfg, secrets = loaded[0] if loaded else (None, None)
    if cfg is not None and secrets is not None:
        hidden.extend(secret_values(cfg, secrets))
    paused = options.pause_service and system.systemd()
    if paused:  # one program at a time can read a USB camera
        system.run(["systemctl", "stop", SERVICE], STOP_START_TIMEOUT_S)
    if cfg is None or secrets is None:
        for name in NEED_CONFIG:
            if name == "clock":  # timedatectl needs no config
                add(checking(name, LIMITS_S[name], lambda: check_net.check_clock(None, system)))
            else:
                add(CheckResult(name, "SKIP", "skipped: config invalid"))
    else:
        _config_checks(cfg, secrets, options, add)
    if paused:
        system.run(["systemctl", "start", SERVICE], STOP_START_TIMEOUT_S)
    add(checking("service", LIMITS_S["service"], lambda: check_service(system)))
    return results


def checking(name: str, limit_s: float, work: Callable[[], CheckResult]) -> CheckResult:
    """One check, within its limit (`bounded`), saying so on stderr if it takes a while."""
    with Waiting(f"checking {name}", limit_s):
        return bounded(name, limit_s, work)


def _config_checks(
    cfg: AgentConfig, secrets: Secrets, options: CheckOptions, add: Callable[[CheckResult], None]
) -> None:
    system = options.system
    samples: list[CameraSample | None] = []

    def camera() -> CheckResult:
        result, sample = check_camera(cfg, system)
        samples.append(sample)
        return result

    result = checking("camera", LIMITS_S["camera"], camera)
    if result.result == "FAIL" and not options.pause_service and _service_active(options):
        fix = (
            f"The running service is using the camera: run `sudo station-agent check "
            f"--pause-service` (stops the stream for the checks). Otherwise: {result.fix}"
        )
        result = replace(result, fix=fix)
    add(result)
    sample = samples[0] if samples else None
    snapshot_dir = options.snapshot_dir
    technician = options.technician
    add(
        checking(
            "picture",
            LIMITS_S["picture"],
            lambda: check_picture(cfg, sample, snapshot_dir, system, technician),
        )
    )
    add(checking("encoder", LIMITS_S["encoder"], lambda: check_encoder(cfg, sample, system)))
    upload = checking("upload", LIMITS_S["upload"], lambda: check_net.check_upload(cfg, secrets))
    add(upload)
    if upload.result == "FAIL":
        add(CheckResult("throughput", "SKIP", "skipped: the upload check failed"))
    else:
        add(
            checking(
                "throughput",
                LIMITS_S["throughput"],
                lambda: check_net.check_throughput(cfg, secrets, system),
            )
        )
    for name, _ in cfg.uplink.rtmp_outputs():  # one line per live output; none without any
        add(checking("rtmp", RTMP_LIMIT_S, partial(check_rtmp, cfg, secrets, name)))
    add(checking("mqtt", LIMITS_S["mqtt"], lambda: check_net.check_mqtt(cfg, secrets)))
    add(checking("clock", LIMITS_S["clock"], lambda: check_net.check_clock(cfg, system)))
    add(checking("spool", LIMITS_S["spool"], lambda: check_spool(cfg, options.hours)))
    add(
        checking(
            "signing", SIGNING_LIMIT_S, lambda: check_signing(cfg, secrets, options.public_key)
        )
    )


def _service_active(options: CheckOptions) -> bool:
    system = options.system
    return system.systemd() and system.run(["systemctl", "is-active", SERVICE], 10.0)[1] == "active"
