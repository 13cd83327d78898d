"""Staff log-in: a users file with scrypt-hashed passwords, two roles, signed session cookies.

The users file has one line per user, `name:role:scrypt$N$r$p$salt$hash` (base64), written by
`station-control user add NAME --role operator`; roles are `read-only` (look) and `operator`
(also acknowledge alarms and send commands). The file is re-read when it changes, so adding
or removing a user needs no restart, and a removed user's session ends at their next click.

A session is a cookie `name|expiry` signed with HMAC-SHA256 under a key kept beside the
database (created 0600 at first start): it survives a restart of the control centre. Forms
and API writes carry a CSRF token derived from the session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agent.core.config import ConfigError

ROLES = ("read-only", "operator")
# scrypt cost: N=2^14, r=8, p=1 (RFC 7914's interactive-login example; ~50 ms and 16 MiB here).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
MIN_PASSWORD_CHARS = 10
NO_PASSWORD = "-"  # noqa: S105 - the marker of a proxy-only user, not a password
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password_hash: str  # "-": no password (log-in only through the reverse proxy header)

    @property
    def operator(self) -> bool:
        return self.role == "operator"


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=HASH_BYTES)  # fmt: skip
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                                r=int(r), p=int(p), dklen=len(expected))  # fmt: skip
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


def parse_users(text: str, where: str) -> dict[str, User]:
    users: dict[str, User] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[1] not in ROLES or not valid_name(parts[0]):
            raise ConfigError(f"{where} line {n}: expected name:role:hash (roles: read-only, "
                              "operator)")  # fmt: skip
        users[parts[0]] = User(*parts)
    return users


def valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and set(name) <= NAME_CHARS


def add_user(path: Path, name: str, role: str, password: str) -> None:
    """Adds or replaces a user (the file is rewritten 0600, atomically)."""
    if not valid_name(name):
        raise ConfigError(f"user name {name!r}: letters, digits and . _ - @ only (at most 64)")
    if role not in ROLES:
        raise ConfigError(f"role {role!r}: one of {', '.join(ROLES)}")
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    users = parse_users(text, str(path))
    users[name] = User(name, role, hash_password(password))
    body = "# station-control users: name:role:password hash (station-control user add)\n"
    body += "".join(f"{u.name}:{u.role}:{u.password_hash}\n" for u in users.values())
    write_private(path, body.encode())


def write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_new_password(stream: TextIO) -> str:
    """The new password: typed twice on a terminal, or the first line of a pipe."""
    if stream.isatty():
        import getpass

        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise ConfigError("the two passwords differ")
        password = first
    else:
        password = stream.readline().rstrip("\n")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ConfigError(f"the password needs at least {MIN_PASSWORD_CHARS} characters")
    return password


class Users:
    """The users file, re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> User | None:
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._users, self._stamp = {}, None
                return None
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                text = self.path.read_text(encoding="utf-8")
                self._users = parse_users(text, str(self.path))
                self._stamp = stamp
            return self._users.get(name)

    def login(self, name: str, password: str) -> User | None:
        user = self.get(name)
        if user is None or user.password_hash == NO_PASSWORD:
            check_password(password, hash_password("x"))  # same time as a wrong password
            return None
        return user if check_password(password, user.password_hash) else None


def session_key(folder: Path) -> bytes:
    """The cookie-signing key beside the database, created at first start (0600)."""
    path = folder / "session.key"
    if not path.exists():
        write_private(path, secrets.token_hex(32).encode())
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path}: readable by others", fix=f"chmod 600 {path}")
    return path.read_bytes().strip()


class Sessions:
    def __init__(self, key: bytes, hours: float) -> None:
        self._key = key
        self.max_age_s = int(hours * 3600)

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def cookie(self, name: str, now_s: float) -> str:
        body = f"{name}|{int(now_s) + self.max_age_s}"
        return f"{body}|{self._sign(body)}"

    def user_of(self, cookie: str, now_s: float) -> str | None:
        body, _, sig = cookie.rpartition("|")
        name, _, expires = body.partition("|")
        if not hmac.compare_digest(sig, self._sign(body)):
            return None
        if not expires.isdigit() or int(expires) < now_s:
            return None
        return name

    def csrf(self, session: str) -> str:
        return self._sign(f"csrf|{session}")

    def csrf_ok(self, session: str, token: str) -> bool:
        return bool(token) and hmac.compare_digest(token, self.csrf(session))
