"""MQTT v5 ingest: every station's status, heartbeats, events and command replies.

One paho client with a persistent session (clean_start false, a session expiry): the broker
keeps our subscriptions and queues QoS 1 messages (events, status changes) while the control
centre is away. An event is committed to SQLite inside the message callback, before paho
acknowledges it, so a crash of this process loses none; its id de-duplicates a second
delivery. Heartbeats (QoS 0) only update the state in memory, persisted by the flush thread.

Commands go out on `{prefix}/{station}/cmd/{name}` with the response topic
`{prefix}/{station}/reply/{client_id}` (inside the station's subtree, as the agent requires)
and correlation data; `request()` returns a Future the reply resolves.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.telemetry.config import parse_broker_url
from control.config import ControlMqtt

log = logging.getLogger(__name__)

RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30  # paho's exponential reconnect backoff bounds
MAX_PENDING_REQUESTS = 1000  # commands waiting for their reply; the oldest are given up


class MessageSink(Protocol):
    """What the ingest feeds (control/centre.py ControlCentre)."""

    def on_status(self, station_id: str, msg: dict[str, Any]) -> None: ...
    def on_heartbeat(
        self, station_id: str, msg: dict[str, Any], expiry_s: float | None
    ) -> None: ...
    def on_event(self, station_id: str, msg: dict[str, Any]) -> None: ...
    def on_connection(self, connected: bool) -> None: ...


@dataclass(frozen=True)
class Reply:
    ok: bool
    code: str = ""  # error code (the agent's, or "timeout"/"not_sent")
    message: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    image: bytes | None = None  # the snapshot's JPEG

    @classmethod
    def parse(cls, payload: bytes, content_type: str | None) -> Reply:
        if content_type == "image/jpeg" or payload[:2] == b"\xff\xd8":
            return cls(ok=True, result={"bytes": len(payload)}, image=payload)
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return cls(ok=False, code="bad_reply", message="the reply is not JSON")
        if not isinstance(body, dict):
            return cls(ok=False, code="bad_reply", message="the reply is not an object")
        if body.get("ok") is True:
            result = body.get("result")
            return cls(ok=True, result=result if isinstance(result, dict) else {})
        error = body.get("error") or {}
        return cls(ok=False, code=str(error.get("code", "")), message=str(error.get("message", "")))


@dataclass
class Counters:
    messages: int = 0
    statuses: int = 0
    heartbeats: int = 0
    events: int = 0
    replies: int = 0
    rejected: int = 0  # not JSON, wrong schema version, station id not matching the topic
    callback_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Ingest:
    def __init__(self, cfg: ControlMqtt, sink: MessageSink, password: str | None = None) -> None:
        self.cfg = cfg
        self.sink = sink
        self.counters = Counters()
        self.connected = threading.Event()
        self.retain_handling = 1  # retained statuses only on a new subscription (see start)
        self._prefix = cfg.prefix + "/"
        self._reply_suffix = f"/reply/{cfg.client_id}"
        self._pending: dict[bytes, tuple[Future[Reply], Callable[[Reply], None]]] = {}
        self._pending_lock = threading.Lock()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=mqtt.MQTTv5
        )
        if cfg.username is not None:
            client.username_pw_set(cfg.username, password)
        broker = parse_broker_url(cfg.url)
        if broker.tls:
            client.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.cert_file) if cfg.cert_file else None,
                keyfile=str(cfg.key_file) if cfg.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._broker = broker

    def start(self, *, fresh: bool = False) -> None:
        """Connects in the background. `fresh`: our database holds no station yet, so ask for
        every retained status even if the broker kept our old subscription."""
        if fresh:
            self.retain_handling = 0
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        self._client.connect_async(
            self._broker.host,
            self._broker.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            future.cancel()

    # -- paho callbacks (wrapped: an exception must not kill paho's thread) ----------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any = None) -> None:  # fmt: skip
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        p = self._prefix
        opts = SubscribeOptions(qos=1, retainHandling=self.retain_handling)
        client.subscribe(
            [
                (f"{p}+/status", opts),
                (f"{p}+/heartbeat", SubscribeOptions(qos=0)),
                (f"{p}+/event", SubscribeOptions(qos=1)),
                (f"{p}+{self._reply_suffix}", SubscribeOptions(qos=1)),
            ]
        )
        log.info("connected to the broker %s:%s", self._broker.host, self._broker.port)
        self.connected.set()
        self.sink.on_connection(True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       props: Any = None) -> None:  # fmt: skip
        self.connected.clear()
        self.sink.on_connection(False)
        log.warning("lost the broker connection (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handle(msg)
        except Exception:  # a bug in one message must not stop the ingest: counted, logged
            self.counters.callback_errors += 1
            log.exception("cannot handle a message on %s", msg.topic)

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        c = self.counters
        c.messages += 1
        topic = msg.topic
        if not topic.startswith(self._prefix):
            c.rejected += 1
            return
        station_id, _, kind = topic[len(self._prefix) :].partition("/")
        if kind.startswith("reply/"):
            c.replies += 1
            self._on_reply(msg)
            return
        try:
            body = orjson.loads(msg.payload)  # 4x json's speed: a fifth of a heartbeat's cost
        except orjson.JSONDecodeError:  # (also for bytes that are not UTF-8)
            c.rejected += 1
            return
        if (
            not isinstance(body, dict)
            or body.get("schema_version") != 1
            or body.get("station_id") != station_id
        ):
            c.rejected += 1
            return
        if kind == "heartbeat":
            c.heartbeats += 1
            expiry = getattr(msg.properties, "MessageExpiryInterval", None)
            self.sink.on_heartbeat(station_id, body, float(expiry) if expiry else None)
        elif kind == "status":
            c.statuses += 1
            self.sink.on_status(station_id, body)
        elif kind == "event":
            c.events += 1
            self.sink.on_event(station_id, body)
        else:
            c.rejected += 1

    # -- commands ------------------------------------------------------------------------

    def request(
        self,
        station_id: str,
        name: str,
        payload: bytes,
        on_reply: Callable[[Reply], None],
    ) -> tuple[Future[Reply], str]:
        """Publishes a command; (a Future for its reply, the correlation data in hex).
        `on_reply` runs on paho's thread when the reply comes (e.g. to write the audit)."""
        correlation = uuid.uuid4().bytes
        future: Future[Reply] = Future()
        with self._pending_lock:
            while len(self._pending) >= MAX_PENDING_REQUESTS:
                oldest = next(iter(self._pending))
                self._pending.pop(oldest)[0].cancel()
            self._pending[correlation] = (future, on_reply)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{self._prefix}{station_id}{self._reply_suffix}"
        props.CorrelationData = correlation
        info = self._client.publish(
            f"{self._prefix}{station_id}/cmd/{name}", payload, qos=1, properties=props
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            self.forget(correlation.hex())
            future.set_result(Reply(ok=False, code="not_sent", message=mqtt.error_string(info.rc)))
        return future, correlation.hex()

    def forget(self, correlation_hex: str) -> None:
        """Stop waiting for a reply (timed out)."""
        with self._pending_lock:
            self._pending.pop(bytes.fromhex(correlation_hex), None)

    def _on_reply(self, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self._pending_lock:
            entry = self._pending.pop(bytes(correlation), None) if correlation else None
        if entry is None:
            return  # a reply after its timeout, or to another control centre
        future, on_reply = entry
        reply = Reply.parse(bytes(msg.payload), getattr(msg.properties, "ContentType", None))
        on_reply(reply)
        try:
            future.set_result(reply)
        except InvalidStateError:
            log.info("a reply came as its request timed out")
