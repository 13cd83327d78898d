"""`station-control demo`: both programs with one command.

Starts mosquitto on a free local port (a throw-away config, as the tests do), the control
centre with its dashboard, a small simulated fleet (some of it in trouble), and one real
station agent on a synthetic camera reporting to the same broker; prints the dashboard's
address and a demo log-in; stops everything cleanly after `--duration` or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from control.cli import stop_on_signals
from control.config import ControlConfig
from control.service import ControlService
from control.simulate import SimOptions, Simulator, write_sim_roster
from control.web.app import WebServer
from control.web.auth import add_user

MOSQUITTO = Path("/usr/sbin/mosquitto")
DEMO_STATION = "DEMO-0001"
READY_TIMEOUT_S = 10.0
AGENT_STOP_S = 30.0  # a clean stop drains the encoder and the uploader

AGENT_TOML = """\
# The demo agent: synthetic camera, local spool and upload target, telemetry to the demo broker.
station_id = "{station}"

[capture]
source = "test:"
width = 1280
height = 720
fps = 30

[encode]
segment_s = 2

[spool]
path = "{output}/spool"
max_bytes = "2GB"
min_free_bytes = 0

[uplink.http]
url = "file://{output}/upstream"

[mqtt]
url = "mqtt://127.0.0.1:{port}"
heartbeat_s = 5
keepalive_s = 10
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    if not MOSQUITTO.exists():
        raise SystemExit(f"{MOSQUITTO} is missing: apt-get install -y mosquitto")
    port = free_port()
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "max_inflight_messages 0",
             f"log_dest file {folder / 'mosquitto.log'}"]  # fmt: skip
    if os.geteuid() == 0:
        lines.insert(0, "user root")  # mosquitto drops root to 'mosquitto' otherwise
    conf = folder / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = subprocess.Popen(  # noqa: S603 - a fixed program and our own config file
        [str(MOSQUITTO), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline_s = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline_s:
        if proc.poll() is not None:
            raise SystemExit(f"mosquitto exited; see {folder / 'mosquitto.log'}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start listening")


def start_agent(output: Path, port: int) -> subprocess.Popen[bytes]:
    config = output / "agent.toml"
    config.write_text(AGENT_TOML.format(station=DEMO_STATION, output=output, port=port))
    agent = shutil.which("station-agent") or str(Path(sys.executable).with_name("station-agent"))
    log = (output / "agent.log").open("ab")
    command = [agent, "run", "--config", str(config)]
    return subprocess.Popen(command, stdout=log, stderr=log)  # noqa: S603 - our own program


def run_demo(args: argparse.Namespace) -> int:
    output: Path = args.output.resolve()
    control = output / "control"
    for folder in (output, control):
        folder.mkdir(parents=True, exist_ok=True)
    stop = stop_on_signals()
    broker, port = start_mosquitto(control)
    url = f"mqtt://127.0.0.1:{port}"
    opts = SimOptions(url, args.stations, heartbeat_s=5.0, keepalive_s=10, faulty=0.15,
                      fault_mean_s=60.0, seed=int(time.time()))  # fmt: skip
    roster = write_sim_roster(control / "roster.csv", opts, never_seen=1)
    with roster.open("a", encoding="utf-8") as fh:
        fh.write(f"{DEMO_STATION},test:,file://{output}/upstream,Demo agent (real),Centre,here\n")
    password = secrets.token_urlsafe(9)
    add_user(control / "users", "demo", "operator", password)
    web_port = args.port if args.port == 0 or port_free(args.port) else 0
    cfg = ControlConfig.model_validate({
        "mqtt": {"url": url, "client_id": "station-control-demo"},
        "store": {"path": str(control / "control.sqlite")},
        "roster": {"path": str(roster)},
        "web": {"port": web_port, "users_file": str(control / "users")},
        "alarms": {"segment_s": 2, "ntp_required": False},  # a laptop may not run NTP
    })  # fmt: skip
    service = ControlService(cfg).start()
    server = WebServer(service).start()
    sim = Simulator(opts).start()
    agent = start_agent(output, port)
    until = "Ctrl-C stops it" if args.duration is None else f"stops in {args.duration:.0f} s"
    watch = Path(sys.executable).with_name("station-control")
    print(
        f"\nstation-control dashboard: {server.url}/   log in as demo / {password}\n"
        f"  {args.stations} simulated stations (some in trouble) and the real agent "
        f"{DEMO_STATION} (log {output / 'agent.log'}, video {output / 'upstream'})\n"
        f"  terminal view: {watch} watch --url {server.url} --user demo\n"
        f"  the demo {until} (Ctrl-C stops it earlier)\n",
        file=sys.stderr,
        flush=True,
    )
    try:
        stop.wait(args.duration)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(AGENT_STOP_S)
        except subprocess.TimeoutExpired:
            agent.kill()
        sim.stop()
        server.stop()
        service.stop()
        broker.terminate()
        broker.wait(10)
    print("demo stopped", file=sys.stderr)
    return 0
