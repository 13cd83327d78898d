"""The station key on the box: `provision` makes it (or keeps the one there), `check` checks it.

Files next to the config (docs/verification.md tells observers how the keys reach them):
- `signing-key`: the private key, one line (agent/core/keys.py), 0600, the service user's;
  named by `[spool] signing_key_file`. Re-provisioning keeps it: a station's key stays the
  same for its whole life, so central staff's keys file never goes stale. To replace a key
  (a box stolen, a key leaked), delete the file and provision again; give central staff the
  new public key.
- `signing-key.pub`: the public key, base64 of its 32 bytes (0600 like every file provision
  writes there; it is not secret, central staff get it from provision's output or keys.csv).
- `keys.csv` (roster staging only, in the staging folder): one line per station,
  `station_id,public_key,fingerprint`, the keys file the verifier reads.
"""

from __future__ import annotations

import pwd
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.core.config import SERVICE_USER, ConfigError, Secrets
from agent.core.durable import write_atomic
from agent.core.keys import (
    fingerprint,
    generate_private_key,
    parse_private_key,
    parse_public_key,
    private_key_text,
    public_key_text,
)
from agent.service.config import AgentConfig, read_signing_key
from agent.tools.check import CheckResult
from agent.tools.verify_files import KEYS_HEADER, keys_file_line

KEY_NAME = "signing-key"
PUBLIC_NAME = "signing-key.pub"
KEYS_FILE_NAME = "keys.csv"
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
SIGNING_LIMIT_S = 10.0  # `check`'s time limit: reading two small files


class StationKeyError(Exception):
    """The key file there cannot be used (and is not replaced silently); one line."""


def load_or_make_key(folder: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The station key already in `folder` (re-provisioning keeps it), or a new one; and
    whether it is new."""
    path = folder / KEY_NAME
    if not path.exists():
        return generate_private_key(), True
    try:
        return parse_private_key(read_signing_key(path).get_secret_value()), False
    except ConfigError as exc:
        raise StationKeyError(
            f"{exc}. Delete {path} to make a new station key (central staff then need the new "
            "public key)"
        ) from None


def write_key_files(
    folder: Path, key: Ed25519PrivateKey, new: bool, owner: tuple[int, int] | None
) -> list[Path]:
    """The private key (when new) and the public key beside it; the paths written."""
    written = []
    if new:
        private = folder / KEY_NAME
        write_atomic(
            private, (private_key_text(key) + "\n").encode(), mode=PRIVATE_MODE, owner=owner
        )
        written.append(private)
    public = folder / PUBLIC_NAME
    line = (public_key_text(key.public_key()) + "\n").encode()
    write_atomic(public, line, mode=PRIVATE_MODE, owner=owner)
    return [*written, public]


def public_key_in(folder: Path) -> Ed25519PublicKey:
    """The public key `write_key_files` left in `folder`."""
    return parse_public_key((folder / PUBLIC_NAME).read_bytes())


def write_keys_file(folder: Path, stations: dict[str, Ed25519PublicKey]) -> Path:
    """keys.csv for central staff: every station staged in `folder`."""
    lines = [",".join(KEYS_HEADER)] + [keys_file_line(s, k) for s, k in sorted(stations.items())]
    path = folder / KEYS_FILE_NAME
    write_atomic(path, ("\n".join(lines) + "\n").encode(), mode=PUBLIC_MODE)
    return path


# --- check -------------------------------------------------------------------------------------


def check_signing(cfg: AgentConfig, secrets: Secrets, expected: str | None) -> CheckResult:
    """The station key: configured, the service's alone, matching its .pub file and the public
    key central staff hold (`expected`: base64, PEM, or a file holding one)."""
    path = cfg.spool.signing_key_file
    if path is None or secrets.signing_key is None:
        return CheckResult(
            "signing", "WARN",
            "no station key: segments are not signed, observers cannot verify the recording",
            "Run `sudo station-agent provision --force` (it makes the key and keeps the rest), "
            "then give central staff the public key it prints.",
        )  # fmt: skip
    key = parse_private_key(secrets.signing_key.get_secret_value()).public_key()
    mine = fingerprint(key)
    data = {"fingerprint": mine, "public_key": public_key_text(key)}
    problem = _service_cannot_read(path)
    if problem is not None:
        return CheckResult("signing", "FAIL", problem[0], problem[1], data)
    compared = []
    public = path.with_name(path.name + ".pub")
    if public.exists():
        try:
            theirs = fingerprint(parse_public_key(public.read_bytes()))
        except (OSError, ValueError) as exc:
            theirs = f"unreadable ({exc})"
        if theirs != mine:
            return CheckResult(
                "signing", "FAIL", f"{public} ({theirs}) is not the public key of {path} ({mine})",
                f"Write it again: `sudo station-agent provision --force`, then give central "
                f"staff the new {public.name}.", data,
            )  # fmt: skip
        compared.append(public.name)
    if expected is not None:
        try:
            theirs = fingerprint(_read_expected(expected))
        except ValueError as exc:
            return CheckResult("signing", "FAIL", f"--public-key: {exc}", None, data)
        if theirs != mine:
            return CheckResult(
                "signing", "FAIL",
                f"this box's key is {mine}, central staff expect {theirs}",
                "Is this the right box for the station? If it is, give central staff this "
                f"box's public key ({public_key_text(key)}).", data,
            )  # fmt: skip
        compared.append("the expected public key")
    matches = f" (matches {' and '.join(compared)})" if compared else ""
    return CheckResult("signing", "PASS", f"station key {mine}{matches}", data=data)


def _service_cannot_read(path: Path) -> tuple[str, str] | None:
    """When the service user exists and is not the file's owner, it cannot read a 0600 file."""
    try:
        service_uid = pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None  # not a box prepared by install.sh
    if path.stat().st_uid == service_uid:
        return None
    fix = f"sudo chown {SERVICE_USER}: {path}"
    return f"{path}: the service user {SERVICE_USER} cannot read it", f"Run `{fix}`."


def _read_expected(value: str) -> Ed25519PublicKey:
    path = Path(value)
    data = path.read_bytes() if len(value) < 4096 and path.is_file() else value.encode()
    return parse_public_key(data)
