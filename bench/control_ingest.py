"""How fast the control centre ingests, and how fast its overview answers, at fleet scale.

    .venv/bin/python -m bench.control_ingest            # 100,000 stations (a few minutes)
    .venv/bin/python -m bench.control_ingest --quick    # 2,000 stations

Against a real mosquitto (started here like the tests do, queueing for offline sessions):
1. Both consumers get a persistent session first: `mosquitto_sub` (the baseline, writing to
   /dev/null; subscribed at QoS 0, as Debian 12's mosquitto_sub 2.0.11 stalls after 20 queued
   QoS 1 messages) and the control centre's ingest (QoS 1 for statuses and events, as it runs
   in production). Both go away.
2. The simulator (`station-control simulate --burst`) publishes the stream of N stations:
   each one's retained status (QoS 1), an agent_started event (QoS 1) and K heartbeats
   (QoS 0): M = N x (2 + K) messages, queued by the broker for both sessions.
3. Each consumer comes back alone and drains the queue: the time from its start to its last
   message (the control centre also gets the N retained statuses again: its database was
   empty, so it asks for them; M + N messages). mosquitto_sub first; then the control
   centre, this process pinned to one CPU (every thread: paho's, the flush thread's,
   SQLite's), storing every event in SQLite and every state. Rates as messages/s, the control
   centre's as a ratio to mosquitto_sub's; and per CPU-second of each (what a core of its own
   would take: this machine may be shared, the load average is printed).
4. The dashboard on that state: GET /api/overview (JSON, 200 rows of N, problems first) and
   GET / (the HTML page), each 5 times, logged in as a browser would be.
Targets (issue 17): ingest >= 10,000 messages/s on one core (100,000 stations at a 10 s
heartbeat), judged per CPU-second of the pinned process (on a shared machine its wall-clock
rate is lower by the share of the core others take; both are printed); overview < 1 s at
100,000 stations (the slowest of the 5 requests, wall clock). Exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from control.config import ControlConfig
from control.service import ControlService
from control.web.app import WebServer
from control.web.auth import add_user
from tests.peers.mosquitto import Mosquitto

TARGET_MSG_S = 10_000.0
TARGET_OVERVIEW_S = 1.0
PASSWORD = "bench password 1234"  # noqa: S105 - a throw-away user of the bench's own server
SUB_ID = "bench-mosquitto-sub"
DRAIN_TIMEOUT_S = 1200.0
POLL_S = 0.01
OVERVIEW_REQUESTS = 5


class QueueingMosquitto(Mosquitto):
    """The tests' mosquitto, queueing everything for offline sessions (QoS 0 included)."""

    def _config(self) -> str:
        return super()._config() + (
            "max_queued_messages 10000000\nqueue_qos0_messages true\nmax_inflight_messages 0\n"
        )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def subscribe_session(port: int, count: int | None) -> list[str]:
    args = ["mosquitto_sub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(port), "-c",
            "-i", SUB_ID, "-x", "3600", "-q", "0", "-t", "stations/#"]  # fmt: skip
    return args + (["-E"] if count is None else ["-R", "-C", str(count)])


def control_config(folder: Path, broker: Mosquitto) -> ControlConfig:
    return ControlConfig.model_validate({
        # Draining a 600,000-message queue, a PINGRESP waits behind what the broker already
        # wrote for us: paho would give the connection up after one keepalive.
        "mqtt": {"url": broker.url, "client_id": "bench-control", "keepalive_s": 600},
        "store": {"path": str(folder / "control.sqlite")},
        "web": {"port": 0, "users_file": str(folder / "users")},
    })  # fmt: skip


def drain_control(cfg: ControlConfig, expected: int) -> tuple[ControlService, float]:
    """Starts the control centre on the waiting queue; (the service, seconds to drain)."""
    t0 = time.monotonic()
    svc = ControlService(cfg).start()
    deadline_s = t0 + DRAIN_TIMEOUT_S
    while svc.ingest.counters.messages < expected:
        if time.monotonic() > deadline_s:
            raise TimeoutError(f"ingested {svc.ingest.counters.messages} of {expected}")
        time.sleep(POLL_S)
    return svc, time.monotonic() - t0


