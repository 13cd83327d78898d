"""The network items of `station-agent check`: upload, throughput, MQTT round trip, clock.

Each takes the config and secrets and returns a `CheckResult` with a fix a technician can act
on; every network wait has its own timeout.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import secrets as random_tokens
import ssl
import threading
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.adapt.ladder import build_ladder, format_bps
from agent.core.config import Secrets
from agent.core.timesync import format_offset, is_utc, utc_label, utc_offset_s
from agent.service.config import AgentConfig
from agent.telemetry.mqtt import describe_connect_error
from agent.tools.check import CheckResult, System, top_rung
from agent.uplink.config import HttpUplinkConfig
from agent.uplink.targets import (
    RejectedUploadError,
    RetryableUploadError,
    UploadTarget,
    open_target,
)

log = logging.getLogger(__name__)

PROBE_BYTES = 128_000  # first timed PUT: sizes the second one
THROUGHPUT_TARGET_S = 2.0  # the second PUT is sized to take about this long
THROUGHPUT_MAX_BYTES = 2_000_000
MQTT_TIMEOUT_S = 5.0  # connect + subscribe + publish + receive our own message
CLOCK_TOLERANCE_S = 1.0
HTTP_DATE_TIMEOUT_S = 5.0
# MQTT v5 CONNACK reason codes for refused credentials: 0x86 bad user name or password,
# 0x87 not authorized (mosquitto answers 0x87 or 0x86 depending on the version).
MQTT_BAD_CREDENTIALS = {0x86, 0x87, 0x04, 0x05}


def _upload_target(cfg: AgentConfig, http: HttpUplinkConfig, secrets: Secrets) -> UploadTarget:
    return open_target(http, cfg.station_id, secrets, cfg.encode.segment_s)


def _no_upload() -> CheckResult:
    fix = "Set [uplink.http] url (and token_file) to what central staff gave you."
    return CheckResult("upload", "WARN", "no [uplink.http] configured: recording only", fix)


def explain_upload_error(exc: Exception, http: HttpUplinkConfig) -> tuple[str, str]:
    """(what happened, fix) for a failed PUT, in plain words."""
    if isinstance(exc, RejectedUploadError):
        if exc.status in (401, 403):
            where = http.token_file or http.password_file
            if where is None:
                return str(exc), "The server wants a token: set [uplink.http] token_file."
            return (
                f"{exc}: the upload token is wrong",
                f"The upload token is wrong: put this station's token (one line) in {where}; "
                "ask central staff for it.",
            )
        if exc.status == 404:
            return str(exc), f"The upload URL path is wrong: check [uplink.http] url ({http.url})."
        if exc.status in (405, 501):
            return str(exc), f"That server does not accept uploads at {http.url}: check the URL."
        return str(exc), "The server refused the upload: call central staff with this line."
    cause = exc.__cause__
    text = str(exc)
    if isinstance(cause, httpx.ConnectError) and "certificate" in text.lower():
        return text, "TLS certificate problem: check the clock, [uplink.http] url and ca_file."
    if isinstance(cause, httpx.ConnectError):
        what = "the upload server cannot be reached"
        if "Name or service not known" in text or "resolution" in text:
            what = "the upload server's name cannot be resolved"
        fix = (
            f"{what[0].upper()}{what[1:]}: check the network cable / SIM and that "
            f"[uplink.http] url ({http.url}) is right; `ping` its host."
        )
        return f"{what} ({text})", fix
    if isinstance(cause, httpx.TimeoutException):
        return f"no answer in time ({text})", "The link is very slow or blocked: try another one."
    if isinstance(exc, RetryableUploadError):
        return text, "The server has a problem right now: try again in a minute, then call."
    return text, "Check [uplink.http] url and the network."


def check_upload(cfg: AgentConfig, secrets: Secrets) -> CheckResult:
    http = cfg.uplink.http
    if http is None:
        return _no_upload()
    name = f"check-{random_tokens.token_hex(6)}.txt"
    body = f"station-agent check {cfg.station_id}\n".encode()
    target = _upload_target(cfg, http, secrets)
    try:
        try:
            target.put(name, body, "text/plain", hashlib.sha256(body).hexdigest())
        except (RejectedUploadError, RetryableUploadError) as exc:
            what, fix = explain_upload_error(exc, http)
            return CheckResult("upload", "FAIL", f"PUT {target.description}: {what}", fix)
        try:
            target.delete(name)
        except (RejectedUploadError, RetryableUploadError) as exc:
            fix = "Harmless for streaming; tell central staff the server refuses DELETE."
            detail = f"PUT to {target.description} works; removing the test object failed: {exc}"
            return CheckResult("upload", "WARN", detail, fix)
    finally:
        target.close()
    return CheckResult("upload", "PASS", f"PUT and DELETE of {name} at {target.description}")


def _timed_put(target: UploadTarget, name: str, size: int, system: System) -> float:
    data = random_tokens.token_bytes(size)  # random: no link compression flatters the figure
    started_s = system.monotonic()
    target.put(name, data, "application/octet-stream", None)
    return max(system.monotonic() - started_s, 1e-6)


def check_throughput(cfg: AgentConfig, secrets: Secrets, system: System) -> CheckResult:
    http = cfg.uplink.http
    if http is None:
        return CheckResult("throughput", "SKIP", "skipped: no upload configured")
    if http.url.startswith("file://"):
        return CheckResult("throughput", "PASS", f"{http.url}: a local folder, no link to measure")
    name = f"check-{random_tokens.token_hex(6)}.bin"
    target = _upload_target(cfg, http, secrets)
    try:
        probe_s = _timed_put(target, name, PROBE_BYTES, system)  # also opens the connection
        size = int(PROBE_BYTES / probe_s * THROUGHPUT_TARGET_S)
        size = max(PROBE_BYTES, min(THROUGHPUT_MAX_BYTES, size))
        elapsed_s = _timed_put(target, name, size, system)
        target.delete(name)
    except (RejectedUploadError, RetryableUploadError) as exc:
        what, fix = explain_upload_error(exc, http)
        return CheckResult("throughput", "FAIL", what, fix)
    finally:
        target.close()
    bps = 8 * size / elapsed_s
    return judge_throughput(cfg, bps, size)


def judge_throughput(cfg: AgentConfig, bps: float, sent_bytes: int) -> CheckResult:
    """Pure: the measured rate against the ladder, with the controller's margin."""
    cap = cfg.capture
    ladder = build_ladder(cfg.adapt, cap.width, cap.height, cap.fps)
    usable_bps = cfg.adapt.margin * bps
    fitting = [r for r in ladder if r.bitrate_bps <= usable_bps]
    data: dict[str, Any] = {"bps": round(bps), "sent_bytes": sent_bytes}
    detail = f"{format_bps(bps)}bit/s up ({sent_bytes / 1e6:.1f} MB)"
    if not fitting:
        data["rung"] = None
        fix = (
            f"The link is too slow for live video (the lowest rung needs "
            f"{format_bps(ladder[0].bitrate_bps / cfg.adapt.margin)}bit/s): the box records and "
            "uploads later. Use another network or SIM, or move the router/antenna."
        )
        return CheckResult("throughput", "FAIL", f"{detail}: below the lowest rung", fix, data)
    rung = fitting[-1]
    data["rung"] = rung.name
    detail += f", supports {rung.name}"
    if rung != ladder[-1]:
        top = top_rung(cfg)
        fix = (
            f"Live video will be {rung.label} instead of {top.label}: fine for the "
            "vote; for full quality use a faster link (cable instead of Wi-Fi/4G)."
        )
        return CheckResult("throughput", "WARN", detail, fix, data)
    return CheckResult("throughput", "PASS", detail + " (the top rung)", data=data)


