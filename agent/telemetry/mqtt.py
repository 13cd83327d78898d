"""The broker connection: paho-mqtt 2.x, MQTT v5, all network work in paho's own thread.

Nothing here blocks a caller on the network: `connect_async` + `loop_start`, publishes only
enqueue. Reconnects use full jitter (paho's own delay doubles without jitter, so the delay is
re-set before every wait). Every paho callback is guarded: an exception is logged and counted,
never allowed to kill the network thread.

Events leave the outbox in seq order, at most EVENT_WINDOW unacknowledged at once, and are
removed from it on PUBACK. On every (re)connect paho's copies of unacknowledged messages are
dropped and sending restarts at the oldest event still in the outbox, so the order holds across
reconnects; a PUBACK lost with the connection means a duplicate, which the event id lets
consumers drop.

Commands: the CONNECT asks the broker never to send a packet over MAX_PACKET_BYTES (MQTT v5
Maximum Packet Size: a 150 MB publish on cmd/ping is dropped at the broker, not read into this
process), and `cmd/+` is subscribed with retain-as-published, so a command that was published
retained is seen as such (and ignored: agent/telemetry/commands.py).
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.core.backoff import full_jitter_s
from agent.telemetry import payloads
from agent.telemetry.channel import CommandRequest, CommandSink
from agent.telemetry.config import MqttConfig
from agent.telemetry.outbox import Outbox

log = logging.getLogger(__name__)

RECONNECT_BASE_S = 1.0  # first retry within a second or so: a blip should not leave a gap
RECONNECT_MIN_S = 0.2  # never retry back-to-back, even when the jitter draws ~0
EVENT_WINDOW = 10  # events awaiting PUBACK at once: enough to drain a backlog at loopback speed
PAHO_MAX_INFLIGHT = 20  # paho's default; above EVENT_WINDOW so status and replies never wait
FLUSH_POLL_S = 0.05  # how often stop() looks at the outbox while it drains
# The largest packet the broker may send us. Commands are under 4 KiB (MAX_COMMAND_PAYLOAD_BYTES);
# 64 KiB leaves room for long topics and properties and bounds what one message can cost.
MAX_PACKET_BYTES = 64 * 1024

_P = ParamSpec("_P")


class _Client(mqtt.Client):
    """paho's Client that remembers why the last connection attempt failed
    (its on_connect_fail callback is not told)."""

    connect_error: OSError | None = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            self.connect_error = exc
            raise


def describe_connect_error(exc: BaseException | None) -> str:
    """One line a technician can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate verification failed ({exc.verify_message}): "
            "check [mqtt] ca_file and the broker's certificate and host name"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake failed ({exc.reason or exc}): check the certificates and mqtts:// port"
        )
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is the broker running on that host and port?"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the broker host name ({exc.strerror})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "connection timed out: the broker is unreachable from this network"
    return f"cannot connect: {exc}" if exc is not None else "cannot connect"


def describe_socket_error(text: str) -> str:
    """paho's log line about a failed read, as a line a technician can act on."""
    if "CERTIFICATE_REQUIRED" in text:
        return "the broker requires a client certificate: set [mqtt] cert_file and key_file"
    if "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text or "CERTIFICATE_UNKNOWN" in text:
        return f"the broker rejected the client certificate ({text}): check cert_file/key_file"
    return f"the connection failed before the broker accepted it: {text}"


def _guarded(callback: Callable[_P, None]) -> Callable[_P, None]:
    """paho re-raises callback exceptions in its network thread, which then dies: never let it."""

    @wraps(callback)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            callback(*args, **kwargs)
        except Exception:  # logged with its traceback; the connection carries on
            log.exception("MQTT callback %s failed", callback.__name__)
            link = args[0]
            if isinstance(link, MqttLink):
                link.callback_errors += 1

    return run


