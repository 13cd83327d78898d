"""Signed commands: the control centre signs with its Ed25519 key, the station verifies.

The payload of `{prefix}/{station_id}/cmd/{name}` is then an envelope:

    {"station": "AZ-0001", "args": {"rung": "720p30"}, "expires_utc": "2024-05-01T07:15:00Z",
     "nonce": "9f3c0d5e8a1b4c2d9e7f6a5b4c3d2e1f", "sig": "<base64 of the 64-byte signature>"}

The signature covers SIGNING_CONTEXT followed by the canonical JSON (agent/core/keys.py) of
{"args", "command", "expires_utc", "nonce", "station"}: the command name comes from the topic,
so a signed `auto` cannot be replayed as `restart_capture`, nor one station's command on another.
The station's copy of the public key is read by agent.service.config (`load_command_key`).

    from agent.telemetry.signing import sign_command
    payload = sign_command(private_key, "AZ-0001", "set_rung", {"rung": "720p30"}, ttl_s=60)

The station (`CommandVerifier`) refuses an envelope that is unsigned, badly signed, for another
station, expired, too far in the future (more than MAX_TTL_S + CLOCK_SKEW_S ahead) or replayed
(nonces are remembered while their command could still be valid). See docs/telemetry.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.core.keys import SIGNATURE_BYTES, canonical_json

SIGNING_CONTEXT = b"station-agent command v1\n"  # domain separation: this key signs commands
ENVELOPE_KEYS = frozenset({"station", "args", "expires_utc", "nonce", "sig"})
# A command is valid for at most 5 minutes: enough for a request that waited at the broker
# through a short outage, short enough that a captured command is soon worthless.
MAX_TTL_S = 300.0
CLOCK_SKEW_S = 60.0  # the box and the control centre both run NTP; a minute of slack for expiry
DEFAULT_TTL_S = 60.0
# Nonces held at once. With the rate limits (well under 100 commands a minute) and MAX_TTL_S,
# a few hundred are ever live; the cap only guards the box's memory.
MAX_NONCES = 4096
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_EXPIRES_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$")

# Refusal codes (the reply's error.code; documented in docs/telemetry.md).
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
EXPIRED = "expired"
REPLAYED = "replayed"
WRONG_STATION = "wrong_station"
BAD_REQUEST = "bad_request"
BUSY = "busy"


class CommandRefused(Exception):
    """A request refused before any handler saw it; `code` goes into the reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def signed_bytes(station: str, command: str, args: Any, expires_utc: str, nonce: str) -> bytes:
    """What the signature covers."""
    body = {
        "args": args,
        "command": command,
        "expires_utc": expires_utc,
        "nonce": nonce,
        "station": station,
    }
    return SIGNING_CONTEXT + canonical_json(body)