# --- MQTT ------------------------------------------------------------------------------------


class _RoundTrip:
    """Connect, subscribe to the check topic, publish a nonce, wait to receive it."""

    def __init__(self, topic: str, nonce: bytes) -> None:
        self.topic, self.nonce = topic, nonce
        self.connected = threading.Event()
        self.received = threading.Event()
        self.refused: ReasonCode | None = None
        self.denied: str | None = None

    def on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            self.refused = reason
        else:
            client.subscribe(self.topic, qos=1)
        self.connected.set()

    def on_subscribe(
        self, client: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        if reasons and reasons[0].is_failure:
            self.denied = f"subscribe refused: {reasons[0]}"
            self.received.set()
            return
        client.publish(self.topic, self.nonce, qos=1)

    def on_publish(self, _c: mqtt.Client, _u: Any, _mid: int, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            self.denied = f"publish refused: {reason}"
            self.received.set()

    def on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload == self.nonce:
            self.received.set()


def check_mqtt(
    cfg: AgentConfig, secrets: Secrets, timeout_s: float = MQTT_TIMEOUT_S
) -> CheckResult:
    mq = cfg.mqtt
    if mq is None:
        fix = "Set [mqtt] url, username and password_file so central staff see this station."
        return CheckResult("mqtt", "WARN", "no [mqtt] configured: no telemetry", fix)
    broker = mq.broker
    topic = f"{mq.prefix}/{cfg.station_id}/check"
    trip = _RoundTrip(topic, random_tokens.token_hex(8).encode())
    # Not the agent's own client id: that would take over the running service's session.
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{mq.effective_client_id(cfg.station_id)}-check",
        protocol=mqtt.MQTTv5,
    )
    password = secrets.mqtt_password.get_secret_value() if secrets.mqtt_password else None
    if mq.username is not None or password is not None:
        client.username_pw_set(mq.username, password)
    client.on_connect, client.on_subscribe = trip.on_connect, trip.on_subscribe
    client.on_publish, client.on_message = trip.on_publish, trip.on_message
    client.connect_timeout = timeout_s
    where = f"{mq.url} as {mq.username or '(no user)'}"
    try:
        if broker.tls:
            client.tls_set(
                ca_certs=str(mq.ca_file) if mq.ca_file else None,
                certfile=str(mq.cert_file) if mq.cert_file else None,
                keyfile=str(mq.key_file) if mq.key_file else None,
            )
        client.connect(broker.host, broker.port, keepalive=max(10, int(timeout_s * 2)))
    except (OSError, ssl.SSLError) as exc:
        fix = (
            "Check the network and [mqtt] url (host, port, mqtt:// or mqtts://); "
            "for TLS, [mqtt] ca_file and the box's clock."
        )
        return CheckResult("mqtt", "FAIL", f"{mq.url}: {describe_connect_error(exc)}", fix)
    client.loop_start()
    try:
        return _mqtt_result(trip, mq.password_file, where, topic, timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()


def _mqtt_result(
    trip: _RoundTrip, password_file: Any, where: str, topic: str, timeout_s: float
) -> CheckResult:
    if not trip.connected.wait(timeout_s):
        fix = "The broker does not answer: check [mqtt] url and that the port is open."
        return CheckResult("mqtt", "FAIL", f"{where}: no CONNACK within {timeout_s:.0f} s", fix)
    if trip.refused is not None:
        detail = f"{where}: broker refused the connection ({trip.refused})"
        if trip.refused.value in MQTT_BAD_CREDENTIALS:
            fix = (
                "The MQTT username or password is wrong: put this station's password (one "
                f"line) in {password_file or '[mqtt] password_file'} and check [mqtt] username."
            )
        else:
            fix = "Call central staff with this line (the broker refused this station)."
        return CheckResult("mqtt", "FAIL", detail, fix)
    if not trip.received.wait(timeout_s):
        fix = f"Ask central staff to allow this user to publish and subscribe on {topic}."
        detail = f"{where}: own message on {topic} not received within {timeout_s:.0f} s"
        return CheckResult("mqtt", "FAIL", detail, fix)
    if trip.denied is not None:
        fix = f"Ask central staff to allow this user to publish and subscribe on {topic}."
        return CheckResult("mqtt", "FAIL", f"{where}: {trip.denied}", fix)
    return CheckResult("mqtt", "PASS", f"{where}: published and received on {topic}")


# --- clock -----------------------------------------------------------------------------------


def _http_date_offset_s(cfg: AgentConfig, system: System) -> tuple[float, float] | None:
    """(low, high) bounds of server clock minus ours from the upload server's Date header.
    The header has one-second resolution, so the bounds are about a second apart."""
    http = cfg.uplink.http
    if http is None or not http.url.startswith(("http://", "https://")):
        return None
    verify: ssl.SSLContext | bool = True
    if http.url.startswith("https://"):
        verify = ssl.create_default_context(cafile=str(http.ca_file) if http.ca_file else None)
        if http.cert_file is not None and http.key_file is not None:
            verify.load_cert_chain(str(http.cert_file), str(http.key_file))
    try:
        with httpx.Client(verify=verify, timeout=HTTP_DATE_TIMEOUT_S) as client:
            before_s = system.wall_s()
            response = client.head(http.url + "/")
            after_s = system.wall_s()
    except httpx.HTTPError as exc:
        log.info("clock check: no answer from %s: %s", http.url, exc)
        return None
    header = response.headers.get("Date")
    if not header:
        return None
    try:
        server_s = email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        return None
    return server_s - after_s, server_s + 1.0 - before_s


FIX_NTP = (
    "Connect the box to the internet and enable time sync: "
    "`sudo timedatectl set-ntp true`, then wait a minute and check again."
)
FIX_ZONE = (
    "The picture shows UTC time. If the station is not on UTC, set its time zone, e.g. "
    "`sudo timedatectl set-timezone Europe/Berlin` (`timedatectl list-timezones` lists them), "
    "then `sudo systemctl restart station-agent`."
)


def ntp_state(system: System) -> str | None:
    """`yes`, `no` or None (cannot tell): from the kernel (adjtimex, works without systemd),
    else from timedatectl."""
    synced = system.ntp_synchronized()
    if synced is not None:
        return "yes" if synced else "no"
    if system.systemd():
        code, out = system.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], 5.0)
        return out if code == 0 and out in ("yes", "no") else None
    return None


