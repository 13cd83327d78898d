"""What the technicians' commands print (issue 16): 80 columns (--help too), colour only on a
terminal and never with NO_COLOR, progress during long waits, every error with its next step,
--json on every command that reports, the time zone and NTP looked at, the snapshot where the
technician can copy it, the docs a box gets and the README's tables."""

from __future__ import annotations

import argparse
import io
import json
import os
import pty
import re
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.cli import build_parser
from agent.core.events import RecordingSink
from agent.service.config import config_from_dict
from agent.tools import check_cli, mask_cli, provision_cli, spool_cli
from agent.tools.check import (
    CAMERA_BUSY_FIX,
    CameraSample,
    CheckResult,
    System,
    Technician,
    check_camera,
    check_picture,
    sudo_technician,
)
from agent.tools.check_net import check_clock
from agent.tools.terminal import Waiting, use_colour, wrap
from tests.peers.config import agent_config, write_toml
from tests.test_spool import open_spool, segment

REPO = Path(__file__).parent.parent
WIDTH = 80
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def agent(*argv: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=os.environ | (env or {}),
        **kw,
    )


# --- 80 columns ---------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_help_fits_80_columns_even_on_a_wide_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    parsers = list(_parsers(build_parser()))
    assert len(parsers) >= 11  # station-agent, run, demo, spool ls/verify, health, mask, ...
    for parser in parsers:
        wide = [line for line in parser.format_help().splitlines() if len(line) > WIDTH]
        assert not wide, (parser.prog, wide)


def test_wrap_keeps_words_and_fits_long_paths() -> None:
    text = "PASS  picture     picture fine; snapshot /var/lib/station-agent/" + "x" * 50 + ".jpg"
    lines = wrap(text, indent=18).splitlines()
    assert all(len(line) <= WIDTH for line in lines), lines
    assert lines[-1].strip().endswith(".jpg") and "/var/lib" in lines[-1]  # the path whole
    assert wrap("a" * 90, indent=4) == "a" * 90  # longer than a line: left as it is


def test_check_lines_wrap_under_their_column() -> None:
    result = CheckResult("spool", "FAIL", "word " * 40, "do this " * 30)
    lines = check_cli.format_line(result).splitlines()
    assert lines[0].startswith("FAIL  spool       word")
    assert all(len(line) <= WIDTH for line in lines)
    assert all(line.startswith(" " * 18) for line in lines[1:])
    assert any(line.startswith(" " * 18 + "fix: do this") for line in lines)


# --- colour -------------------------------------------------------------------------------


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color() -> None:
    assert use_colour(Tty(), {})
    assert not use_colour(Tty(), {"NO_COLOR": "1"})
    assert not use_colour(Tty(), {"TERM": "dumb"})
    assert not use_colour(io.StringIO(), {})
    assert use_colour(Tty(), {"NO_COLOR": ""})  # no-color.org: set and not empty
    line = check_cli.format_line(CheckResult("mqtt", "FAIL", "x"), colour=True)
    assert line.startswith("\x1b[31;1mFAIL\x1b[0m  mqtt")