def sign_command(
    private_key: Ed25519PrivateKey,
    station: str,
    name: str,
    args: dict[str, Any] | None = None,
    *,
    ttl_s: float = DEFAULT_TTL_S,
    now_utc_s: float | None = None,
    nonce: str | None = None,
) -> bytes:
    """The control centre's side: the payload to publish on `.../{station}/cmd/{name}`."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S:.0f}] seconds")
    now = time.time() if now_utc_s is None else now_utc_s
    expires_utc = datetime.fromtimestamp(now + ttl_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    nonce = nonce or secrets.token_hex(16)
    args = {} if args is None else args
    signature = private_key.sign(signed_bytes(station, name, args, expires_utc, nonce))
    envelope = {
        "station": station,
        "args": args,
        "expires_utc": expires_utc,
        "nonce": nonce,
        "sig": base64.b64encode(signature).decode("ascii"),
    }
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def parse_utc_s(text: str) -> float:
    """'2024-05-01T07:15:00Z' -> seconds since the epoch; ValueError when malformed."""
    if not _EXPIRES_RE.match(text):
        raise ValueError(f"{text[:40]!r} is not UTC as YYYY-MM-DDTHH:MM:SSZ")
    return datetime.fromisoformat(text).timestamp()


class NonceCache:
    """Nonces seen, each kept `keep_s` (monotonic) after it was seen; at most `max_nonces`."""

    def __init__(self, keep_s: float = MAX_TTL_S + CLOCK_SKEW_S, max_nonces: int = MAX_NONCES):
        self._keep_s = keep_s
        self._max = max_nonces
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> forget after (monotonic)

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: str, now_s: float) -> bool:
        """False if the nonce was seen before (a replay); raises CommandRefused when full."""
        while self._seen and next(iter(self._seen.values())) <= now_s:
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        if len(self._seen) >= self._max:
            raise CommandRefused(BUSY, "too many recent commands to remember; try again later")
        # forget-after times only grow as long as now_s does: insertion order is expiry order
        last = next(reversed(self._seen.values()), now_s + self._keep_s)
        self._seen[nonce] = max(last, now_s + self._keep_s)
        return True


class CommandVerifier:
    """Checks envelopes for one station against the control centre's public key."""

    def __init__(self, station_id: str, key: Ed25519PublicKey, nonces: NonceCache | None = None):
        self._station_id = station_id
        self._key = key
        self._nonces = nonces or NonceCache()

    def verify(self, name: str, request: dict[str, Any], *, now_s: float, wall_s: float) -> Any:
        """The signed arguments, or CommandRefused. `now_s` is monotonic (the nonce memory),
        `wall_s` the UTC wall clock in epoch seconds (the expiry)."""
        if "sig" not in request:
            raise CommandRefused(
                UNSIGNED, "this station takes signed commands only (see docs/telemetry.md)"
            )
        if set(request) != ENVELOPE_KEYS:
            raise CommandRefused(
                BAD_REQUEST, f"a signed command has exactly the keys {sorted(ENVELOPE_KEYS)}"
            )
        station, args = request["station"], request["args"]
        expires_utc, nonce, sig = request["expires_utc"], request["nonce"], request["sig"]
        if not (isinstance(station, str) and isinstance(args, dict)):
            raise CommandRefused(BAD_REQUEST, "'station' must be a string, 'args' an object")
        if not (isinstance(expires_utc, str) and _EXPIRES_RE.match(expires_utc)):
            raise CommandRefused(BAD_REQUEST, "'expires_utc' must be UTC as YYYY-MM-DDTHH:MM:SSZ")
        if not (isinstance(nonce, str) and _NONCE_RE.match(nonce)):
            raise CommandRefused(BAD_REQUEST, "'nonce' must be 16-64 characters of A-Z a-z 0-9 _ -")
        try:
            message = signed_bytes(station, name, args, expires_utc, nonce)
        except ValueError:  # NaN or infinity in the arguments: no canonical form
            raise CommandRefused(BAD_REQUEST, "arguments must not hold NaN or infinity") from None
        self._check_signature(sig, message)
        if station != self._station_id:
            raise CommandRefused(
                WRONG_STATION, f"signed for station {station[:64]!r}, not this one"
            )
        self._check_expiry(expires_utc, wall_s)
        if not self._nonces.add(nonce, now_s):
            raise CommandRefused(REPLAYED, f"nonce {nonce} was already used")
        return args

    def _check_signature(self, sig: Any, message: bytes) -> None:
        try:
            signature = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
        except binascii.Error:
            signature = b""
        if len(signature) != SIGNATURE_BYTES:
            raise CommandRefused(BAD_SIGNATURE, "'sig' must be the base64 of a 64-byte signature")
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            raise CommandRefused(BAD_SIGNATURE, "the signature does not match") from None

    def _check_expiry(self, expires_utc: str, wall_s: float) -> None:
        try:
            expires_s = parse_utc_s(expires_utc)
        except (ValueError, OverflowError) as exc:
            raise CommandRefused(BAD_REQUEST, f"'expires_utc': {exc}") from None
        box_utc = datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if expires_s < wall_s:
            raise CommandRefused(EXPIRED, f"expired at {expires_utc} (box clock: {box_utc})")
        if expires_s > wall_s + MAX_TTL_S + CLOCK_SKEW_S:
            raise CommandRefused(
                EXPIRED,
                f"expires {expires_utc}, more than {MAX_TTL_S:.0f} s ahead of the box clock "
                f"({box_utc}): sign with a shorter ttl, or check the clocks",
            )
