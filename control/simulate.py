"""`station-control simulate`: a fleet of simulated stations on a real MQTT broker.

Each station sends what a real agent sends (control/simfleet.py): a retained status, a
heartbeat every `heartbeat_s` with jitter, events at QoS 1, and answers commands. Up to
`own_connections` stations each get their own MQTT connection with their own last will,
so a station that "dies" (the offline fault) is announced by the broker itself, as a real
box's would be. Bigger fleets share a few connections (a real broker holds 100,000
connections; one Python process does not): their stations publish the offline will payload
themselves.

One thread drives everything: paho clients in external-loop mode (their sockets in one
selector), a heap of stations by next heartbeat. `burst()` publishes a fixed stream as fast
as the broker takes it (bench/control_ingest.py).
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import logging
import queue
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.core.config import ConfigError
from agent.telemetry.config import parse_broker_url
from agent.telemetry.signing import CommandRefused, CommandVerifier
from control.simfleet import FaultPlan, SimStation

log = logging.getLogger(__name__)

STATIONS_PER_SHARED_CONNECTION = 5_000
REGIONS = ("North", "South", "East", "West", "Centre", "Coast")
PLACES = (
    "Primary school",
    "Town hall",
    "Library",
    "Sports hall",
    "Community centre",
    "Fire station",
    "Secondary school",
    "Parish hall",
)
MISC_EVERY_S = 1.0  # paho keepalive bookkeeping (PINGREQ) per connection
RECONNECT_S = 2.0
SELECT_MAX_S = 0.05


@dataclass(frozen=True)
class SimOptions:
    broker_url: str
    stations: int
    prefix: str = "stations"
    id_prefix: str = "SIM-"
    heartbeat_s: float = 10.0
    keepalive_s: int = 10
    faulty: float = 0.05
    fault_mean_s: float = 120.0
    own_connections: int = 200
    seed: int = 1
    command_key: Ed25519PublicKey | None = None

    def station_ids(self) -> list[str]:
        width = max(4, len(str(self.stations)))
        return [f"{self.id_prefix}{i:0{width}d}" for i in range(1, self.stations + 1)]


class Link:
    """One paho client in external-loop mode: a station's own (with its will) or shared."""

    def __init__(self, sim: Simulator, client_id: str, station: SimStation | None) -> None:
        self.sim = sim
        self.station = station  # None: shared by many stations
        self.up = False
        self.down_until_s = 0.0  # an offline station's connection stays down until then
        self.sock: socket.socket | None = None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(0)  # no cap: a burst is limited by the broker only
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client

    def connect(self) -> None:
        st = self.station
        if st is not None:
            will = st.status_offline(time.time(), clean=False, reason="connection_lost")
            self.client.will_set(
                self.sim.topic(st.station_id, "status"), json.dumps(will), qos=1, retain=True
            )
        broker = self.sim.broker
        self.client.connect(broker.host, broker.port, keepalive=self.sim.opts.keepalive_s)
        self.sock = self.client.socket()  # type: ignore[assignment]
        if self.sock is not None:
            self.sim.selector.register(self.sock, selectors.EVENT_READ, self)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any = None) -> None:  # fmt: skip
        if reason.is_failure:
            log.warning("broker refused %s: %s", client._client_id, reason)
            return
        self.up = True
        if self.station is not None:
            client.subscribe(self.sim.topic(self.station.station_id, "cmd/+"), qos=1)
            self.sim.announce(self.station)
        elif self.sim.links[0] is self:
            client.subscribe(f"{self.sim.opts.prefix}/+/cmd/+", qos=1)

    def _on_disconnect(self, client: mqtt.Client, *args: Any) -> None:
        self.up = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.sim.on_command(self, msg)
        except Exception:  # a bad command must not stop the simulator: logged
            log.exception("cannot answer %s", msg.topic)

    def drop(self) -> None:
        """Closes the socket without DISCONNECT: the broker sends the last will."""
        sock = self.sock
        if sock is not None:
            self._unregister()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError as exc:
                log.info("socket already gone: %s", exc)
            self.client.loop_read()  # paho notices the closed socket
        self.up = False

    def _unregister(self) -> None:
        if self.sock is not None:
            try:
                self.sim.selector.unregister(self.sock)
            except (KeyError, ValueError):
                log.debug("socket was not registered")
            self.sock = None

    def service(self, events: int) -> None:
        if events & selectors.EVENT_READ:
            rc = self.client.loop_read()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._unregister()
                self.up = False
                self.down_until_s = max(self.down_until_s, time.monotonic() + RECONNECT_S)
                return
        if events & selectors.EVENT_WRITE or self.client.want_write():
            self.client.loop_write()

    def publish(self, topic: str, payload: bytes | str, qos: int, retain: bool = False,
                properties: Properties | None = None) -> None:  # fmt: skip
        self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)


