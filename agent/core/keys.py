"""Ed25519 keys and canonical JSON: what the station signs with and how others name its key.

A station's private key is kept in a secret file of one line: the base64 of its PKCS#8 DER
(self-describing, so a public key or another key type put there by mistake is refused; openssl
reads it: `base64 -d FILE | openssl pkey -inform DER -pubout`). A public key travels as the
base64 of its raw 32 bytes (PEM is accepted too). Its fingerprint is what a technician reads
aloud: the first 80 bits of the SHA-256 of the raw public key in base32, four groups of four,
e.g. `K3QF-7ZPA-MC2X-R4DL` (base32 has no 0, 1, 8 or 9: an O or an I is never a digit).

No file I/O here: callers read and write the files (provision, load_secrets, the verifier).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
FINGERPRINT_BITS = 80  # 2^40 work to find a key matching a given one by birthday: not the
# threat; a second key with the same fingerprint needs ~2^80, out of anyone's reach
MAX_KEY_TEXT_BYTES = 4096  # a PEM public key is ~113 bytes, a private key line 64


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, ASCII with \\u escapes, no NaN: the same bytes for the same
    value, so a signature over them can be checked after parsing."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_text(key: Ed25519PrivateKey) -> str:
    """The secret file's one line (no newline): base64 of the PKCS#8 DER."""
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return base64.b64encode(der).decode("ascii")


def parse_private_key(text: str) -> Ed25519PrivateKey:
    """The key from `private_key_text`'s line; ValueError saying what is wrong (never the
    key's bytes)."""
    try:
        der = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raise ValueError("not base64 (a station signing key is one line of base64)") from None
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not a private key in PKCS#8 form (is it the public key?)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"an Ed25519 key is needed, this is {type(key).__name__}")
    return key


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PublicKey) -> str:
    """What central staff keep: base64 of the 32 raw bytes (44 characters)."""
    return base64.b64encode(public_key_raw(key)).decode("ascii")


def parse_public_key(data: bytes | str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM ("BEGIN PUBLIC KEY") or the base64 of its raw 32 bytes;
    ValueError saying what is wrong."""
    raw_text = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw_text) > MAX_KEY_TEXT_BYTES:
        raise ValueError(f"over {MAX_KEY_TEXT_BYTES} bytes: not a public key")
    text = raw_text.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"an Ed25519 key is needed, this is {type(key).__name__}")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("neither PEM nor base64") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"base64 of {len(raw)} bytes; an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """e.g. 'K3QF-7ZPA-MC2X-R4DL': short enough to read aloud, long enough to be unique."""
    digest = hashlib.sha256(public_key_raw(key)).digest()[: FINGERPRINT_BITS // 8]
    text = base64.b32encode(digest).decode("ascii")  # 10 bytes -> 16 characters, no padding
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))