def check_clock(cfg: AgentConfig | None, system: System) -> CheckResult:
    """The clock against NTP and the upload server's Date, and the time zone the overlay
    shows (WARN on UTC: the box was probably never given its zone)."""
    result = _clock_sync(cfg, system, ntp_state(system))
    zone = system.time_zone()
    offset_s = utc_offset_s(system.wall_s())
    detail = f"{result.detail}; time zone {zone or 'not set'} ({utc_label(offset_s)})"
    data = result.data | {"time_zone": zone, "utc_offset": format_offset(offset_s)}
    if not is_utc(zone) or result.result == "FAIL":
        return CheckResult("clock", result.result, detail, result.fix, data)
    fix = FIX_ZONE if result.fix is None else f"{result.fix} {FIX_ZONE}"
    return CheckResult("clock", "WARN", detail, fix, data)


def _clock_sync(cfg: AgentConfig | None, system: System, ntp: str | None) -> CheckResult:
    offset = _http_date_offset_s(cfg, system) if cfg is not None else None
    if offset is not None and (offset[0] > CLOCK_TOLERANCE_S or offset[1] < -CLOCK_TOLERANCE_S):
        ahead = offset[1] < 0
        diff_s = -offset[1] if ahead else offset[0]
        detail = f"clock is {diff_s:.0f} s {'ahead of' if ahead else 'behind'} the upload server"
        return CheckResult("clock", "FAIL", detail, FIX_NTP, {"offset_s": list(offset)})
    within = "within 1 s of the upload server (HTTP Date)" if offset is not None else None
    if ntp == "yes":
        detail = "NTP synchronised" + (f", {within}" if within else "")
        return CheckResult("clock", "PASS", detail, data={"ntp": ntp})
    if ntp == "no":
        detail = "NTP not synchronised" + (f" (now {within})" if within else "")
        return CheckResult("clock", "WARN", detail, FIX_NTP, {"ntp": ntp})
    if within:
        return CheckResult("clock", "PASS", within, data={"offset_s": list(offset or ())})
    fix = "Cannot tell: make sure time sync is on (`timedatectl`) and the upload URL answers."
    return CheckResult("clock", "WARN", "NTP state unknown, no HTTP Date to compare", fix)
