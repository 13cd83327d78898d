"""Credentials out of everything the agent shows: URLs and free text such as exception messages.

    redact_url("rtsp://admin:pa/ss@w0rd@cam:554/live?token=abc")
        -> "rtsp://***@cam:554/live?token=***"

The whole userinfo is replaced, not only the password: a user name can itself be the secret
(`https://TOKEN@host/`), and the config file says which user is meant. Parameters whose name
looks like a credential (token, key, password, secret, sig, auth, ...) in the query, the path or
the fragment keep their name and lose their value.

IP camera URLs are typed by hand, so passwords arrive unescaped: `/`, `@`, `:` and `#` in
them are common, and the RFC parser (`urlsplit`) would cut such a URL at the wrong place and
show the rest of the password as path or fragment. So the userinfo ends at the LAST `@` that is
followed by something shaped like a host (`name[:port]` then `/ ? #` or the end); only then is
the remainder handed to `urlsplit`. When in doubt more is hidden, never less: a path holding an
`@` after a port (`rtsp://cam:554/a@b`) is shown as `rtsp://***@b`.

`redact_text(text, secrets)` is for text that may quote a URL or a secret anywhere (exception
messages, log lines, check output): every URL in it is redacted and every known secret value
replaced.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# Parameter names holding a credential contain one of these (case-insensitive). Broad on
# purpose: hiding a harmless value ("keyframe=1") costs nothing, showing a token costs a lot.
CREDENTIAL_WORDS = (
    "token", "key", "pass", "pwd", "secret", "sig", "auth", "cred", "session", "jwt", "code",
)  # fmt: skip
# Shorter secret values are not searched for in free text: such strings occur by chance in any
# message (hiding every "ab" would garble the text), and a 1-3 character password protects
# nothing anyway. URLs are still redacted by their structure whatever the password's length.
MIN_SECRET_CHARS = 4

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.S)
# After the userinfo's `@`: a host (reg-name, IPv4 or [IPv6]), an optional port, then the end
# of the authority.
_HOST_THEN_END = re.compile(r"^(\[[^\]/?#@]+\]|[^/?#@:\[\]\s]+)(:[0-9]*)?([/?#]|$)")
# name=value pairs: in the path between / ; & (Dahua-style "/user=admin&password=x"), in the
# query and the fragment between &s (a value may hold "/", ";" or "=" there).
_PATH_PARAM = re.compile(r"([/;&])([^=/;&]*)=([^/;&]*)")
_QUERY_PARAM = re.compile(r"(^|&)([^=&]*)=([^&]*)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def is_credential_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in CREDENTIAL_WORDS)


def _split_userinfo(url: str) -> tuple[str, str | None, str] | None:
    """(scheme://, userinfo or None, the rest) or None when `url` has no `scheme://`."""
    match = _SCHEME.match(url)
    if match is None:
        return None
    prefix, rest = match.group(1), match.group(2)
    if rest.startswith("/"):
        return prefix, None, rest  # file:///path: no authority at all
    for at in reversed([i for i, c in enumerate(rest) if c == "@"]):
        userinfo, after = rest[:at], rest[at + 1 :]
        user = userinfo.split(":", 1)[0]
        if _HOST_THEN_END.match(after) and not any(c in user for c in "/?#"):
            return prefix, userinfo, after
    return prefix, None, rest


def _hide_value(match: re.Match[str]) -> str:
    sep, name, value = match.groups()
    if value and is_credential_name(unquote(name)):
        return f"{sep}{name}={MASK}"
    return match.group(0)


def _credential_values(path: str, query: str, fragment: str) -> list[str]:
    pairs = _PATH_PARAM.findall(path) + _QUERY_PARAM.findall(query)
    pairs += _QUERY_PARAM.findall(fragment)
    return [value for _sep, name, value in pairs if value and is_credential_name(unquote(name))]


def redact_url(url: str) -> str:
    """The URL with its userinfo and credential parameters replaced by ***; anything that is
    not a `scheme://` URL (v4l2:/dev/video0, test:, file:/path) is returned as it is."""
    parts = _split_userinfo(url)
    if parts is None:
        return url
    prefix, userinfo, rest = parts
    try:
        split = urlsplit(prefix + rest)
    except ValueError:  # e.g. an unclosed IPv6 bracket: show the scheme only
        return prefix + MASK
    netloc = split.netloc
    if userinfo is not None or "@" in netloc:  # the second: a host the shape test refused
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    path = _PATH_PARAM.sub(_hide_value, split.path)
    query = _QUERY_PARAM.sub(_hide_value, split.query)
    fragment = _QUERY_PARAM.sub(_hide_value, split.fragment)
    return urlunsplit((split.scheme, netloc, path, query, fragment))


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL as they may appear elsewhere (raw and percent-decoded): the
    userinfo, its password, and the values of credential parameters."""
    parts = _split_userinfo(url)
    if parts is None:
        return []
    prefix, userinfo, rest = parts
    found: list[str] = []
    try:
        split = urlsplit(prefix + rest)
        if userinfo is None and "@" in split.netloc:  # a host the shape test refused
            userinfo = split.netloc.rpartition("@")[0]
        found += _credential_values(split.path, split.query, split.fragment)
    except ValueError:
        found.append(rest)  # not parseable: all of it may be secret
    if userinfo:
        found += [userinfo, userinfo.partition(":")[2]]
    return list(dict.fromkeys(s for raw in found for s in (raw, unquote(raw)) if s))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every URL in it redacted and every known secret value replaced by ***."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True):
        text = text.replace(secret, MASK)
        escaped = repr(secret)[1:-1]  # as it appears inside a repr() of a string
        if escaped != secret:
            text = text.replace(escaped, MASK)
    return text


def redact_data(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A JSON-like value (dicts, lists, strings) with `redact_text` applied to every string."""
    known = list(secrets)
    if isinstance(value, str):
        return redact_text(value, known)
    if isinstance(value, dict):
        return {key: redact_data(item, known) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item, known) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """On a handler: every record it writes goes through `redact_text` (message, arguments and
    traceback), so no library's log line can carry a credential into the journal."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message, self.secrets)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.secrets)
        return True


def redact_logging(secrets: Iterable[str] = ()) -> None:
    """Puts one RedactingFilter, knowing `secrets`, on every handler of the root logger."""
    known = list(secrets)
    for handler in logging.getLogger().handlers:
        for existing in handler.filters:
            if isinstance(existing, RedactingFilter):
                existing.secrets = known
                break
        else:
            handler.addFilter(RedactingFilter(known))
