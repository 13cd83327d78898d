"""Remote commands: turn a request off the wire into a reply and an audit event; never raises.

The checks, in order (the first that fails decides, and no handler runs):

1. retained: a command published with the retain flag would run again at every reconnect; it
   is ignored, without a reply, and reported once per command name;
2. response topic: replies go only to topics under the policy's reply prefix; a request
   naming another topic is refused without a reply (it could point at another station);
3. the command name, the payload size (MAX_COMMAND_PAYLOAD_BYTES) and the JSON nesting depth
   (limits.MAX_JSON_DEPTH), checked before parsing;
4. with a control-centre key: the signed envelope (signing.CommandVerifier); without one, the
   payload is the arguments object, whose `station_id`, if present, must be this station's;
5. the command's rate limit (RATE_LIMITS).

A handler returns a dict (sent as a JSON reply's `result`) or bytes (sent as they are: the
snapshot JPEG), or raises CommandError for bad input. Each request gives one audit event:
`command` when a handler ran, `command_refused` when none did.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.core.events import Event, Severity
from agent.telemetry import payloads
from agent.telemetry.channel import CommandPolicy, CommandRequest
from agent.telemetry.limits import MAX_JSON_DEPTH, RateLimit, TokenBucket, json_too_deep
from agent.telemetry.signing import BUSY, CommandRefused, CommandVerifier

log = logging.getLogger(__name__)

# Commands are a handful of small fields (a rung, a flag) or a signed envelope around them;
# 4 KiB is plenty and stops a mistaken or hostile blob before it is parsed.
MAX_COMMAND_PAYLOAD_BYTES = 4096
SHOWN_CHARS = 64  # of a command name or correlation in replies, events and logs
SHOWN_TOPIC_CHARS = 256
MAX_RETAINED_NAMES = 16  # retained commands reported once per name, for this many names (then
# only counted): the names come from whoever publishes, the memory must not

# What people do by hand, a few times a minute at most. Each restart_capture or
# retake_reference costs seconds of coverage or the health baseline: 3 at once, then 3 a minute.
RATE_LIMITS = {
    "ping": RateLimit(burst=10, per_min=60),
    "snapshot": RateLimit(burst=6, per_min=12),  # each one is a JPEG of ~100 KB on the broker
    "set_rung": RateLimit(burst=6, per_min=6),
    "auto": RateLimit(burst=6, per_min=6),
    "restart_capture": RateLimit(burst=3, per_min=3),
    "retake_reference": RateLimit(burst=3, per_min=3),
}
DEFAULT_RATE_LIMIT = RateLimit(burst=6, per_min=6)  # any other command
# Refusals reported as events: 30 at once, then 30 a minute (a person's mistakes fit; a flood
# of junk does not push real events out of the outbox).
AUDIT_REFUSALS = RateLimit(burst=30, per_min=30)

CommandHandler = Callable[[dict[str, Any]], dict[str, Any] | bytes]

# Error codes in replies (documented in docs/telemetry.md); signing.py has the signature ones.
UNKNOWN_COMMAND = "unknown_command"
TOO_LARGE = "too_large"
TOO_DEEP = "too_deep"
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
WRONG_STATION = "wrong_station"
RATE_LIMITED = "rate_limited"
FAILED = "failed"
# Refusals without a reply (the audit event's reason only).
RETAINED = "retained"
RESPONSE_TOPIC_REFUSED = "response_topic_refused"


class CommandError(Exception):
    """Raised by a handler for input it cannot act on; the message goes back to the sender."""


@dataclass(frozen=True)
class CommandOutcome:
    reply: dict[str, Any] | bytes | None  # None: nothing to send (or nowhere to send it)
    audit: Event | None  # None: already reported (a retained command seen again)
    executed: bool  # a handler ran


def utc_iso(wall_s: float) -> str:
    return datetime.fromtimestamp(wall_s, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """Untrusted text cut to `limit` characters for replies, events and logs."""
    return text if len(text) <= limit else text[:limit] + "…"


def response_topic_allowed(topic: str, reply_prefix: str) -> bool:
    """Under `reply_prefix` + "/", with no wildcard or NUL (not a topic one may publish to)."""
    rest = topic.removeprefix(reply_prefix + "/")
    return (
        rest != topic
        and rest != ""
        and not any(char in topic for char in "+#\x00")
        and len(topic.encode("utf-8", "surrogatepass")) <= 65535
    )


class CommandRouter:
    def __init__(
        self,
        station_id: str,
        handlers: Mapping[str, CommandHandler],
        policy: CommandPolicy | None,
        *,
        rate_limits: Mapping[str, RateLimit] = RATE_LIMITS,
    ) -> None:
        """`policy` None: no reply goes anywhere (a channel that takes no commands)."""
        self._station_id = station_id
        self._handlers = dict(handlers)
        self._reply_prefix = policy.reply_prefix if policy else None
        self._verifier = CommandVerifier(station_id, policy.key) if policy and policy.key else None
        self._buckets = {
            name: TokenBucket(rate_limits.get(name, DEFAULT_RATE_LIMIT)) for name in handlers
        }
        self._retained_seen: set[str] = set()

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def signed_only(self) -> bool:
        return self._verifier is not None

    def handle(self, request: CommandRequest, *, now_s: float, wall_s: float) -> CommandOutcome:
        """The reply and audit event for one request. `now_s` is monotonic (rate limits,
        nonce memory), `wall_s` the UTC wall clock in epoch seconds (expiry, `at_utc`)."""
        name = request.name
        if request.retained:
            first = name not in self._retained_seen
            report = first and len(self._retained_seen) < MAX_RETAINED_NAMES
            if report:
                self._retained_seen.add(name)
            message = "retained commands are never run (they would run again at each reconnect)"
            return self._refused(request, RETAINED, message, wall_s, reply=False, report=report)
        refused = self.screen(request, wall_s)
        if refused is not None:
            return refused
        handler = self._handlers.get(name)
        verified = False  # a control-centre signature checked out
        try:
            if handler is None:
                raise CommandRefused(
                    UNKNOWN_COMMAND, f"unknown command; known: {', '.join(self.names)}"
                )
            args = self._arguments(request, now_s=now_s, wall_s=wall_s)
            verified = self.signed_only
            bucket = self._buckets[name]
            if not bucket.take(now_s):
                limit = bucket.limit
                raise CommandRefused(
                    RATE_LIMITED,
                    f"{name} is limited to {limit.burst} at once and {limit.per_min:g} a "
                    f"minute; try again in {math.ceil(bucket.wait_s(now_s))} s",
                )
        except CommandRefused as refusal:
            return self._refused(request, refusal.code, refusal.message, wall_s, verified=verified)
        return self._run(request, handler, args, wall_s, verified=verified)

    def screen(self, request: CommandRequest, wall_s: float) -> CommandOutcome | None:
        """The refusal for a response topic outside the reply prefix; None when it may go on.
        Stateless: safe from any thread (paho's, for a `busy` reply)."""
        topic = request.response_topic
        if topic is None or (
            self._reply_prefix is not None and response_topic_allowed(topic, self._reply_prefix)
        ):
            return None
        where = f"under {self._reply_prefix}/" if self._reply_prefix else "nowhere on this channel"
        message = f"response topic {shown(topic)!r} refused: replies go {where}"
        return self._refused(request, RESPONSE_TOPIC_REFUSED, message, wall_s, reply=False)

    def refuse_busy(self, request: CommandRequest, wall_s: float) -> CommandOutcome:
        """The queue is full: a `busy` reply (if the response topic is allowed). Stateless."""
        if request.retained:  # never answered; reported (once) only when the queue takes it
            return CommandOutcome(None, None, executed=False)
        screened = self.screen(request, wall_s)
        if screened is not None:
            return screened
        return self._refused(request, BUSY, "too many commands waiting; try again later", wall_s)

    # -- steps --------------------------------------------------------------------------------

    def _arguments(self, request: CommandRequest, *, now_s: float, wall_s: float) -> Any:
        payload = request.payload
        if len(payload) > MAX_COMMAND_PAYLOAD_BYTES:
            raise CommandRefused(
                TOO_LARGE,
                f"payload of {len(payload)} bytes exceeds {MAX_COMMAND_PAYLOAD_BYTES} bytes",
            )
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CommandRefused(BAD_JSON, f"payload is not UTF-8: {exc}") from None
        if json_too_deep(text):
            raise CommandRefused(TOO_DEEP, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            request_body = json.loads(text, parse_constant=_no_constant) if text.strip() else {}
        except ValueError as exc:  # JSONDecodeError, NaN/Infinity, an integer of 4,300+ digits
            raise CommandRefused(BAD_JSON, f"payload is not JSON: {exc}") from None
        if not isinstance(request_body, dict):
            raise CommandRefused(BAD_REQUEST, "payload must be a JSON object")
        if self._verifier is not None:
            args = self._verifier.verify(request.name, request_body, now_s=now_s, wall_s=wall_s)
        elif "sig" in request_body:
            raise CommandRefused(
                BAD_REQUEST, "signed command, but this station has no [mqtt] command_key_file"
            )
        else:
            args = request_body
            target = args.pop("station_id", self._station_id)
            if target != self._station_id:
                raise CommandRefused(
                    WRONG_STATION, f"command is for station {shown(str(target))!r}, not this one"
                )
        return args

    def _run(
        self,
        request: CommandRequest,
        handler: CommandHandler,
        args: Any,
        wall_s: float,
        *,
        verified: bool,
    ) -> CommandOutcome:
        name = request.name
        try:
            result = handler(args)
        except CommandError as exc:
            message = str(exc) or "bad arguments"
            return self._ran(request, BAD_REQUEST, message, wall_s, verified=verified)
        except Exception as exc:  # a broken handler must not kill the command worker
            log.exception("command %r handler failed", name)
            message = f"handler failed: {type(exc).__name__}: {exc}"
            return self._ran(request, FAILED, message, wall_s, verified=verified)
        if not isinstance(result, bytes | bytearray | dict):
            message = f"handler returned {type(result).__name__}, not a dict or bytes"
            return self._ran(request, FAILED, message, wall_s, verified=verified)
        reply: dict[str, Any] | bytes = (
            payloads.reply_ok(self._station_id, at_utc=utc_iso(wall_s), command=name, result=result)
            if isinstance(result, dict)
            else bytes(result)
        )
        text = f"command {name} done"
        audit = self._audit("command", "info", request, "ok", text, wall_s, verified=verified)
        return CommandOutcome(reply, audit, executed=True)

    # -- replies and audit events -------------------------------------------------------------

    def _error_reply(self, name: str, code: str, message: str, wall_s: float) -> dict[str, Any]:
        at_utc = utc_iso(wall_s)
        return payloads.reply_error(
            self._station_id, at_utc=at_utc, command=shown(name), code=code, message=message
        )

    def _ran(
        self, request: CommandRequest, code: str, message: str, wall_s: float, *, verified: bool
    ) -> CommandOutcome:
        """A handler ran and refused its arguments or failed."""
        severity: Severity = "error" if code == FAILED else "warning"
        text = f"command {request.name} {code}: {message}"
        audit = self._audit("command", severity, request, code, text, wall_s, verified=verified)
        reply = self._error_reply(request.name, code, message, wall_s)
        return CommandOutcome(reply, audit, executed=True)

    def _refused(
        self,
        request: CommandRequest,
        code: str,
        message: str,
        wall_s: float,
        *,
        reply: bool = True,
        report: bool = True,
        verified: bool = False,
    ) -> CommandOutcome:
        text = f"command {shown(request.name)!r} refused ({code}): {message}"
        audit = self._audit(
            "command_refused", "warning", request, code, text, wall_s, verified=verified
        )
        body = self._error_reply(request.name, code, message, wall_s) if reply else None
        return CommandOutcome(body, audit if report else None, executed=False)

    def _audit(
        self,
        kind: str,
        severity: Severity,
        request: CommandRequest,
        result: str,
        message: str,
        wall_s: float,
        *,
        verified: bool,
    ) -> Event:
        topic = request.response_topic
        correlation = request.correlation
        fields: dict[str, Any] = {
            "command": shown(request.name),
            "response_topic": shown(topic, SHOWN_TOPIC_CHARS) if topic is not None else None,
            "correlation": shown(correlation.hex()) if correlation is not None else None,
            "signed": verified,
            "result" if kind == "command" else "reason": result,
        }
        return Event(kind, severity, message, fields, at_utc=utc_iso(wall_s))


class AuditGate:
    """Which audit events go out: every command that ran; refusals up to AUDIT_REFUSALS, the
    rest counted, and the next one reported says how many were not (`unreported_before`).
    Pure: `now_s` is monotonic seconds; the caller serialises calls."""

    def __init__(self, limit: RateLimit = AUDIT_REFUSALS) -> None:
        self._bucket = TokenBucket(limit)
        self._unreported = 0
        self.done = 0  # commands a handler ran
        self.refused = 0  # commands refused before any handler

    def admit(self, outcome: CommandOutcome, now_s: float) -> Event | None:
        if outcome.executed:
            self.done += 1
            return outcome.audit
        self.refused += 1
        event = outcome.audit
        if event is None:
            return None
        if not self._bucket.take(now_s):
            self._unreported += 1
            log.debug("command refusal not reported (too many): %s", event.message)
            return None
        if self._unreported:
            fields = {**event.fields, "unreported_before": self._unreported}
            event = Event(event.kind, event.severity, event.message, fields, event.at_utc)
            self._unreported = 0
        return event


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