class Simulator:
    def __init__(self, opts: SimOptions) -> None:
        self.opts = opts
        self.broker = parse_broker_url(opts.broker_url)
        self.rng = random.Random(opts.seed)  # noqa: S311 - a simulation, not security
        self.selector = selectors.DefaultSelector()
        now_wall = time.time()
        self.stations: dict[str, SimStation] = {
            sid: SimStation(
                sid,
                now_wall - self.rng.uniform(60, 3600),
                random.Random(f"{opts.seed}:{sid}"),  # noqa: S311
                heartbeat_s=opts.heartbeat_s,
            )
            for sid in opts.station_ids()
        }
        self.plan = FaultPlan(opts.faulty, self.rng, mean_s=opts.fault_mean_s)
        own = len(self.stations) <= opts.own_connections
        self.links: list[Link] = []
        self.link_of: dict[str, Link] = {}
        if own:
            for st in self.stations.values():
                link = Link(self, f"station-agent-{st.station_id}", st)
                self.links.append(link)
                self.link_of[st.station_id] = link
        else:
            count = -(-len(self.stations) // STATIONS_PER_SHARED_CONNECTION)
            self.links = [Link(self, f"station-sim-{opts.seed}-{i}", None) for i in range(count)]
            for i, sid in enumerate(self.stations):
                self.link_of[sid] = self.links[i % count]
        self.verifiers = (
            {}
            if opts.command_key is None
            else {sid: CommandVerifier(sid, opts.command_key) for sid in self.stations}
        )
        self.published = 0
        self.commands_answered = 0
        self._controls: queue.Queue[Callable[[], None]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def topic(self, sid: str, kind: str) -> str:
        return f"{self.opts.prefix}/{sid}/{kind}"

    # -- publishing ----------------------------------------------------------------------

    def _send(self, st: SimStation, kind: str, body: dict[str, Any], qos: int,
              retain: bool = False, props: Properties | None = None) -> None:  # fmt: skip
        link = self.link_of[st.station_id]
        link.publish(self.topic(st.station_id, kind), json.dumps(body), qos, retain, props)
        self.published += 1

    def announce(self, st: SimStation) -> None:
        """A (re)connected station: its online status and pending events."""
        wall_s = time.time()
        self._send(st, "status", st.status_online(wall_s), qos=1, retain=True)
        self._flush_events(st)

    def _flush_events(self, st: SimStation) -> None:
        for event in st.take_events():
            self._send(st, "event", event, qos=1)

    def _heartbeat(self, st: SimStation) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = int(2 * self.opts.heartbeat_s)
        self._send(st, "heartbeat", st.heartbeat(time.time()), qos=0, props=props)

    def _beat(self, st: SimStation, now_s: float) -> None:
        link = self.link_of[st.station_id]
        step = self.plan.step(st, now_s, self.opts.heartbeat_s)
        wall_s = time.time()
        if step == "end" and st.fault == "offline":
            st.fault = None
            if link.station is not None:
                link.down_until_s = 0.0  # reconnects at the next service round
            else:
                self.announce(st)
            st.emit(
                wall_s,
                "agent_started",
                "info",
                "agent started after a power cut",
                version=st.status_online(wall_s)["version"],
            )
            return
        if step == "end":
            st.end_fault(wall_s)
        elif step is not None:
            self.set_fault_now(st.station_id, step.removeprefix("start:"))
        if st.fault == "offline" or not link.up:
            return
        self._heartbeat(st)
        self._flush_events(st)

    def set_fault_now(self, sid: str, kind: str | None) -> None:
        """On the simulator's thread: start (or with None, end) a station's fault."""
        st = self.stations[sid]
        wall_s = time.time()
        link = self.link_of[sid]
        if kind is None:
            if st.fault == "offline":
                st.fault = None
                link.down_until_s = 0.0
                if link.station is None:
                    self.announce(st)
            else:
                st.end_fault(wall_s)
                self._flush_events(st)
            return
        if kind == "offline":
            st.end_fault(wall_s)
            self._flush_events(st)
            st.fault = "offline"
            if link.station is not None:
                link.down_until_s = float("inf")
                link.drop()
            else:
                will = st.status_offline(wall_s, clean=False, reason="connection_lost")
                self._send(st, "status", will, qos=1, retain=True)
            return
        st.start_fault(kind, wall_s)
        self._flush_events(st)

    # -- commands ------------------------------------------------------------------------

    def on_command(self, link: Link, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        sid, name = parts[-3], parts[-1]
        st = self.stations.get(sid)
        if st is None or msg.retain:
            return
        response = getattr(msg.properties, "ResponseTopic", None)
        wall_s = time.time()
        try:
            request = json.loads(msg.payload or b"{}")
        except ValueError:
            request = None
        if not isinstance(request, dict):
            body: dict[str, Any] | bytes = st.reply_error(name, "bad_json", "not JSON", wall_s)
        else:
            body = self._run_command(st, name, request, wall_s)
        self.commands_answered += 1
        if response:
            props = Properties(PacketTypes.PUBLISH)
            correlation = getattr(msg.properties, "CorrelationData", None)
            if correlation is not None:
                props.CorrelationData = correlation
            if isinstance(body, bytes):
                props.ContentType = "image/jpeg"
                link.publish(response, body, 1, properties=props)
            else:
                link.publish(response, json.dumps(body), 1, properties=props)
        self._flush_events(st)

    def _run_command(self, st: SimStation, name: str, request: dict[str, Any],
                     wall_s: float) -> dict[str, Any] | bytes:  # fmt: skip
        verifier = self.verifiers.get(st.station_id)
        if "sig" in request or verifier is not None:
            if verifier is None:
                return st.reply_error(name, "bad_request", "signed, but no key here", wall_s)
            try:
                args = verifier.verify(name, request, now_s=time.monotonic(), wall_s=wall_s)
            except CommandRefused as exc:
                return st.reply_error(name, exc.code, exc.message, wall_s)
            request = args if isinstance(args, dict) else {}
        return st.command(name, request, wall_s)

    # -- running -------------------------------------------------------------------------

    def control(self, action: Callable[[], None]) -> None:
        """Runs `action` on the simulator's thread (thread-safe)."""
        self._controls.put(action)

    def set_fault(self, sid: str, kind: str | None) -> None:
        """From any thread: start a fault on a station (None: end it)."""
        self.control(lambda: self.set_fault_now(sid, kind))

    def start(self) -> Simulator:
        self._thread = threading.Thread(target=self.run, name="simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def run(self, duration_s: float | None = None) -> None:
        for link in self.links:
            link.connect()
        start_s = time.monotonic()
        heap = [(start_s + self.rng.uniform(0, self.opts.heartbeat_s), sid)
                for sid in self.stations]  # fmt: skip
        heapq.heapify(heap)
        misc_s = start_s
        while not self._stop.is_set():
            now_s = time.monotonic()
            if duration_s is not None and now_s - start_s >= duration_s:
                break
            while not self._controls.empty():
                self._controls.get_nowait()()
            while heap and heap[0][0] <= now_s:
                _, sid = heapq.heappop(heap)
                self._beat(self.stations[sid], now_s)
                jitter = self.rng.uniform(0.95, 1.05)
                heapq.heappush(heap, (now_s + self.opts.heartbeat_s * jitter, sid))
            if now_s - misc_s >= MISC_EVERY_S:
                misc_s = now_s
                self._misc(now_s)
            self._poll(min(SELECT_MAX_S, max(0.0, heap[0][0] - time.monotonic())))
        self._close()

    def _poll(self, timeout_s: float) -> None:
        for link in self.links:
            if link.sock is not None and link.client.want_write():
                link.client.loop_write()
        for key, events in self.selector.select(timeout_s):
            link = key.data
            link.service(events)

    def _misc(self, now_s: float) -> None:
        for link in self.links:
            if link.sock is not None:
                link.client.loop_misc()
            elif now_s >= link.down_until_s:
                try:
                    link.connect()
                except OSError as exc:
                    link.down_until_s = now_s + RECONNECT_S
                    log.info("cannot reach the broker: %s", exc)

    def _close(self) -> None:
        """A clean stop: own-connection stations say offline (clean), like a stopped agent."""
        wall_s = time.time()
        for link in self.links:
            if link.sock is None:
                continue
            if link.station is not None:
                body = link.station.status_offline(wall_s, clean=True, reason="SIGTERM")
                info = link.client.publish(
                    self.topic(link.station.station_id, "status"),
                    json.dumps(body),
                    qos=1,
                    retain=True,
                )
                deadline_s = time.monotonic() + 2.0
                while not info.is_published() and time.monotonic() < deadline_s:
                    link.client.loop(0.05)
            link.client.disconnect()
            link._unregister()


def burst(opts: SimOptions, heartbeats_per_station: int, timeout_s: float = 600.0) -> int:
    """Publishes, as fast as the broker takes them, each station's online status (retained,
    QoS 1), an agent_started event (QoS 1) and `heartbeats_per_station` heartbeats (QoS 0);
    returns once the broker acknowledged every QoS 1 message; the number published."""
    sim = Simulator(opts)
    for link in sim.links:
        link.client.on_connect = None  # a burst sends its own statuses, no subscriptions
        link.connect()
    deadline_s = time.monotonic() + timeout_s
    while not all(link.client.is_connected() for link in sim.links):
        sim._poll(SELECT_MAX_S)
        if time.monotonic() > deadline_s:
            raise TimeoutError("the simulator's connections did not come up")
    for link in sim.links:
        link.up = True
    last: dict[int, mqtt.MQTTMessageInfo] = {}
    wall_s = time.time()
    for n, st in enumerate(sim.stations.values()):
        link = sim.link_of[st.station_id]
        last[id(link)] = link.client.publish(
            sim.topic(st.station_id, "status"), json.dumps(st.status_online(wall_s)), 1, True
        )
        st.emit(
            wall_s,
            "agent_started",
            "info",
            "agent started",
            version=st.status_online(wall_s)["version"],
        )
        for event in st.take_events():
            last[id(link)] = link.client.publish(
                sim.topic(st.station_id, "event"), json.dumps(event), 1
            )
        sim.published += 2
        if n % 200 == 0:
            sim._poll(0)
    for _ in range(heartbeats_per_station):
        for n, st in enumerate(sim.stations.values()):
            sim._heartbeat(st)
            if n % 200 == 0:
                sim._poll(0)
    while not all(info.is_published() for info in last.values()):
        sim._poll(SELECT_MAX_S)
        if time.monotonic() > deadline_s:
            raise TimeoutError("the broker did not acknowledge the burst")
    for link in sim.links:
        link.client.disconnect()
        link.client.loop_write()
    return sim.published


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The control centre's public key (PEM), to check signed commands as a station would."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the key: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 key")
    return key


def write_sim_roster(path: Path, opts: SimOptions, never_seen: int = 0) -> Path:
    """A roster CSV of the simulated stations (plus `never_seen` stations nobody simulates),
    with the provisioning columns a real one has and names and regions for the dashboard."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["station_id", "camera", "upload_url", "name", "region", "address"])
    ids = opts.station_ids() + [f"{opts.id_prefix}X{i:03d}" for i in range(1, never_seen + 1)]
    for n, sid in enumerate(ids):
        region = REGIONS[n % len(REGIONS)]
        place = PLACES[n % len(PLACES)]
        writer.writerow(
            [
                sid,
                "v4l2:/dev/video0",
                "https://ingest.example.org/stations",
                f"{place} {n + 1}",
                region,
                f"{n + 1} Station Road, {region}",
            ]
        )
    path.write_text(out.getvalue(), encoding="utf-8")
    return path
