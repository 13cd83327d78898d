"""HTTP/1.x framing as the fault proxy needs it: request heads in, injected responses out."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

# A longer head is not framed: the rest of its connection is forwarded as plain bytes.
MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class RequestHead:
    method: str
    path: str  # the request target, e.g. /ingest/AZ-0001/live.m3u8
    content_length: int
    close: bool
    expect_continue: bool


def parse_request_head(head: bytes) -> RequestHead | None:
    """The framing facts of an HTTP/1.x request head; None when it is not one we can frame."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        return None
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        return None
    conn = headers.get("connection", "").lower()
    close = "close" in conn or (parts[2] == "HTTP/1.0" and "keep-alive" not in conn)
    expect = headers.get("expect", "").lower() == "100-continue"
    return RequestHead(parts[0], parts[1], length, close, expect)


def render_response(code: int, headers: dict[str, str], close: bool) -> bytes:
    """A whole HTTP/1.1 response with status `code` and a short text body."""
    try:
        reason = HTTPStatus(code).phrase
    except ValueError:
        reason = "Injected"
    body = f"{code} {reason} (injected by FaultProxy)\n".encode()
    all_headers = {"Content-Type": "text/plain", "Content-Length": str(len(body))}
    all_headers.update(headers)
    if close:
        all_headers["Connection"] = "close"
    lines = [f"HTTP/1.1 {code} {reason}"] + [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
