"""The ground floor of configuration: the section base every stage's model derives from, byte
sizes, secrets and the one error type a person can act on.

Each stage owns its section model (capture/config.py, encode/config.py, ...);
service/config.py assembles them and is the only place that reads the config file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr, ValidationError

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
    """A configuration problem a person can fix; the message is one line."""


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


def read_secret(path: Path, what: str, header_safe: bool = False) -> SecretStr:
    """Read a secret file (first line, stripped); errors name the file, never the content.
    utf-8-sig: editors on technicians' laptops add a byte-order mark. `header_safe` secrets go
    into HTTP headers, so only visible ASCII is allowed there (a pasted non-breaking space
    would otherwise stop every upload)."""
    try:
        text = path.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read the {what}: {detail}") from None
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
    """The first problem as 'key 'a.b': what is wrong' (+ how many more)."""
    errors = exc.errors()
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "missing":
        what = "is required but missing"
    elif kind == "extra_forbidden":
        what = "is not a known setting (check the spelling)"
    else:
        what = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], dict | list | tuple):
            what += f" (got {first['input']!r})"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"key '{key}': {what}{more}"
