"""The ground floor of configuration: the section base every stage's model derives from, byte
sizes, secrets and the one error type a person can act on.

Each stage owns its section model (capture/config.py, encode/config.py, ...);
service/config.py assembles them and is the only place that reads the config file.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr, ValidationError

from agent.core.redact import MASK, redact_text, redact_url, url_secrets

SERVICE_USER = "station-agent"  # the system user the unit runs the agent as (install.sh)
# A token, a password or a PEM key is a few KiB at most; anything bigger is the wrong file and
# is not read whole (a 50 MB file named as a token would otherwise be read into memory).
MAX_SECRET_BYTES = 64 * 1024
# systemd's LoadCredential= puts each credential in a private directory and names it in this
# variable (systemd.exec(5), "Credentials"); read_secret looks there first.
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
ECHO_MAX_CHARS = 120  # a config error quotes at most this much of the offending value
# Keys whose values are never echoed in a config error, whatever their shape.
_URL_KEYS = ("source", "url")

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


class ConfigError(Exception):
    """A configuration problem a person can fix; the message is one line (control characters
    from the file, e.g. a line break inside a path, are shown escaped)."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(one_line(message))
        self.fix = fix  # what to run or edit, when it is one command (`check` shows it)


def one_line(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def parse_size(value: object) -> int:
    """'20GB', '512 MiB', 1000000 -> bytes. Decimal units for KB/MB/GB, binary for KiB/MiB/GiB."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '20GB' or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size like '20GB' or a number of bytes")
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size; write e.g. '20GB', '500MB' or '2GiB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


ByteSize = Annotated[int, BeforeValidator(parse_size)]


class Section(BaseModel):
    """Base of every config section: frozen, and an unknown key is an error (a typo in the
    file must never be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Secrets(BaseModel):
    """Secrets read from the files the config names; never logged, never on a command line."""

    model_config = ConfigDict(frozen=True)
    http_token: SecretStr | None = None
    http_password: SecretStr | None = None
    mqtt_password: SecretStr | None = None
    signing_key: SecretStr | None = None  # the station key's line (agent/core/keys.py)
    rtmp_keys: dict[str, SecretStr] = {}  # stream key per RTMP output name ("rtmp-1")


def trusted_owners() -> set[int]:
    """Who may own a secret file: root, whoever runs this program and the service user (so
    `sudo station-agent check` judges a file as the service will)."""
    owners = {0, os.geteuid()}
    try:
        owners.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    except KeyError:
        pass  # not installed by install.sh (a laptop, a test machine)
    return owners


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _file_problem(
    path: Path, st: os.stat_result, what: str, private: bool = True, credential: bool = False
) -> ConfigError | None:
    """Why a secret file must not be used (with the command that fixes it), or None.
    A systemd `credential` (root's, mode 0400, read access for the service user granted by an
    ACL whose mask shows as the group's read bit) may have that bit: systemd made the file
    and its directory, which only the service's user can open."""
    if not stat.S_ISREG(st.st_mode):
        return ConfigError(f"{path}: the {what} file is not a regular file")
    if private and st.st_uid not in trusted_owners():
        owner = SERVICE_USER if os.geteuid() == 0 else _user_name(os.geteuid())
        fix = f"sudo chown {owner}: {path}"
        return ConfigError(
            f"{path}: the {what} file belongs to {_user_name(st.st_uid)}, who could change it; "
            f"it must belong to root or {owner}: run `{fix}`",
            fix=fix,
        )
    mode = stat.S_IMODE(st.st_mode)
    if private and mode & (0o037 if credential else 0o077):
        fix = f"chmod 600 {path}"
        return ConfigError(
            f"{path}: other users can read or change the {what} file (mode {mode:04o}): "
            f"run `{fix}`",
            fix=fix,
        )
    if st.st_size > MAX_SECRET_BYTES:
        return ConfigError(
            f"{path}: the {what} file is {st.st_size} bytes, more than a secret file holds "
            f"({MAX_SECRET_BYTES // 1024} KiB): is it the right file?"
        )
    return None


def check_secret_file(path: Path, what: str) -> None:
    """Raises ConfigError unless `path` is a regular file, owned by a trusted user, with no
    group/other permissions and at most MAX_SECRET_BYTES (for files others read, e.g. TLS
    keys)."""
    try:
        st = path.stat()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {_reason(exc)}") from None
    problem = _file_problem(path, st, what)
    if problem is not None:
        raise problem


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def credential_file(path: Path, credentials_dir: Path | None) -> Path | None:
    """The systemd credential standing in for the secret file `path`: the file named like
    `path`'s last component in `credentials_dir` ($CREDENTIALS_DIRECTORY), if there is one."""
    if credentials_dir is None:
        return None
    candidate = credentials_dir / path.name
    return candidate if os.path.lexists(candidate) else None


def read_secret(
    path: Path,
    what: str,
    header_safe: bool = False,
    private: bool = True,
    credentials_dir: Path | None = None,
) -> SecretStr:
    """Read a secret file (first line, stripped); errors name the file, never the content.
    `private` (the agent's own secrets): the file must pass `check_secret_file`'s rules,
    checked on the opened file; the technician's input files for `provision` are only
    size-capped. utf-8-sig: editors on technicians' laptops add a byte-order mark.
    `header_safe` secrets go into HTTP headers, so only visible ASCII is allowed there (a
    pasted non-breaking space would otherwise stop every upload).
    With `credentials_dir` (systemd's $CREDENTIALS_DIRECTORY), a credential named like the
    file (`credential_file`) is read instead of `path` (docs/operations.md, Secrets)."""
    credential = credential_file(path, credentials_dir)
    if credential is not None:
        path = credential
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not hang
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {_reason(exc)}") from None
    try:
        problem = _file_problem(path, os.fstat(fd), what, private, credential is not None)
        if problem is not None:
            raise problem
        raw = os.read(fd, MAX_SECRET_BYTES + 1)  # never more, even if it grew meanwhile
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {_reason(exc)}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SECRET_BYTES:
        raise ConfigError(f"{path}: the {what} file grew past {MAX_SECRET_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc}") from None
    if not text:
        raise ConfigError(f"{path}: the {what} file is empty")
    value = text.splitlines()[0].strip()
    if header_safe and not all(33 <= ord(c) <= 126 for c in value):
        raise ConfigError(
            f"{path}: the {what} may only hold visible ASCII characters (no spaces, accents "
            "or invisible characters; retype it in a plain text editor)"
        )
    return SecretStr(value)


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem as 'key 'a.b': what is wrong' (+ how many more). Credentials in the
    offending value (a URL's password or token, any value of a *password*/*token* key) are
    replaced by ***, in the echoed value and in the validator's own words alike."""
    errors = exc.errors()
    key, what = describe_validation_errors(exc)[0]
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"key '{key}': {what}{more}"


def describe_validation_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """Every problem as (key 'a.b', what is wrong), redacted as describe_validation_error."""
    described = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        kind = error["type"]
        value = error.get("input")
        if kind == "missing":
            what = "is required but missing"
        elif kind == "extra_forbidden":
            what = "is not a known setting (check the spelling)"
        else:
            what = error["msg"].removeprefix("Value error, ")
            if "input" in error and not isinstance(value, dict | list | tuple):
                what += f" (got {_echo(error['loc'], value)})"
        described.append((key, redact_text(what, _value_secrets(error["loc"], value))))
    return described


def _is_secret_key(loc: tuple[int | str, ...]) -> bool:
    name = str(loc[-1]) if loc else ""
    return any(word in name.lower() for word in ("password", "token", "secret"))


def _value_secrets(loc: tuple[int | str, ...], value: object) -> list[str]:
    if not isinstance(value, str):
        return []
    if _is_secret_key(loc):
        return [value]
    return url_secrets(value)


def _echo(loc: tuple[int | str, ...], value: object) -> str:
    if _is_secret_key(loc):
        return MASK
    if isinstance(value, str) and (str(loc[-1]) in _URL_KEYS or "://" in value):
        value = redact_url(value)
    text = repr(value)
    if len(text) > ECHO_MAX_CHARS:
        text = text[: ECHO_MAX_CHARS - 3] + "..."
    return text
