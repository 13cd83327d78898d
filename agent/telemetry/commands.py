"""Remote commands: turn a request (name + raw payload) into a reply; never raises.

A request is a JSON object (an empty payload means `{}`). If it names a `station_id`, it must be
this station's. The other keys are the handler's arguments. A handler returns a dict (sent as a
JSON reply's `result`) or bytes (sent as they are: the snapshot JPEG), or raises CommandError
for bad input. Anything else that goes wrong becomes an error reply and a log line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from agent.telemetry import payloads

log = logging.getLogger(__name__)

# Commands are a handful of small fields (a rung, a flag); 4 KiB is plenty and stops a mistaken
# or hostile blob before it is parsed.
MAX_COMMAND_PAYLOAD_BYTES = 4096

CommandHandler = Callable[[dict[str, Any]], dict[str, Any] | bytes]

# Error codes in replies (documented in docs/telemetry.md).
UNKNOWN_COMMAND = "unknown_command"
TOO_LARGE = "too_large"
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
WRONG_STATION = "wrong_station"
FAILED = "failed"
BUSY = "busy"


class CommandError(Exception):
    """Raised by a handler for input it cannot act on; the message goes back to the sender."""


class CommandRouter:
    def __init__(self, station_id: str, handlers: Mapping[str, CommandHandler]) -> None:
        self._station_id = station_id
        self._handlers = dict(handlers)

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def handle(self, name: str, payload: bytes, *, at_utc: str) -> dict[str, Any] | bytes:
        """The reply: a JSON-ready dict (ok or error) or the handler's bytes."""

        def error(code: str, message: str) -> dict[str, Any]:
            log.warning("command %r refused (%s): %s", name, code, message)
            return payloads.reply_error(
                self._station_id, at_utc=at_utc, command=name, code=code, message=message
            )

        handler = self._handlers.get(name)
        if handler is None:
            return error(UNKNOWN_COMMAND, f"unknown command; known: {', '.join(self.names)}")
        if len(payload) > MAX_COMMAND_PAYLOAD_BYTES:
            return error(
                TOO_LARGE,
                f"payload of {len(payload)} bytes exceeds {MAX_COMMAND_PAYLOAD_BYTES} bytes",
            )
        try:
            request = json.loads(payload.decode("utf-8")) if payload.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return error(BAD_JSON, f"payload is not UTF-8 JSON: {exc}")
        if not isinstance(request, dict):
            return error(BAD_REQUEST, "payload must be a JSON object")
        target = request.pop("station_id", self._station_id)
        if target != self._station_id:
            return error(WRONG_STATION, f"command is for station {target!r}, not this one")
        try:
            result = handler(request)
        except CommandError as exc:
            return error(BAD_REQUEST, str(exc) or "bad arguments")
        except Exception as exc:  # a broken handler must not kill the command worker
            log.exception("command %r handler failed", name)
            return error(FAILED, f"handler failed: {type(exc).__name__}: {exc}")
        if isinstance(result, bytes | bytearray):
            return bytes(result)
        if not isinstance(result, dict):
            return error(FAILED, f"handler returned {type(result).__name__}, not a dict or bytes")
        log.info("command %r done", name)
        return payloads.reply_ok(self._station_id, at_utc=at_utc, command=name, result=result)
