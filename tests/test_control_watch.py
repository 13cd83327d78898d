"""`station-control watch`: the overview in 80 columns, problems first, from the dashboard's API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from control.centre import OverviewQuery
from control.watch import WIDTH, render
from control.web.app import WebServer
from control.web.auth import add_user
from tests.peers.agent import wait_until
from tests.peers.control import ControlFactory, SimulatorFactory, write_roster
from tests.peers.mosquitto import Mosquitto

PASSWORD = "correct horse battery"  # noqa: S105 - a test user's password


def test_render_fits_80_columns_problems_first() -> None:
    long_name = {"title": "a problem with a very long title indeed", "cause": "x",
                 "severity": "error", "acked": False}  # fmt: skip
    ov = {
        "total": 3, "matching": 3,
        "counts": {"offline": 1, "stale": 0, "problem": 1, "never_seen": 0, "ok": 1},
        "rows": [
            {"station_id": "AZ-0001-WITH-A-LONG-ID", "state": "offline", "problems": [long_name],
             "rung": "", "live_lag_s": None, "seen_wall_s": 1000.0},
            {"station_id": "AZ-0002", "state": "problem", "problems": [long_name, long_name],
             "rung": "720p30", "live_lag_s": 3.2, "seen_wall_s": 1999.0},
            {"station_id": "AZ-0003", "state": "ok", "problems": [], "rung": "720p30",
             "live_lag_s": 2.0, "seen_wall_s": 1999.0},
        ],
    }  # fmt: skip
    text = render(ov, 2000.0, rows=2)
    lines = text.splitlines()
    assert all(len(line) <= WIDTH for line in lines), [len(x) for x in lines]
    assert lines[3].startswith("AZ-0001-WIT… OFFLINE    a problem with a very long t… -")
    assert lines[4].startswith("AZ-0002      problem    ")
    assert lines[-1] == "... and 1 more (the web overview filters and pages)"


def test_watch_once_against_a_running_dashboard(
    mosquitto: Mosquitto,
    control_factory: ControlFactory,
    simulator_factory: SimulatorFactory,
    tmp_path: Path,
) -> None:
    roster = write_roster(tmp_path / "roster.csv", [("AZ-0404", "Not installed", "East")])
    add_user(tmp_path / "control" / "users", "maria", "read-only", PASSWORD)
    svc = control_factory(mosquitto, roster={"path": str(roster)})
    server = WebServer(svc).start()
    sim = simulator_factory(mosquitto, 3)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    os.chmod(password_file, 0o600)
    try:
        assert wait_until(lambda: svc.centre.overview(OverviewQuery())["counts"]["ok"] == 3, 20)
        sim.set_fault("SIM-0002", "frozen")
        assert wait_until(lambda: svc.centre.overview(OverviewQuery())["counts"]["problem"], 10)
        out = subprocess.run(
            [sys.executable, "-m", "control", "watch", "--url", server.url, "--user", "maria",
             "--password-file", str(password_file), "--once"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    finally:
        server.stop()
    lines = out.stdout.splitlines()
    assert all(len(line) <= WIDTH for line in lines)
    assert "problem 1" in lines[1] and "never seen 1" in lines[1] and "fine 2" in lines[1]
    assert lines[3].split()[:4] == ["SIM-0002", "problem", "picture", "frozen"]
    assert lines[4].split()[:3] == ["AZ-0404", "never", "seen"]
    assert [line.split()[0] for line in lines[5:]] == ["SIM-0001", "SIM-0003"]
