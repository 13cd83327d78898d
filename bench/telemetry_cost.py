"""What telemetry costs: CPU at a 1-second heartbeat, and event-to-subscriber latency.

    .venv/bin/python -m bench.telemetry_cost [--seconds 20] [--events 200]

Against a real mosquitto on loopback (started here, like the tests do):
1. CPU: process CPU time / wall time, first idle (baseline), then with Telemetry running at
   heartbeat_s=1 (status snapshot, psutil sample, JSON, publish). Cost = the difference, as a
   fraction of one core. Target (issue 5): < 1 %.
2. Latency: Telemetry.emit() -> an MQTT subscriber in this process receives it (outbox write
   with fsync, pump, QoS 1). Baseline: a bare paho QoS 1 publish to the same subscriber.
   Target: p95 < 100 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.core.events import Event
from agent.telemetry import MqttConfig, Telemetry, open_channel
from tests.peers.mosquitto import Mosquitto  # the tests' launcher
from tests.peers.telemetry_runner import fake_status

STATION = "BENCH-0001"
EVENT_GAP_S = 0.02  # between events: a burst far above any real incident rate
RECEIVE_TIMEOUT_S = 30.0


def cpu_fraction(seconds: float) -> float:
    """This process's CPU time over wall time while the caller's threads run."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    return (time.process_time() - cpu0) / (time.monotonic() - wall0)


class Arrivals:
    """Subscriber that notes when each message with fields.n / n arrives (monotonic)."""

    def __init__(self, port: int, topic: str) -> None:
        self.at_s: dict[int, float] = {}
        self._changed = threading.Condition()
        ready = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda *a: ready.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("subscriber did not subscribe")
        self.client = client

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now_s = time.monotonic()
        body = json.loads(msg.payload)
        n = body.get("fields", body).get("n")
        if isinstance(n, int):
            with self._changed:
                self.at_s.setdefault(n, now_s)
                self._changed.notify_all()

    def wait(self, count: int) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.at_s) >= count, RECEIVE_TIMEOUT_S):
                raise RuntimeError(f"received {len(self.at_s)} of {count} messages")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def percentiles_ms(sent_s: dict[int, float], got_s: dict[int, float]) -> tuple[float, float]:
    latencies = sorted((got_s[n] - sent_s[n]) * 1000 for n in sent_s)
    p95 = statistics.quantiles(latencies, n=20)[18]
    return statistics.median(latencies), p95


def bare_latency(port: int, events: int) -> tuple[float, float]:
    arrivals = Arrivals(port, "bench/bare")
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    sent_s: dict[int, float] = {}
    for n in range(events):
        sent_s[n] = time.monotonic()
        publisher.publish("bench/bare", json.dumps({"n": n}), qos=1)
        time.sleep(EVENT_GAP_S)
    arrivals.wait(events)
    publisher.disconnect()
    publisher.loop_stop()
    arrivals.close()
    return percentiles_ms(sent_s, arrivals.at_s)


def telemetry_latency(telemetry: Telemetry, port: int, events: int) -> tuple[float, float]:
    arrivals = Arrivals(port, f"stations/{STATION}/event")
    sent_s: dict[int, float] = {}
    for n in range(events):
        sent_s[n] = time.monotonic()
        telemetry.emit(Event("bench", "info", "latency probe", {"n": n}))
        time.sleep(EVENT_GAP_S)
    arrivals.wait(events)
    arrivals.close()
    return percentiles_ms(sent_s, arrivals.at_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per CPU phase")
    parser.add_argument("--events", type=int, default=200, help="latency probes per phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir / "broker")
        broker.start()
        try:
            idle = cpu_fraction(args.seconds)
            channel = open_channel(
                MqttConfig(url=broker.url, heartbeat_s=1),
                station_id=STATION,
                state_dir=workdir / "state",
            )
            telemetry = Telemetry(
                channel,
                station_id=STATION,
                status=fake_status,
                summary={"source": "test:"},
                commands={},
                version="bench",
                spool_path=workdir,
            )
            telemetry.start()
            deadline_s = time.monotonic() + 10
            while not telemetry.connection()["connected"] and time.monotonic() < deadline_s:
                time.sleep(0.05)
            busy = cpu_fraction(args.seconds)
            bare_p50, bare_p95 = bare_latency(broker.port, args.events)
            tel_p50, tel_p95 = telemetry_latency(telemetry, broker.port, args.events)
            telemetry.stop("bench done")
        finally:
            broker.stop()
    cost = busy - idle
    print(f"CPU, idle process (baseline):    {idle * 100:6.3f} % of one core")
    print(f"CPU, telemetry at 1 s heartbeat: {busy * 100:6.3f} % of one core")
    print(f"telemetry cost:                  {cost * 100:6.3f} % of one core (target < 1 %)")
    print(f"latency, bare paho QoS 1 (baseline): p50 {bare_p50:6.2f} ms  p95 {bare_p95:6.2f} ms")
    print(f"latency, emit -> subscriber:         p50 {tel_p50:6.2f} ms  p95 {tel_p95:6.2f} ms"
          "  (target p95 < 100 ms)")  # fmt: skip
    print(f"latency ratio vs bare paho:          p50 x{tel_p50 / bare_p50:.1f}"
          f"  p95 x{tel_p95 / bare_p95:.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
