"""A real Mosquitto for tests and a recording subscriber (fixtures: tests/conftest.py).

    def test_x(mosquitto: Mosquitto, subscriber: SubscriberFactory) -> None:
        sub = subscriber(mosquitto, "stations/#")
        msg = sub.wait_for(lambda m: m.topic.endswith("/status"), timeout_s=5)

`Mosquitto` runs /usr/sbin/mosquitto in the foreground on a free loopback port that stays the
same across stop()/start(); optional password file (mosquitto_passwd), ACL file (its text,
e.g. the one docs/telemetry.md gives), TLS with a tests/peers/pki.py `Pki` (and
require_certificate), and persistence (sessions, queued and retained messages survive a
restart, like a production broker).

`Subscriber.request` sends an MQTT v5 request to `.../cmd/NAME` with the response topic
`.../reply/CLIENT_ID` beside it (the agent's default reply prefix), subscribing to it first.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.peers.pki import Pki
from tests.peers.ports import free_port, port_open

MOSQUITTO_BIN = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD_BIN = Path("/usr/bin/mosquitto_passwd")
INSTALL_HINT = "apt-get install -y mosquitto mosquitto-clients"
READY_TIMEOUT_S = 10.0  # mosquitto listens within ~20 ms here; 10 s covers a loaded CI box
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02
LOG_TAIL_LINES = 30


class Mosquitto:
    """One mosquitto under `workdir`; call `start()` to run it."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        tls: Pki | None = None,
        require_certificate: bool = False,
        persistence: bool = False,
        acl: str | None = None,
    ) -> None:
        if require_certificate and tls is None:
            raise ValueError("require_certificate needs tls")
        if not MOSQUITTO_BIN.exists():
            pytest.fail(f"{MOSQUITTO_BIN} is missing: {INSTALL_HINT}")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.users = users
        self.tls = tls
        self.require_certificate = require_certificate
        self.persistence = persistence
        self.acl = acl
        self.log_path = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _config(self) -> str:
        lines = [
            "user root",
            f"listener {self.port} 127.0.0.1",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.users is None:
            lines.append("allow_anonymous true")
        else:
            passwd = self.workdir / "passwd"
            passwd.write_text("", encoding="ascii")
            for user, password in self.users.items():
                subprocess.run(
                    [str(MOSQUITTO_PASSWD_BIN), "-b", str(passwd), user, password], check=True
                )
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        if self.acl is not None:
            acl_path = self.workdir / "acl"
            acl_path.write_text(self.acl, encoding="utf-8")
            lines.append(f"acl_file {acl_path}")
        return "\n".join(lines) + "\n"

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("mosquitto already running")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self._config(), encoding="utf-8")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(MOSQUITTO_BIN), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline_s = time.monotonic() + READY_TIMEOUT_S
        while not port_open(self.port):
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"mosquitto exited at start; log:\n{self.log_tail()}")
            if time.monotonic() > deadline_s:
                self.stop()
                raise RuntimeError(f"mosquitto not listening after {READY_TIMEOUT_S} s:\n"
                                   f"{self.log_tail()}")  # fmt: skip
            time.sleep(POLL_S)

    def stop(self) -> None:
        """SIGTERM (persistence is saved), then SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Any

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho MQTT v5 client that records every message on its topics (thread-safe)."""

    def __init__(
        self,
        broker: Mosquitto,
        topics: str | list[str],
        *,
        persistent: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.messages: list[Received] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._acked_mids: set[int] = set()
        self.client_id = f"test-sub-{uuid.uuid4().hex[:8]}"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        if username is not None:
            client.username_pw_set(username, password)
        if broker.tls is not None:
            client.tls_set(
                ca_certs=str(broker.tls.ca_cert),
                certfile=str(broker.tls.client_cert),
                keyfile=str(broker.tls.client_key),
            )
        client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]  # tests: come back fast
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        if persistent:  # the broker keeps the session and queues QoS 1 messages while away
            props.SessionExpiryInterval = 600
        client.connect_async(
            "127.0.0.1", broker.port, keepalive=10, clean_start=not persistent, properties=props
        )
        client.loop_start()
        self.client = client
        if not self._subscribed.wait(READY_TIMEOUT_S):
            client.loop_stop()
            raise RuntimeError(f"subscriber could not subscribe; broker log:\n{broker.log_tail()}")

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, *args: Any) -> None:
        with self._changed:
            self._acked_mids.add(mid)
            self._changed.notify_all()
        self._subscribed.set()

    def subscribe(self, topic: str) -> None:
        """Adds a subscription (kept across reconnects); returns once the broker answered."""
        if topic in self.topics:
            return
        self.topics.append(topic)
        _, mid = self.client.subscribe(topic, qos=1)
        with self._changed:
            if not self._changed.wait_for(lambda: mid in self._acked_mids, READY_TIMEOUT_S):
                raise RuntimeError(f"no SUBACK for {topic}")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(
                Received(msg.topic, bytes(msg.payload), msg.retain, msg.properties)
            )
            self._changed.notify_all()

    def wait_for(self, match: Callable[[Received], bool], timeout_s: float) -> Received | None:
        """The first recorded message that matches, waiting up to timeout_s for it."""
        with self._changed:
            found: list[Received] = []

            def seen() -> bool:
                found[:] = [m for m in self.messages if match(m)]
                return bool(found)

            return found[0] if self._changed.wait_for(seen, timeout_s) else None

    def wait_count(
        self, match: Callable[[Received], bool], count: int, timeout_s: float
    ) -> list[Received]:
        with self._changed:
            self._changed.wait_for(lambda: sum(map(match, self.messages)) >= count, timeout_s)
            return [m for m in self.messages if match(m)]

    def wait_distinct(
        self, match: Callable[[Received], bool], count: int, timeout_s: float
    ) -> list[dict[str, Any]]:
        """The first `count` distinct messages that match, by their JSON `id`, in order of
        arrival: QoS 1 may deliver a message twice, and a consumer drops the repeat by id.
        Fewer if they did not all come within timeout_s."""

        def distinct() -> list[dict[str, Any]]:
            seen: dict[str, dict[str, Any]] = {}
            for message in self.messages:
                if match(message):
                    body = message.json()
                    seen.setdefault(str(body["id"]), body)
            return list(seen.values())

        with self._changed:
            self._changed.wait_for(lambda: len(distinct()) >= count, timeout_s)
            return distinct()

    def reply_topic_for(self, command_topic: str) -> str:
        """`stations/X/cmd/ping` -> `stations/X/reply/<client id>` (the default reply prefix)."""
        return f"{command_topic.rsplit('/cmd/', 1)[0]}/reply/{self.client_id}"

    def send_request(
        self,
        topic: str,
        payload: bytes,
        response_topic: str | None = None,
        *,
        retain: bool = False,
    ) -> bytes:
        """Publishes an MQTT v5 request (QoS 1, acknowledged); its correlation data.
        `response_topic` defaults to `reply_topic_for(topic)`, subscribed first."""
        response_topic = response_topic or self.reply_topic_for(topic)
        self.subscribe(response_topic)
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(READY_TIMEOUT_S)
        return correlation

    def request(
        self, topic: str, payload: bytes, timeout_s: float, response_topic: str | None = None
    ) -> Received | None:
        """An MQTT v5 request: response topic + correlation data; waits for the matching reply."""
        response_topic = response_topic or self.reply_topic_for(topic)
        correlation = self.send_request(topic, payload, response_topic)
        return self.wait_for(
            lambda m: (
                m.topic == response_topic
                and getattr(m.properties, "CorrelationData", None) == correlation
            ),
            timeout_s,
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


MosquittoFactory = Callable[..., Mosquitto]
SubscriberFactory = Callable[..., Subscriber]