class MqttLink:
    def __init__(
        self,
        cfg: MqttConfig,
        *,
        station_id: str,
        password: str | None,
        outbox: Outbox,
        will_body: Callable[[], str],
        online_body: Callable[[], str],
        on_command: CommandSink,
        on_activity: Callable[[], None],
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = cfg
        self._station_id = station_id
        self._password = password
        self._outbox = outbox
        self._will_body = will_body
        self._online_body = online_body
        self._on_command = on_command
        self._on_activity = on_activity
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        base = f"{cfg.prefix}/{station_id}"
        self.topic_status = f"{base}/status"
        self.topic_heartbeat = f"{base}/heartbeat"
        self.topic_event = f"{base}/event"
        self.topic_cmd_prefix = f"{base}/cmd/"
        self._client: _Client | None = None
        self._connected = False  # plain flag: written in callbacks without a lock
        self._stopping = False
        self._attempt = 0
        self._state_lock = threading.Lock()  # held around event publishes and the rewind
        self._rewind = True
        self._last_sent_seq = 0
        self._inflight: dict[int, int] = {}  # mid -> seq; only the pumping thread touches it
        self._ack_lock = threading.Lock()  # never held while calling into paho
        self._acked_mids: set[int] = set()
        self._acked = threading.Event()
        self.last_error: str | None = None
        self._socket_error: str | None = None  # paho only logs why a socket read failed
        self.connects = 0
        self.callback_errors = 0

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Starts connecting in paho's thread. A bad TLS file is logged and leaves it stopped."""
        cfg, broker = self._cfg, self._cfg.broker
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.effective_client_id(self._station_id),
            protocol=mqtt.MQTTv5,
        )
        if cfg.username is not None or self._password is not None:
            client.username_pw_set(cfg.username, self._password)
        if broker.tls:
            try:
                client.tls_set(
                    ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                    certfile=str(cfg.cert_file) if cfg.cert_file else None,
                    keyfile=str(cfg.key_file) if cfg.key_file else None,
                )
            except (OSError, ssl.SSLError) as exc:
                self._set_error(f"cannot load the TLS files of [mqtt]: {exc}")
                return
        client.will_set(self.topic_status, self._will_body(), qos=1, retain=True)
        client.max_inflight_messages_set(PAHO_MAX_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_log = self._on_log
        self._client = client
        self._set_retry_delay()
        connect_props = Properties(PacketTypes.CONNECT)
        connect_props.MaximumPacketSize = MAX_PACKET_BYTES
        client.connect_async(
            broker.host,
            broker.port,
            keepalive=cfg.keepalive_s,
            clean_start=True,
            properties=connect_props,
        )
        client.loop_start()
        log.info("MQTT: connecting to %s as %s", cfg.url, cfg.effective_client_id(self._station_id))

    def stop(self, offline_body: str, flush_timeout_s: float) -> None:
        """Sends what it can within the timeout (events, then the offline status), disconnects."""
        client = self._client
        if client is None:
            return
        deadline_s = time.monotonic() + flush_timeout_s
        while self._connected and self.pump_events() and time.monotonic() < deadline_s:
            self._acked.wait(FLUSH_POLL_S)
            self._acked.clear()
        if self._connected:
            info = client.publish(self.topic_status, offline_body, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.1, deadline_s - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT: offline status not confirmed: %s", exc)
        self._stopping = True
        client.disconnect()
        client.loop_stop()
        self._client = None
        self._connected = False

    # -- state --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def state(self) -> dict[str, Any]:
        return {
            "connected": self._connected,
            "last_error": self.last_error,
            "connects": self.connects,
            "events_in_flight": len(self._inflight),
            "callback_errors": self.callback_errors,
        }

    def _set_error(self, message: str) -> None:
        if message != self.last_error:  # once per distinct problem, not once per retry
            log.error("MQTT %s: %s", self._cfg.url, message)
        self.last_error = message

    def _set_retry_delay(self) -> None:
        delay_s = max(
            RECONNECT_MIN_S,
            full_jitter_s(self._attempt, RECONNECT_BASE_S, self._cfg.reconnect_max_s, self._rng),
        )
        self._attempt += 1
        if self._client is not None:
            # paho annotates the delays as int, but it sleeps with time.sleep(): floats work.
            self._client.reconnect_delay_set(delay_s, delay_s)  # type: ignore[arg-type]

    # -- publishing ---------------------------------------------------------------------------

    def publish_heartbeat(self, body: str, expiry_s: int) -> bool:
        client = self._client
        if client is None or not self._connected:
            return False
        props = _json_properties()
        props.MessageExpiryInterval = expiry_s
        client.publish(self.topic_heartbeat, body, qos=0, properties=props)
        return True

    def publish_reply(
        self, topic: str, correlation: bytes | None, body: bytes, content_type: str
    ) -> None:
        client = self._client
        if client is None:
            return
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = content_type
        if content_type == "application/json":
            props.PayloadFormatIndicator = 1
        if correlation is not None:
            props.CorrelationData = correlation
        client.publish(topic, body, qos=1, properties=props)

    def pump_events(self) -> bool:
        """Removes acknowledged events, publishes the next ones; True while any are pending."""
        with self._ack_lock:
            acked, self._acked_mids = self._acked_mids, set()
        delivered = [self._inflight.pop(mid) for mid in acked if mid in self._inflight]
        self._outbox.remove(delivered)
        client = self._client
        if client is None:
            return self._outbox.pending > 0
        with self._state_lock:
            if self._rewind:  # a new connection: paho's copies are gone, resend from the oldest
                self._inflight.clear()
                self._last_sent_seq = 0
                self._rewind = False
            room = EVENT_WINDOW - len(self._inflight)
            if self._connected and room > 0:
                for seq, body in self._outbox.after(self._last_sent_seq, room):
                    info = client.publish(self.topic_event, payloads.with_seq(body, seq), qos=1)
                    if info.rc not in (
                        MQTTErrorCode.MQTT_ERR_SUCCESS,
                        MQTTErrorCode.MQTT_ERR_NO_CONN,
                    ):
                        log.error(
                            "MQTT: cannot queue event %d: %s", seq, mqtt.error_string(info.rc)
                        )
                        break
                    self._inflight[info.mid] = seq
                    self._last_sent_seq = seq
        return self._outbox.pending > 0

    # -- paho callbacks (network thread) ------------------------------------------------------

    @_guarded
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._set_error(f"the broker refused the connection: {reason_code}")
            self._set_retry_delay()
            return
        with self._state_lock:
            client.drop_out_messages()
            self._rewind = True
            self._connected = True
        self._attempt = 0
        self.connects += 1
        if self.last_error is not None:
            log.info("MQTT: connected to %s (after: %s)", self._cfg.url, self.last_error)
        else:
            log.info("MQTT: connected to %s", self._cfg.url)
        self.last_error = None
        client.publish(self.topic_status, self._online_body(), qos=1, retain=True)
        client.subscribe(
            self.topic_cmd_prefix + "+", options=SubscribeOptions(qos=1, retainAsPublished=True)
        )
        self._on_activity()

    @_guarded
    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        error = client.connect_error if isinstance(client, _Client) else None
        self._set_error(describe_connect_error(error))
        self._set_retry_delay()

    @_guarded
    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected, self._connected = self._connected, False
        socket_error, self._socket_error = self._socket_error, None
        if self._stopping:
            return
        if was_connected:
            log.warning("MQTT: lost the connection to %s: %s", self._cfg.url, reason_code)
        elif socket_error is not None:  # e.g. TLS 1.3: the server's alert comes after connect()
            self._set_error(describe_socket_error(socket_error))
        elif self.last_error is None:
            self._set_error(f"the broker closed the connection before accepting it: {reason_code}")
        self._set_retry_delay()

    @_guarded
    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._socket_error = text
            log.debug("paho: %s", text)

    @_guarded
    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._ack_lock:
            self._acked_mids.add(mid)
        self._acked.set()
        self._on_activity()

    @_guarded
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.topic.startswith(self.topic_cmd_prefix):
            return
        props = message.properties
        request = CommandRequest(
            name=message.topic[len(self.topic_cmd_prefix) :],
            payload=bytes(message.payload),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation=getattr(props, "CorrelationData", None),
            retained=bool(message.retain),
        )
        self._on_command(request)


def _json_properties() -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.PayloadFormatIndicator = 1
    return props