def time_overview(base: str) -> tuple[list[float], list[float]]:
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    login = urllib.parse.urlencode({"user": "bench", "password": PASSWORD}).encode()
    opener.open(base + "/login", login, timeout=60).read()
    api: list[float] = []
    page: list[float] = []
    for i in range(OVERVIEW_REQUESTS):
        for path, times in ((f"/api/overview?limit={200 + i}", api), (f"/?i={i}", page)):
            time.sleep(1.1)  # past the dashboard's one-second cache of the same query
            t0 = time.monotonic()
            with opener.open(base + path, timeout=60) as response:
                response.read()
            times.append(time.monotonic() - t0)
    return api, page


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2,000 stations instead of 100,000")
    p.add_argument("--stations", type=int, default=None)
    p.add_argument("--heartbeats", type=int, default=None, help="per station (default 4)")
    args = p.parse_args()
    stations = args.stations or (2_000 if args.quick else 100_000)
    beats = args.heartbeats or 4
    expected = stations * (2 + beats)
    with tempfile.TemporaryDirectory(prefix="bench-control-") as tmp:
        folder = Path(tmp)
        broker = QueueingMosquitto(folder / "mosquitto")
        broker.start()
        cfg = control_config(folder, broker)
        add_user(cfg.web.users_file, "bench", "read-only", PASSWORD)
        try:
            subprocess.run(subscribe_session(broker.port, None), check=True, timeout=30)
            svc = ControlService(cfg).start()
            if not svc.ingest.connected.wait(30):
                raise RuntimeError("the control centre did not connect")
            svc.stop()  # the broker keeps its session and queues for it

            t0 = time.monotonic()
            out = subprocess.run(
                [sys.executable, "-m", "control", "simulate", "--broker", broker.url,
                 "--stations", str(stations), "--burst", str(beats), "--faulty", "0",
                 "--heartbeat-s", "600"],
                check=True, capture_output=True, text=True, timeout=DRAIN_TIMEOUT_S,
            )  # fmt: skip
            publish_s = time.monotonic() - t0
            print(f"stream: {stations} stations x (status, event, {beats} heartbeats) = "
                  f"{expected} messages, published in {publish_s:.1f} s "
                  f"({out.stdout.strip()})")  # fmt: skip

            t0, children0 = time.monotonic(), _children_cpu_s()
            subprocess.run(subscribe_session(broker.port, expected), check=True,
                           stdout=subprocess.DEVNULL, timeout=DRAIN_TIMEOUT_S)  # fmt: skip
            sub_s = time.monotonic() - t0
            sub_cpu_s = _children_cpu_s() - children0

            cpu = min(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpu})  # this thread, and every thread started from now on
            control_expected = expected + stations  # + the retained statuses (module doc)
            cpu0 = time.process_time()
            svc, control_s = drain_control(cfg, control_expected)
            control_cpu_s = time.process_time() - cpu0
            try:
                svc.centre.flush(everything=True)
                counters = svc.ingest.counters
                server = WebServer(svc).start()
                api, page = time_overview(server.url)
                server.stop()
                stored = svc.store.event_count()
            finally:
                svc.stop()
        finally:
            broker.stop()
    sub_rate, control_rate = expected / sub_s, control_expected / control_s
    print(f"load average during the run: {os.getloadavg()[1]:.1f} on {os.cpu_count()} CPUs")
    print(f"mosquitto_sub > /dev/null: {sub_s:7.2f} s  {sub_rate:9.0f} msg/s  "
          f"(CPU {sub_cpu_s:.2f} s: {expected / sub_cpu_s:.0f} msg per CPU-second)")  # fmt: skip
    ratio = control_rate / sub_rate
    print(
        f"control centre (1 CPU):    {control_s:7.2f} s  {control_rate:9.0f} msg/s  "
        f"= {ratio:.2f} x mosquitto_sub   (target >= {TARGET_MSG_S:.0f})"
    )
    print(f"  CPU {control_cpu_s:.2f} s: {control_expected / control_cpu_s:.0f} msg per "
          "CPU-second")  # fmt: skip
    print(f"  statuses {counters.statuses}, events {counters.events} ({stored} stored), "
          f"heartbeats {counters.heartbeats}, rejected {counters.rejected}, "
          f"callback errors {counters.callback_errors}")  # fmt: skip
    print(f"overview at {stations} stations: /api/overview median {statistics.median(api):.3f} s "
          f"max {max(api):.3f} s; / (HTML) median {statistics.median(page):.3f} s "
          f"max {max(page):.3f} s   (target < {TARGET_OVERVIEW_S:.1f} s)")  # fmt: skip
    missed = []
    cpu_rate = control_expected / control_cpu_s
    if cpu_rate < TARGET_MSG_S:
        missed.append(f"ingest {cpu_rate:.0f} msg per CPU-second < {TARGET_MSG_S:.0f}")
    if control_rate < TARGET_MSG_S:
        print(
            f"(wall clock: {control_rate:.0f} msg/s; load {os.getloadavg()[1]:.1f} on "
            f"{os.cpu_count()} CPUs: the target is judged per CPU-second of the process)"
        )
    if max(api + page) >= TARGET_OVERVIEW_S:
        missed.append(f"overview {max(api + page):.3f} s >= {TARGET_OVERVIEW_S:.1f} s")
    if stored != stations or counters.callback_errors:
        missed.append(f"{stored} events stored of {stations}, {counters.callback_errors} errors")
    if missed:
        print("MISSED: " + "; ".join(missed))
        return 1
    print("targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
