"""Station keys (agent/core/keys.py) and signed segment manifests (agent/spool/manifest.py)."""

from __future__ import annotations

import base64
import json
import re

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from agent.core.keys import (
    canonical_json,
    fingerprint,
    generate_private_key,
    parse_private_key,
    parse_public_key,
    private_key_text,
    public_key_text,
)
from agent.spool.manifest import (
    GENESIS_SHA256,
    ManifestError,
    ManifestSigner,
    SegmentFacts,
    file_sha256,
    read_manifest,
)

FACTS = SegmentFacts("20261123T061502Z-3fa9c2", 7, "2026-11-23T06:15:16.000Z", 2.0, 1234, "ab" * 32)


def test_private_key_round_trips_through_its_one_line_text() -> None:
    key = generate_private_key()
    text = private_key_text(key)
    assert "\n" not in text and len(text) < 100
    again = parse_private_key(text + "\n")
    assert public_key_text(again.public_key()) == public_key_text(key.public_key())


def test_a_public_key_is_not_taken_for_a_private_one() -> None:
    public = public_key_text(generate_private_key().public_key())
    with pytest.raises(ValueError, match="PKCS#8"):
        parse_private_key(public)
    with pytest.raises(ValueError, match="base64"):
        parse_private_key("not a key at all")


def test_public_key_text_and_pem_are_both_read() -> None:
    public = generate_private_key().public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_key_text(parse_public_key(pem)) == public_key_text(public)
    assert public_key_text(parse_public_key(public_key_text(public))) == public_key_text(public)
    with pytest.raises(ValueError, match="32 bytes"):
        parse_public_key(base64.b64encode(b"x" * 31))


def test_fingerprint_is_short_readable_and_differs_between_keys() -> None:
    a, b = generate_private_key().public_key(), generate_private_key().public_key()
    assert re.fullmatch(r"[A-Z2-7]{4}(-[A-Z2-7]{4}){3}", fingerprint(a))
    assert fingerprint(a) == fingerprint(parse_public_key(public_key_text(a)))
    assert fingerprint(a) != fingerprint(b)


def test_a_signed_manifest_reads_back_and_verifies_with_its_key_only() -> None:
    key = generate_private_key()
    signer = ManifestSigner(key, "AZ-0001", "0.1.0")
    data = signer.sign(FACTS, GENESIS_SHA256, [{"kind": "start", "previous_stop": "none"}])
    assert data.endswith(b"}\n") and data.count(b"\n") == 1
    manifest = read_manifest(data)
    assert manifest.signed_by(key.public_key())
    assert not manifest.signed_by(generate_private_key().public_key())
    assert (manifest.station_id, manifest.recording_id, manifest.seq) == (
        "AZ-0001", FACTS.recording_id, 7,
    )  # fmt: skip
    assert manifest.duration_s == 2.0 and manifest.nbytes == 1234
    assert manifest.key_fingerprint == signer.fingerprint
    assert manifest.sha256 == file_sha256(data)
    assert manifest.notes == [{"kind": "start", "previous_stop": "none"}]


def test_changing_any_signed_value_breaks_the_signature() -> None:
    key = generate_private_key()
    data = ManifestSigner(key, "AZ-0001", "0.1.0").sign(FACTS, GENESIS_SHA256, [])
    value = json.loads(data)
    value["seq"] = 8
    forged = canonical_json(value) + b"\n"
    assert not read_manifest(forged).signed_by(key.public_key())


def test_a_manifest_not_in_the_agents_exact_form_is_refused() -> None:
    data = ManifestSigner(generate_private_key(), "AZ-0001", "0.1.0").sign(
        FACTS, GENESIS_SHA256, []
    )
    value = json.loads(data)
    with pytest.raises(ManifestError, match="form"):
        read_manifest(json.dumps(value).encode() + b"\n")  # same values, spaces added
    with pytest.raises(ManifestError, match="JSON"):
        read_manifest(data[:-5])
    with pytest.raises(ManifestError, match="unexpected"):
        read_manifest(canonical_json(value | {"extra": 1}) + b"\n")
    del value["sha256"]
    with pytest.raises(ManifestError, match="sha256"):
        read_manifest(canonical_json(value) + b"\n")


@given(st.binary(max_size=700), st.integers(min_value=0, max_value=700))
def test_any_single_byte_change_is_refused_or_fails_the_signature(
    noise: bytes, position: int
) -> None:
    key = generate_private_key()
    data = ManifestSigner(key, "AZ-0001", "0.1.0").sign(FACTS, GENESIS_SHA256, [])
    where = position % len(data)
    flipped = data[:where] + bytes([data[where] ^ (1 + (noise[0] if noise else 0) % 255)])
    flipped += data[where + 1 :]
    try:
        manifest = read_manifest(flipped)
    except ManifestError:
        return
    assert not manifest.signed_by(key.public_key())