def _in_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """The output of `station-agent ARGV` run in a pseudo-terminal, as a technician sees it."""
    main, child = pty.openpty()
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "agent", *argv],
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
        env=os.environ | env,
    )
    os.close(child)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([main], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(60)
    os.close(main)
    return b"".join(chunks).decode()


def test_check_in_a_terminal_is_coloured_unless_no_color(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "config.toml", {"station_id": "bad id!"})  # fast: one FAIL
    env = {k: "" for k in ("NO_COLOR",)} | {"TERM": "xterm"}
    coloured = _in_a_terminal(["check", "--config", str(config)], env)
    assert "\x1b[31;1mFAIL\x1b[0m  config" in coloured, coloured
    plain = _in_a_terminal(["check", "--config", str(config)], env | {"NO_COLOR": "1"})
    assert "FAIL  config" in plain and "\x1b[" not in plain, plain
    piped = agent("check", "--config", str(config), env={"TERM": "xterm"})
    assert "FAIL  config" in piped.stdout and "\x1b[" not in piped.stdout
    for text in (coloured, plain, piped.stdout):
        visible = [ANSI.sub("", line.rstrip("\r")) for line in text.splitlines()]
        assert all(len(line) <= WIDTH for line in visible), visible


# --- progress -----------------------------------------------------------------------------


class Seen(io.StringIO):
    """A stream that says when something was written to it."""

    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.written = threading.Event()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty

    def write(self, text: str) -> int:
        n = super().write(text)
        self.written.set()
        return n


def test_a_long_wait_is_announced_and_a_short_one_is_not() -> None:
    quiet = Seen()
    with Waiting("opening the camera", 15, quiet, after_s=10.0):
        pass
    assert quiet.getvalue() == ""
    long = Seen()
    with Waiting("opening the camera", 15, long, after_s=0.01, every_s=0.01):
        assert long.written.wait(10)
    assert long.getvalue().startswith("opening the camera... (up to 15 s)\n")
    assert all(len(line) <= WIDTH for line in long.getvalue().splitlines())
    tty = Seen(tty=True)
    with Waiting("checking camera", 20, tty, after_s=0.01):
        assert tty.written.wait(10)
    assert tty.getvalue().startswith("\r\x1b[Kchecking camera... (up to 20 s)")
    assert tty.getvalue().endswith("\r\x1b[K")  # erased before the result is printed


# --- errors with their next step ---------------------------------------------------------


def test_a_camera_that_does_not_open_names_the_next_steps(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path / "config.toml",
        agent_config(tmp_path, capture={"source": "v4l2:/dev/video-missing"}),
    )
    for argv in (
        ["mask", "--config", str(config), "--preview", str(tmp_path / "p.png")],
        ["health", "v4l2:/dev/video-missing", "--duration-s", "1"],
    ):
        done = agent(*argv)
        assert done.returncode in (1, 2), done
        assert "cannot open v4l2:/dev/video-missing" in done.stderr
        assert "ls /dev/video*" in done.stderr, done.stderr
        assert "sudo systemctl stop station-agent" in done.stderr, done.stderr
        assert "WARN:" not in done.stderr and "Traceback" not in done.stderr
        assert all(len(line) <= WIDTH for line in done.stderr.splitlines()), done.stderr


def test_check_says_the_service_may_hold_a_camera_that_does_not_open(tmp_path: Path) -> None:
    cfg = config_from_dict(agent_config(tmp_path, capture={"source": "v4l2:/dev/null"}))
    result, sample = check_camera(cfg, System())
    assert result.result == "FAIL" and sample is None
    assert result.fix == CAMERA_BUSY_FIX and "--pause-service" in CAMERA_BUSY_FIX


def _mask(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    mask_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["mask", *argv])
    code = int(args.func(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def station(tmp_path: Path) -> tuple[Path, Path]:
    import cv2

    config = write_toml(tmp_path / "config.toml", agent_config(tmp_path))
    image = tmp_path / "snap.png"
    assert cv2.imwrite(str(image), np.full((240, 320, 3), 128, np.uint8))
    return config, image


def test_mask_names_its_own_option_for_large_masks(
    station: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, image = station
    preview = str(tmp_path / "p.png")
    argv = ["--config", str(config), "--image", str(image), "--preview", preview]
    code, _, err = _mask([*argv, "--add-rect", "0,0,1,0.95", "--write"], capsys)
    assert code == 2 and "add --confirm-large-masks" in err, err
    code, out, _ = _mask([*argv, "--add-rect", "0,0,1,0.95", "--confirm-large-masks"], capsys)
    assert code == 0 and "95.1%" in out


def test_mask_json(
    station: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, image = station
    argv = ["--config", str(config), "--image", str(image), "--preview", str(tmp_path / "p.png")]
    code, out, _ = _mask([*argv, "--add-rect", "0,0.5,0.25,1", "--write", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["saved"] is True
    assert report["masks"] == [{"rect": [0.0, 0.5, 0.25, 1.0], "fill": "solid"}]
    assert report["masked_share"] == pytest.approx(0.125, abs=0.01)
    assert report["snapshot"] == {"width": 320, "height": 240}
    code, out, _ = _mask(["--config", str(tmp_path / "none.toml"), "--json"], capsys)
    assert code == 2 and json.loads(out)["ok"] is False


# --- provision ----------------------------------------------------------------------------


def _provision(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    provision_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["provision", *argv])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO(""))
        code = int(args.func(args))
    out = capfd.readouterr()
    return code, out.out, out.err


def _roster(folder: Path, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    roster = folder / "roster.csv"
    roster.write_text("station_id,camera,width,upload_url\n" + "\n".join(rows) + "\n")
    return roster


def test_every_roster_problem_in_one_run_in_plain_words(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    roster = _roster(
        tmp_path / "usb",
        [
            "AZ-0001,test:,1280,https://ingest.example.org/stations",
            "AZ 0002,test:,12x0,https://ingest.example.org/stations",  # two problems
            "AZ-0003,test:,1280,ftp://x",
            "AZ-0001,test:,1280,https://ingest.example.org/stations",  # again
        ],
    )
    code, _, err = _provision(["--roster", str(roster), "--output-dir", str(tmp_path / "s")], capfd)
    assert code == 2 and not (tmp_path / "s").exists()
    lines = err.strip().splitlines()
    assert lines[:-1] == [line for line in lines if line.startswith("error: roster.csv row")]
    assert any("row 3, column width: '12x0' is not a whole number" in line for line in lines)
    station_id = next(line for line in lines if "row 3, column station_id" in line)
    assert "letters" in station_id and "^[" not in station_id and "pattern" not in station_id
    assert any("row 4, column upload_url" in line for line in lines)
    assert any("row 5, column station_id: 'AZ-0001' is also in row 2" in line for line in lines)
    assert lines[-1] == "error: 4 problems: fix them all, then run the command again"


def as_nobody(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """`station-agent ARGS` run as an unprivileged user (uid/gid 65534), as a technician
    who forgot sudo; skips without root or setpriv."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    return subprocess.run(
        [
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "agent",
            *args,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd="/",
    )


def test_provision_without_sudo_says_so() -> None:
    done = as_nobody(
        "provision", "--station-id", "AZ-0001", "--camera", "test:",
        "--upload-url", "https://ingest.example.org/stations", "--no-check",
        timeout_s=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "error: cannot write to /etc/station-agent" in done.stderr
    assert "Run it with sudo: `sudo station-agent provision" in done.stderr


def test_check_without_sudo_says_so(tmp_path: Path) -> None:
    """The config is the service's (0600): read without sudo, the fix is the sudo."""
    config = write_toml(tmp_path / "config.toml", agent_config(tmp_path))
    config.chmod(0o600)
    tmp_path.chmod(0o755)
    done = as_nobody("check", "--config", str(config), timeout_s=120)
    assert done.returncode == 1
    fail = done.stdout.split("FAIL  config", 1)[1].split("SKIP", 1)[0]
    assert "Permission" in fail and "Run it with sudo: `sudo station-agent check" in " ".join(
        fail.split()
    ), done.stdout
    assert "provision` again" not in fail


def test_provision_json_and_the_clock_line(capfd: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="p", dir="/tmp") as short:  # a box's path lengths
        _provision_json_and_clock(Path(short), capfd)


def _provision_json_and_clock(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "etc"
    argv = [
        "--station-id", "AZ-0001", "--camera", "test:", "--width", "320", "--height", "240",
        "--upload-url", f"file://{tmp_path / 'up'}", "--spool-path", str(tmp_path / "spool"),
        "--output-dir", str(out_dir), "--no-check",
    ]  # fmt: skip
    code, out, _ = _provision(argv, capfd)
    assert code in (0, 1)
    assert re.search(r"^(PASS|WARN)  clock       .*time zone", out, re.M), out
    assert "keys file line for central staff:\n  AZ-0001," in out
    assert all(len(line) <= WIDTH for line in out.splitlines()), out
    code, out, _ = _provision([*argv, "--force", "--json"], capfd)
    report = json.loads(out)
    assert report["station_id"] == "AZ-0001" and report["errors"] == []
    assert str(out_dir / "config.toml") in report["written"]
    assert report["station_key"]["keys_file_line"].startswith("AZ-0001,")
    assert report["clock"]["name"] == "clock" and "time zone" in report["clock"]["detail"]
    roster = _roster(tmp_path / "usb", ["AZ-0007,test:,320,https://ingest.example.org/s"])
    code, out, _ = _provision(
        ["--roster", str(roster), "--output-dir", str(tmp_path / "staged"), "--json"], capfd
    )
    staged = json.loads(out)
    assert code == 0 and staged["ok"] and staged["staged"][0]["station_id"] == "AZ-0007"


# --- the clock ----------------------------------------------------------------------------


def _system(ntp: bool | None, zone: str | None, timedatectl: str = "") -> System:
    return System(
        run=lambda argv, _t: (0, timedatectl) if argv[0] == "timedatectl" else (1, ""),
        systemd=lambda: bool(timedatectl),
        ntp_synchronized=lambda: ntp,
        time_zone=lambda: zone,
    )


def test_clock_looks_at_ntp_and_the_time_zone() -> None:
    good = check_clock(None, _system(True, "Europe/Berlin"))
    assert good.result == "PASS" and "NTP synchronised" in good.detail
    assert "time zone Europe/Berlin (UTC" in good.detail
    assert good.data["time_zone"] == "Europe/Berlin"
    utc = check_clock(None, _system(True, "Etc/UTC"))
    assert utc.result == "WARN" and "sudo timedatectl set-timezone" in (utc.fix or "")
    unset = check_clock(None, _system(True, None))
    assert unset.result == "WARN" and "time zone not set" in unset.detail
    # the kernel's word (adjtimex) first, without systemd too
    kernel = check_clock(None, _system(False, "Europe/Berlin", timedatectl="yes"))
    assert kernel.result == "WARN" and "set-ntp true" in (kernel.fix or "")
    both = check_clock(None, _system(False, "UTC"))
    assert "set-ntp true" in (both.fix or "") and "set-timezone" in (both.fix or "")


# --- the snapshot, where the technician can copy it -----------------------------------------


def test_snapshot_goes_to_the_sudo_users_home(tmp_path: Path) -> None:
    home = tmp_path / "home" / "tech"
    home.mkdir(parents=True)
    environ = {"SUDO_UID": "1234", "SUDO_GID": "1235", "SUDO_USER": "tech"}
    assert sudo_technician(environ, home_of=lambda uid: home) == Technician(home, 1234, 1235)
    assert sudo_technician({}, home_of=lambda uid: home) is None
    assert sudo_technician(environ | {"SUDO_UID": "0"}, home_of=lambda uid: home) is None
    if os.geteuid() != 0:
        pytest.skip("giving the file to another user needs root")
    cfg = config_from_dict(agent_config(tmp_path))
    frame = np.full((240, 320, 3), 100, np.uint8)
    sample = CameraSample([frame], 320, 240, 15.0)
    result = check_picture(cfg, sample, None, System(), Technician(home, 1234, 1235))
    snapshot = Path(result.data["snapshot"])
    assert snapshot.parent == home and snapshot.name.startswith("check-TEST-0001-")
    st = snapshot.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 1235, 0o600)


# --- spool verify --json --------------------------------------------------------------------


def test_spool_verify_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = open_spool(tmp_path, 10**9, RecordingSink())
    for tag in range(3):
        spool.add(segment(400, tag))
    spool.close()
    parser = argparse.ArgumentParser()
    spool_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["spool", "verify", "--spool", str(tmp_path), "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["segments"] == 3 and report["problems"] == []
    path = tmp_path / "segments" / "00000001.ts"
    path.write_bytes(b"X" + path.read_bytes()[1:])
    assert args.func(args) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and "SHA-256" in report["problems"][0]


# --- what a box gets, and the README ------------------------------------------------------


def _guide_docs() -> set[str]:
    text = (REPO / "docs" / "technician-guide.md").read_text()
    linked = set(re.findall(r"\]\(([\w-]+\.md)\)", text))
    return linked | set(re.findall(r"docs/([\w-]+\.md)", text))


def test_install_copies_every_doc_the_guide_links(tmp_path: Path) -> None:
    docs = _guide_docs()
    assert {"privacy-masks.md", "verification.md"} <= docs
    done = subprocess.run(
        [
            "bash",
            str(REPO / "provisioning" / "install.sh"),
            "--dry-run",
            "--root",
            str(tmp_path),
            "--python",
            sys.executable,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for doc in docs | {"technician-guide.md"}:
        assert f"would: install {tmp_path}/opt/station-agent/docs/{doc} " in done.stdout, doc


def test_readme_lists_every_command_and_document() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    for command in ("run", "demo", "spool ls", "spool verify", "health", "mask", "check",
                    "provision", "verify"):  # fmt: skip
        assert f"| `station-agent {command}" in table, command
    documents = readme.split("## Documents", 1)[1].split("\n## ", 1)[0]
    for doc in sorted(p.name for p in (REPO / "docs").glob("*.md")):
        assert f"docs/{doc}" in documents, doc


def test_operations_does_not_send_anyone_to_va_api() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    assert "char-drm" not in text and "SupplementaryGroups=render" not in text
    for line in text.splitlines():
        if "VA-API" in line:
            assert "not" in line, line
