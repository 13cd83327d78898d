"""The JSON messages central staff receive, built from plain values (no I/O, no clock reads).

Every payload carries `schema_version`, `type`, `station_id` and `at_utc`; the JSON Schema for
each type is in agent/telemetry/schemas/ and documented in docs/telemetry.md.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any

from agent.core.events import Event

SCHEMA_VERSION = 1  # bump on any incompatible change; consumers check it first
PIPELINE_SECTIONS = ("capture", "encode", "uplink", "spool", "rtmp", "health", "privacy")
MESSAGE_TYPES = ("status", "heartbeat", "event", "reply")


def load_schema(message_type: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) shipped for one message type, e.g. "heartbeat"."""
    if message_type not in MESSAGE_TYPES:
        raise ValueError(f"no schema for {message_type!r}; known: {', '.join(MESSAGE_TYPES)}")
    path = resources.files("agent.telemetry").joinpath("schemas", f"{message_type}.json")
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _envelope(kind: str, station_id: str, at_utc: str) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "type": kind,
        "station_id": station_id,
        "at_utc": at_utc,
    }


def status_online(
    station_id: str,
    *,
    at_utc: str,
    version: str,
    build: str | None = None,
    started_utc: str,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """`build` is the git commit the program was built from (agent.build_id()), or None."""
    body = _envelope("status", station_id, at_utc)
    body.update(
        state="online", version=version, build=build, started_utc=started_utc, summary=summary
    )
    return body


def status_offline(
    station_id: str,
    *,
    at_utc: str,
    version: str,
    build: str | None = None,
    started_utc: str,
    reason: str,
    clean: bool,
) -> dict[str, Any]:
    """`clean` False is the last will: the broker sends it when the connection dies, so its
    `at_utc` is when the agent connected, not when it went dark."""
    body = _envelope("status", station_id, at_utc)
    body.update(
        state="offline",
        version=version,
        build=build,
        started_utc=started_utc,
        reason=reason,
        clean=clean,
    )
    return body


def heartbeat(
    station_id: str,
    *,
    at_utc: str,
    seq: int,
    uptime_s: float,
    system: dict[str, Any],
    clock: dict[str, Any],
    pipeline: dict[str, Any] | None,
    status_error: str | None,
    telemetry: dict[str, Any],
) -> dict[str, Any]:
    """`pipeline` is the pipeline's status snapshot; when taking it failed, `status_error`
    says why and the pipeline sections are absent. `clock`: agent.core.timesync.clock_state."""
    body = _envelope("heartbeat", station_id, at_utc)
    body.update(seq=seq, uptime_s=round(uptime_s, 3), system=system, clock=clock)
    if pipeline is not None:
        for section in PIPELINE_SECTIONS:
            if section in pipeline:
                body[section] = pipeline[section]
    if status_error is not None:
        body["status_error"] = status_error
    body["telemetry"] = telemetry
    return body


def event(station_id: str, ev: Event, *, event_id: str) -> dict[str, Any]:
    """The event as queued in the outbox; `seq` is added when it is sent."""
    body = _envelope("event", station_id, ev.at_utc)
    body.update(
        id=event_id, kind=ev.kind, severity=ev.severity, message=ev.message, fields=ev.fields
    )
    return body


def with_seq(event_json: str, seq: int) -> str:
    """Adds the outbox seq to a stored event (compact JSON object text) without re-parsing it."""
    if not event_json.endswith("}"):
        raise ValueError("not a JSON object")
    return f'{event_json[:-1]},"seq":{seq}}}'


def reply_ok(
    station_id: str, *, at_utc: str, command: str, result: dict[str, Any]
) -> dict[str, Any]:
    body = _envelope("reply", station_id, at_utc)
    body.update(command=command, ok=True, result=result)
    return body


def reply_error(
    station_id: str, *, at_utc: str, command: str, code: str, message: str
) -> dict[str, Any]:
    body = _envelope("reply", station_id, at_utc)
    body.update(command=command, ok=False, error={"code": code, "message": message})
    return body


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null (for example an fps not yet known)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json(body: dict[str, Any]) -> str:
    """Compact JSON, one line. Unknown objects become their str(); NaN/inf become null."""
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:  # a non-finite float somewhere: rare, so only then walk the tree
        return json.dumps(_finite(body), separators=(",", ":"), allow_nan=False, default=str)
