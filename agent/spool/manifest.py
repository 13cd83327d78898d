"""Segment manifests: one small signed JSON document per segment, chained, that anyone holding
the station's public key can check (the format; the spool's chain is agent/spool/chain.py, the
verifier agent/tools/verify.py, the observers' guide docs/verification.md).

A manifest names its segment (station, recording, sequence, start time, duration, size,
SHA-256), the SHA-256 of the manifest file the box signed before it in the recording (a chain;
normally the previous segment's), the agent's version, the key's fingerprint and the
notes since the previous manifest: a new run of the agent (and whether the previous one stopped
cleanly), segments the agent recorded as lost (and why), clock steps and other incidents. So a
gap the agent reported is part of the signed record and verifies as a gap, not as tampering.

The file is the canonical JSON (sorted keys, no spaces, ASCII) of the fields plus `sig`,
followed by one newline; `sig` is the base64 Ed25519 signature of SIGNING_CONTEXT followed by
the canonical JSON of every other field. A file that is not byte for byte in this form is
refused, so the chain hash (`sha256sum` of the file) is unambiguous.

    {"agent":"0.1.0","bytes":47188,"duration_ms":2000,"key":"K3QF-7ZPA-MC2X-R4DL",
     "manifest":1,"notes":[],"prev":"9c1e...(64 hex)","recording":"20261123T061502Z-3fa9c2",
     "seq":418,"sha256":"5f2b...(64 hex)","sig":"...(88 base64)",
     "start":"2026-11-23T06:29:58.133Z","station":"AZ-0001"}

on one line in the file: ~450 bytes, under 1 % of a 2-second segment at the lowest rung
(150 kbit/s; ~47 KB as muxed). Hashes are hex as `sha256sum` prints them, so anyone can check
a segment, and the link to the manifest before, by hand.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.core.keys import SIGNATURE_BYTES, canonical_json, fingerprint

FORMAT = 1  # the `manifest` field: the version of this format
SIGNING_CONTEXT = b"station-agent segment manifest v1\n"  # this key's signatures mean this
GENESIS_SHA256 = "0" * 64  # `prev` of a recording's first signed manifest
MAX_MANIFEST_BYTES = 64 * 1024  # a manifest is ~600 bytes; notes are capped (agent/spool/chain.py)
# Note kinds (the `kind` of each entry of `notes`).
NOTE_START = "start"  # a new run of the agent: {"previous_stop": one of PREVIOUS_STOP, "at_utc"}
NOTE_LOST = "lost"  # {"first_seq", "last_seq", "cause", "reason"}: recorded, then lost
NOTE_EVENT = "event"  # {"event", "at_utc", "message"}: an incident the agent reported
NOTE_DROPPED = "notes_dropped"  # {"count"}: notes that did not fit (memory bound)
PREVIOUS_STOP = {
    "clean": "the agent was restarted after a clean stop",
    "unclean": "the agent stopped without a clean shutdown (killed, crashed or power cut)",
    "unknown": "signing started on a recording made before",
    "none": "a new recording began (new box, new spool or replaced index)",
}
_FIELDS = {
    "agent": str,  # the agent's version
    "bytes": int,  # the segment's size
    "duration_ms": int,
    "key": str,  # the signing key's fingerprint
    "manifest": int,  # FORMAT
    "notes": list,
    "prev": str,  # SHA-256 of the manifest file signed before (hex), or GENESIS_SHA256
    "recording": str,
    "seq": int,
    "sha256": str,  # the segment's SHA-256 (hex)
    "sig": str,
    "start": str,  # UTC start of the segment's first frame
    "station": str,
}


class ManifestError(ValueError):
    """A manifest file that is not one (unreadable, altered, incomplete): the reason, short."""


@dataclass(frozen=True)
class SegmentFacts:
    """What a manifest says about its segment."""

    recording_id: str
    seq: int
    started_utc: str
    duration_s: float
    nbytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest file. `sha256` is the file's own hash (what the next one chains to)."""

    fields: dict[str, Any]  # every field but `sig`: what the signature covers
    signature: bytes
    sha256: str

    @property
    def station_id(self) -> str:
        return str(self.fields["station"])

    @property
    def recording_id(self) -> str:
        return str(self.fields["recording"])

    @property
    def seq(self) -> int:
        return int(self.fields["seq"])

    @property
    def started_utc(self) -> str:
        return str(self.fields["start"])

    @property
    def duration_s(self) -> float:
        return int(self.fields["duration_ms"]) / 1000

    @property
    def nbytes(self) -> int:
        return int(self.fields["bytes"])

    @property
    def segment_sha256(self) -> str:
        return str(self.fields["sha256"])

    @property
    def prev_sha256(self) -> str:
        return str(self.fields["prev"])

    @property
    def key_fingerprint(self) -> str:
        return str(self.fields["key"])

    @property
    def notes(self) -> list[dict[str, Any]]:
        return [n for n in self.fields["notes"] if isinstance(n, dict)]

    def signed_by(self, key: Ed25519PublicKey) -> bool:
        try:
            key.verify(self.signature, SIGNING_CONTEXT + canonical_json(self.fields))
        except InvalidSignature:
            return False
        return True


class ManifestSigner:
    """Makes a station's manifests: the private key never leaves this object."""

    def __init__(self, key: Ed25519PrivateKey, station_id: str, agent_version: str) -> None:
        self._key = key
        self.station_id = station_id
        self.agent_version = agent_version
        self.fingerprint = fingerprint(key.public_key())

    def sign(self, segment: SegmentFacts, prev_sha256: str, notes: list[dict[str, Any]]) -> bytes:
        """The manifest file's bytes for `segment`, chained to the manifest `prev_sha256`."""
        fields = {
            "agent": self.agent_version,
            "bytes": segment.nbytes,
            "duration_ms": round(segment.duration_s * 1000),
            "key": self.fingerprint,
            "manifest": FORMAT,
            "notes": notes,
            "prev": prev_sha256,
            "recording": segment.recording_id,
            "seq": segment.seq,
            "sha256": segment.sha256,
            "start": segment.started_utc,
            "station": self.station_id,
        }
        signature = self._key.sign(SIGNING_CONTEXT + canonical_json(fields))
        fields["sig"] = base64.b64encode(signature).decode("ascii")
        return canonical_json(fields) + b"\n"


def file_sha256(data: bytes) -> str:
    """A manifest file's hash, as the next manifest records it."""
    return hashlib.sha256(data).hexdigest()


def read_manifest(data: bytes) -> Manifest:
    """Parses and checks the form of a manifest file (not its signature: `signed_by`)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{len(data)} bytes: too big for a manifest")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ManifestError("not JSON: damaged or altered") from None
    if not isinstance(value, dict):
        raise ManifestError("not a manifest (not a JSON object)")
    if value.get("manifest") != FORMAT:
        raise ManifestError(f"not a manifest of format {FORMAT}")
    for name, kind in _FIELDS.items():
        item = value.get(name)
        if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
            raise ManifestError(f"field {name!r} missing or of the wrong type")
    if set(value) != set(_FIELDS):
        raise ManifestError("unexpected fields: altered")
    try:
        canonical = canonical_json(value) + b"\n"
    except ValueError:
        raise ManifestError("not in canonical form: altered") from None
    if canonical != data:
        raise ManifestError("not in the form the agent writes: altered")
    try:
        signature = base64.b64decode(value.pop("sig"), validate=True)
    except binascii.Error:
        signature = b""
    if len(signature) != SIGNATURE_BYTES:
        raise ManifestError("the signature is not 64 bytes of base64")
    return Manifest(value, signature, file_sha256(data))
