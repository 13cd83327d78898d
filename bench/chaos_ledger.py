"""UploadLedger: an HTTP proxy in front of nginx that writes down every request it passes on.

    agent -> FaultProxy -> UploadLedger -> nginx (WebDAV)

Each PUT is recorded with its path, the SHA-256 of its body, nginx's answer and which box was
live, so the chaos bench can tell an overwrite (a second PUT of a name with other bytes) from a
retry (the same bytes again). A body that does not arrive whole (the agent was killed, the
fault proxy reset the link) is recorded as incomplete and never reaches nginx, as a server
would discard it. Requests are read with Content-Length framing (what httpx sends); answers
are passed back with their status, body and the headers that are not hop-by-hop.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

FORWARD_TIMEOUT_S = 10.0  # nginx on loopback answers in milliseconds
CLIENT_TIMEOUT_S = 30.0  # a body that stops arriving (a stalled link) ends the connection
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te",
              "trailer", "upgrade", "content-length"}  # fmt: skip
# bodies kept whole, to check what they list: the station index and the archive playlists
KEPT_BODIES = ("recordings.json", "archive.m3u8")


@dataclass(frozen=True)
class Put:
    """One PUT as it reached the ledger."""

    path: str  # the request path, e.g. /ingest/CHAOS-0001/<recording>/00000012.ts
    sha256: str | None  # None when the body did not arrive whole
    nbytes: int  # bytes that arrived
    status: int | None  # nginx's answer; None when it was not passed on
    box: str  # the box that was live
    at_s: float  # monotonic
    body: bytes | None = None  # kept for KEPT_BODIES only

    @property
    def stored(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class UploadLedger:
    """The proxy on a free 127.0.0.1 port; `puts()` is the record so far."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.box = ""  # set by the bench when it switches boxes
        self._puts: list[Put] = []
        self._in_flight: dict[int, str] = {}  # thread id -> path of a PUT being received
        self._changed = threading.Condition()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.ledger = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="upload-ledger", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def puts(self) -> list[Put]:
        with self._changed:
            return list(self._puts)

    def wait_for_put(self, suffix: str, timeout_s: float) -> bool:
        """Whether a PUT of a name ending in `suffix` is being received now, or starts within
        timeout_s (the chaos bench kills the agent mid-upload)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: any(p.endswith(suffix) for p in self._in_flight.values()), timeout_s
            )

    # -- the handler's side -----------------------------------------------------------------

    def receiving(self, path: str) -> None:
        with self._changed:
            self._in_flight[threading.get_ident()] = path
            self._changed.notify_all()

    def record(self, put: Put) -> None:
        with self._changed:
            self._in_flight.pop(threading.get_ident(), None)
            self._puts.append(put)
            self._changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ledger: UploadLedger


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the agent's client expects
    timeout = CLIENT_TIMEOUT_S
    server: _Server

    def do_PUT(self) -> None:
        self._forward()

    do_GET = do_HEAD = do_DELETE = do_MKCOL = do_PUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("ledger: " + format, *args)

    def _forward(self) -> None:
        ledger = self.server.ledger
        length = int(self.headers.get("Content-Length") or 0)
        is_put = self.command == "PUT"
        if is_put:
            ledger.receiving(self.path)
        try:
            body = self.rfile.read(length) if length else b""
        except OSError:
            body = b""
        if len(body) < length:  # the sender went away mid-body: nothing reaches the server
            if is_put:
                ledger.record(Put(self.path, None, len(body), None, ledger.box, time.monotonic()))
            self.close_connection = True
            return
        status, headers, answer = self._ask_nginx(body)
        if is_put:
            keep = body if self.path.endswith(KEPT_BODIES) else None
            digest = hashlib.sha256(body).hexdigest()
            ledger.record(
                Put(self.path, digest, len(body), status, ledger.box, time.monotonic(), keep)
            )
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    def _ask_nginx(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        forwarded = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.server.ledger.target_port, timeout=FORWARD_TIMEOUT_S
        )
        try:
            conn.request(self.command, self.path, body=body or None, headers=forwarded)
            response = conn.getresponse()
            answer = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            return response.status, headers, answer
        except OSError as exc:
            log.warning("ledger: nginx did not answer %s %s: %s", self.command, self.path, exc)
            return 502, [], b"nginx did not answer\n"
        finally:
            conn.close()
