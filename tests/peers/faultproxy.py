"""A threaded TCP proxy on 127.0.0.1 that injects network faults on purpose, for tests.

    proxy = FaultProxy("127.0.0.1", nginx.http_port); proxy.start()
    client -> proxy.url_for("/ingest/x.ts") -> nginx

Faults (all settable at run time from the test thread):
- `set_rate(bps)` (or `rate_bps = bps`) / `set_down_rate(bps)`: token-bucket throttle in
  bits per second of client->server (and server->client), shared by all connections like one
  access link; None = unthrottled. A change reaches open connections within RATE_POLL_S.
- `reset_after_bytes(n, times)`: the next `times` units get a TCP RST (SO_LINGER 0) towards
  the client after n more bytes of client data were forwarded (n=0: before any byte).
- `stall(seconds, times)`: the next `times` units forward nothing for `seconds`, then resume.
- `inject_status(code, times, headers)`: the next `times` HTTP requests are read whole by the
  proxy and answered with `code` (keep-alive kept), never reaching the server.
- `refuse(True)`: stop listening (connects get ECONNREFUSED) and cut open connections with
  RST; `refuse(False)`: listen again on the same port.

A "unit" is an HTTP request when the stream is HTTP/1.x (so a keep-alive connection opened
before the fault was armed is hit as well), otherwise the whole connection. HTTP mode parses
request framing from the client only: Content-Length bodies (httpx's uploads). Limits: a
chunked request, a head over MAX_HEAD_BYTES or a stream whose first byte is not a method
letter (TLS, RTMP) turns the rest of that connection into plain byte forwarding (no injection,
faults claimed once per connection); pipelined requests are not supported (httpx does not
pipeline); an injected answer to `Expect: 100-continue` closes the connection. A claimed
reset keeps counting across the following requests of its connection.

`counters()` is a snapshot (connections, bytes each way, requests, faults); bytes are counted
just before they are written, so whatever a peer has seen is already counted. `wait_until(
predicate, timeout_s)` waits for a counter condition. `SubprocessFaultProxy` is the same API
run in a child process, for clients that hold the GIL on the network (PyAV RTMP).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from multiprocessing.managers import BaseManager
from typing import Any

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
# Small kernel buffers so a throttle is felt by the sender instead of hiding megabytes in
# loopback socket buffers; still far above what the proxy itself can move per poll.
SOCKET_BUFFER_BYTES = 64 * 1024
# Every blocking socket call wakes this often to notice stop/abort/refuse.
SOCK_POLL_S = 0.1
# Token bucket: a rate change is picked up within this; the burst is this many seconds' worth.
RATE_POLL_S = 0.05
BURST_S = 0.05
MIN_QUANTUM_BYTES = 512
MAX_HEAD_BYTES = 64 * 1024
# Two threads per connection; tests never need more than a handful of connections.
MAX_CONNECTIONS = 32
CONNECT_TIMEOUT_S = 5.0
JOIN_TIMEOUT_S = 2.0
# SubprocessFaultProxy.wait_until polls the child this often (a round trip is ~0.1 ms).
SUBPROCESS_POLL_S = 0.02
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class ProxyCounters:
    connections: int = 0  # accepted and connected to the target
    open_connections: int = 0
    rejected: int = 0  # over MAX_CONNECTIONS or target unreachable: RST at once
    requests: int = 0  # HTTP request heads seen (forwarded or answered)
    bytes_up: int = 0  # client -> server, forwarded
    bytes_down: int = 0  # server -> client, forwarded
    resets: int = 0
    stalls: int = 0
    injected: int = 0


@dataclass
class _Claim:
    stall_s: float | None = None
    reset_after_bytes: int | None = None
    inject: tuple[int, dict[str, str]] | None = None


@dataclass(frozen=True)
class RequestHead:
    method: str
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
    return RequestHead(parts[0], length, close, expect)


def render_response(code: int, headers: dict[str, str], close: bool) -> bytes:
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


class _TokenBucket:
    """Shared byte budget for one direction; rate None means no limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rate_bytes_s: float | None = None
        self._tokens = 0.0
        self._last_s = time.monotonic()

    @property
    def rate_bps(self) -> float | None:
        rate = self._rate_bytes_s
        return None if rate is None else rate * 8

    def set_rate(self, rate_bps: float | None) -> None:
        if rate_bps is not None and rate_bps <= 0:
            raise ValueError("rate_bps must be positive or None")
        with self._lock:
            self._refill(time.monotonic())
            self._rate_bytes_s = None if rate_bps is None else rate_bps / 8
            self._tokens = min(self._tokens, self._cap())

    def take(self, want: int, cancelled: Callable[[], bool]) -> int:
        """Block until some bytes (1..want) may pass; 0 when cancelled meanwhile."""
        while True:
            with self._lock:
                if self._rate_bytes_s is None:
                    return want
                self._refill(time.monotonic())
                quantum = min(want, int(self._cap()))
                if self._tokens >= quantum:
                    self._tokens -= quantum
                    return quantum
                wait_s = (quantum - self._tokens) / self._rate_bytes_s
            if cancelled():
                return 0
            time.sleep(min(wait_s, RATE_POLL_S))

    def _cap(self) -> float:
        rate = self._rate_bytes_s or 0.0
        return max(rate * BURST_S, MIN_QUANTUM_BYTES)

    def _refill(self, now_s: float) -> None:
        if self._rate_bytes_s is not None:
            self._tokens = min(
                self._cap(), self._tokens + (now_s - self._last_s) * self._rate_bytes_s
            )
        self._last_s = now_s


@dataclass
class _Pending:
    resets: deque[int] = field(default_factory=deque)
    stalls: deque[float] = field(default_factory=deque)
    injects: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)


class FaultProxy:
    """TCP proxy from a free 127.0.0.1 port to (target_host, target_port); see module doc."""

    def __init__(self, target_host: str, target_port: int, *, http: bool = True) -> None:
        self.target = (target_host, target_port)
        self.http = http
        self.up = _TokenBucket()
        self.down = _TokenBucket()
        self._cond = threading.Condition()
        self._counters = ProxyCounters()
        self._pending = _Pending()
        self._links: set[_Link] = set()
        self._want_listening = True
        self._listening = False
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None
        self._listener: socket.socket | None = self._listen(0)
        self.port: int = self._listener.getsockname()[1]

    # -- control -------------------------------------------------------------------------
    def start(self) -> None:
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy-accept")
        self._acceptor.start()
        self._await(lambda: self._listening, "listening")

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(JOIN_TIMEOUT_S)
        with self._cond:
            links = list(self._links)
        for link in links:
            link.abort(rst=True)
        for link in links:
            link.join(JOIN_TIMEOUT_S)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def get_port(self) -> int:
        return self.port

    def url_for(self, path: str = "", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    @property
    def rate_bps(self) -> float | None:
        return self.up.rate_bps

    @rate_bps.setter
    def rate_bps(self, rate_bps: float | None) -> None:
        self.up.set_rate(rate_bps)

    def set_rate(self, rate_bps: float | None) -> None:
        self.up.set_rate(rate_bps)

    def set_down_rate(self, rate_bps: float | None) -> None:
        self.down.set_rate(rate_bps)

    def reset_after_bytes(self, n: int, times: int = 1) -> None:
        with self._cond:
            self._pending.resets.extend([n] * times)

    def stall(self, seconds: float, times: int = 1) -> None:
        with self._cond:
            self._pending.stalls.extend([seconds] * times)

    def inject_status(
        self, code: int, times: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        with self._cond:
            self._pending.injects.extend([(code, dict(headers or {}))] * times)

    def clear_faults(self) -> None:
        with self._cond:
            self._pending = _Pending()

    def refuse(self, on: bool) -> None:
        """Link down (stop listening, RST open connections) or back up on the same port."""
        with self._cond:
            self._want_listening = not on
            links = list(self._links) if on else []
        for link in links:
            link.abort(rst=True)
        self._await(lambda: self._listening == (not on), "refuse" if on else "listening")

    def counters(self) -> ProxyCounters:
        with self._cond:
            return self._counters

    def wait_until(self, predicate: Callable[[ProxyCounters], bool], timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._counters), timeout_s)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals used by links ------------------------------------------------------------
    def _count(self, **deltas: int) -> None:
        with self._cond:
            c = self._counters
            self._counters = replace(c, **{k: getattr(c, k) + v for k, v in deltas.items()})
            self._cond.notify_all()

    def _claim(self, is_request: bool, want_reset: bool) -> _Claim:
        claim = _Claim()
        with self._cond:
            p = self._pending
            if p.stalls:
                claim.stall_s = p.stalls.popleft()
            if is_request and p.injects:
                claim.inject = p.injects.popleft()
            elif want_reset and p.resets:
                claim.reset_after_bytes = p.resets.popleft()
        return claim

    def _link_done(self, link: _Link) -> None:
        with self._cond:
            self._links.discard(link)
        self._count(open_connections=-1)

    # -- accepting ------------------------------------------------------------------------
    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        sock.bind(("127.0.0.1", port))
        sock.listen(MAX_CONNECTIONS)
        sock.settimeout(SOCK_POLL_S)
        return sock

    def _await(self, ready: Callable[[], bool], what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, JOIN_TIMEOUT_S):
                raise RuntimeError(f"fault proxy on port {self.port}: timed out waiting for {what}")

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                want = self._want_listening
            if want and self._listener is None:
                self._listener = self._listen(self.port)
            elif not want and self._listener is not None:
                self._listener.close()
                self._listener = None
            with self._cond:
                self._listening = self._listener is not None
                self._cond.notify_all()
            if self._listener is None:
                self._stopping.wait(SOCK_POLL_S)
                continue
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:  # e.g. out of file descriptors: keep serving
                log.warning("fault proxy: accept failed: %r", exc)
                self._stopping.wait(SOCK_POLL_S)
                continue
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        with self._cond:
            full = len(self._links) >= MAX_CONNECTIONS
            if not full:
                link = _Link(self, client)
                self._links.add(link)
        if full:
            log.warning("fault proxy: over %d connections, resetting one", MAX_CONNECTIONS)
            _close_rst(client)
            self._count(rejected=1)
            return
        self._count(open_connections=1)
        link.start()


class _LinkClosed(Exception):
    """The link was aborted or the proxy stops: unwind the pump thread."""


class _Link:
    """One proxied connection: an upstream pump thread (which also dials the target)
    and a downstream pump thread."""

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server: socket.socket | None = None
        self._abort = threading.Event()
        self._rst = False
        self._lock = threading.Lock()
        self._alive = 0
        self._reset_left: int | None = None
        self._threads: list[threading.Thread] = []
        client.settimeout(SOCK_POLL_S)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self) -> None:
        self._spawn(self._run_up, "up")

    def join(self, timeout_s: float) -> None:
        for t in list(self._threads):
            t.join(timeout_s)
            if t.is_alive():
                log.warning("fault proxy thread %s did not stop", t.name)

    def abort(self, rst: bool) -> None:
        with self._lock:
            self._rst = self._rst or rst
        self._abort.set()
        if self.server is not None:
            with contextlib.suppress(OSError):  # already disconnected: nothing left to wake
                self.server.shutdown(socket.SHUT_RDWR)

    def _cancelled(self) -> bool:
        return self._abort.is_set() or self.proxy._stopping.is_set()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        with self._lock:
            self._alive += 1
        t = threading.Thread(target=self._guard, args=(target,), name=f"faultproxy-{name}")
        self._threads.append(t)
        t.start()

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except _LinkClosed:
            pass  # aborted on purpose; the last thread out closes the sockets
        except OSError as exc:
            log.info("fault proxy link ends: %r", exc)
            self.abort(rst=True)
        finally:
            with self._lock:
                self._alive -= 1
                last = self._alive == 0
            if last:
                self._close()

    def _close(self) -> None:
        if self._rst:
            _close_rst(self.client)
        else:
            self.client.close()
        if self.server is not None:
            self.server.close()
        self.proxy._link_done(self)

    # -- pumps ------------------------------------------------------------------------------
    def _run_up(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        server.settimeout(CONNECT_TIMEOUT_S)
        try:
            server.connect(self.proxy.target)
        except OSError as exc:
            log.info("fault proxy: target %s unreachable: %r", self.proxy.target, exc)
            server.close()
            self.proxy._count(rejected=1)
            self.abort(rst=True)
            return
        server.settimeout(SOCK_POLL_S)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server = server
        self.proxy._count(connections=1)
        self._spawn(self._run_down, "down")
        self._pump_up()
        self._check()
        with contextlib.suppress(OSError):  # the server may have gone already
            server.shutdown(socket.SHUT_WR)  # client finished sending: pass its FIN on

    def _run_down(self) -> None:
        assert self.server is not None
        while data := self._recv(self.server):
            self._send(self.client, data, up=False)
        self._check()
        with contextlib.suppress(OSError):  # the client may have gone already
            self.client.shutdown(socket.SHUT_WR)  # server finished: pass its FIN on

    def _pump_up(self) -> None:
        buf = bytearray()
        raw = not self.proxy.http
        claimed = False
        while True:
            if not buf:
                if not (data := self._recv(self.client)):
                    return
                buf += data
            if not raw and buf[:1].isupper():
                end = self._read_head(buf)
                head = parse_request_head(bytes(buf[:end])) if end else None
                if head is not None:
                    claimed = True
                    if not self._request(buf, end, head):
                        return
                    continue
                log.info("fault proxy: not framable HTTP, forwarding raw from here")
            raw = True
            if not claimed:
                claimed = True
                self._apply(self.proxy._claim(is_request=False, want_reset=True))
            self._send(self.server_sock, bytes(buf), up=True)
            buf.clear()

    def _read_head(self, buf: bytearray) -> int:
        """Read until the end of a request head; its length, or 0 if there is none."""
        while (pos := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > MAX_HEAD_BYTES or not (data := self._recv(self.client)):
                return 0
            buf += data
        return pos + 4

    def _request(self, buf: bytearray, head_end: int, head: RequestHead) -> bool:
        """Forward or answer one request at the start of buf; False when the link is done."""
        self.proxy._count(requests=1)
        claim = self.proxy._claim(is_request=True, want_reset=self._reset_left is None)
        self._apply(claim)
        if claim.inject is not None:
            code, headers = claim.inject
            del buf[:head_end]
            close = head.close or head.expect_continue
            if not head.expect_continue:
                self._swallow(buf, head.content_length)
            self.proxy._count(injected=1)
            self._write(self.client, render_response(code, headers, close))
            log.info("fault proxy: answered %s with %d", head.method, code)
            return not close
        remaining = head_end + head.content_length
        while remaining:
            if not buf:
                if not (data := self._recv(self.client)):
                    return False
                buf += data
            n = min(remaining, len(buf))
            self._send(self.server_sock, bytes(buf[:n]), up=True)
            del buf[:n]
            remaining -= n
        return True

    def _swallow(self, buf: bytearray, length: int) -> None:
        while len(buf) < length:
            if not (data := self._recv(self.client)):
                return
            buf += data
        del buf[:length]

    def _apply(self, claim: _Claim) -> None:
        if claim.stall_s is not None:
            self.proxy._count(stalls=1)
            log.info("fault proxy: stalling for %.1f s", claim.stall_s)
            self._abort.wait(claim.stall_s)
            self._check()
        if claim.reset_after_bytes is not None:
            self._reset_left = claim.reset_after_bytes
            self._maybe_reset()

    def _maybe_reset(self) -> None:
        if self._reset_left == 0:
            self.proxy._count(resets=1)
            log.info("fault proxy: resetting connection")
            self.abort(rst=True)
            raise _LinkClosed

    @property
    def server_sock(self) -> socket.socket:
        assert self.server is not None
        return self.server

    # -- socket calls that notice aborts ------------------------------------------------------
    def _check(self) -> None:
        if self._cancelled():
            raise _LinkClosed

    def _recv(self, sock: socket.socket) -> bytes:
        while True:
            self._check()
            try:
                data = sock.recv(CHUNK_BYTES)
            except TimeoutError:
                continue
            self._check()  # a shutdown() from abort() also ends a recv with b""
            return data

    def _write(self, sock: socket.socket, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            self._check()
            try:
                view = view[sock.send(view) :]
            except TimeoutError:
                continue

    def _send(self, sock: socket.socket, data: bytes, up: bool) -> None:
        bucket = self.proxy.up if up else self.proxy.down
        view = memoryview(data)
        while view:
            want = len(view)
            if up and self._reset_left is not None:
                want = min(want, self._reset_left)
            n = bucket.take(want, self._cancelled)
            self._check()  # take() gives 0 only when cancelled
            # Counted before the write: whatever a peer has seen is already in the counters.
            self.proxy._count(**{"bytes_up" if up else "bytes_down": n})
            self._write(sock, view[:n])
            view = view[n:]
            if up and self._reset_left is not None:
                self._reset_left -= n
                self._maybe_reset()


def _close_rst(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError):  # already dead: close() below is all that is left
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


class _ProxyHost(BaseManager):
    """A child process holding one FaultProxy; method calls travel over a pipe."""


_ProxyHost.register("FaultProxy", FaultProxy)


class SubprocessFaultProxy:
    """The same FaultProxy, run in a child process.

    Needed for clients that keep the GIL while they wait on the network: PyAV's first mux()
    on an RTMP output (avformat_write_header: connect + publish) waits for the server with the
    GIL held, so an in-process proxy never gets to forward the answer and both hang. (Later
    mux() calls release the GIL while blocked.) `wait_until` polls instead of waiting on a
    condition (a predicate cannot cross the process boundary). The child is started with
    "spawn": a script (not pytest) using this needs the `if __name__ == "__main__":` guard.
    """

    def __init__(self, target_host: str, target_port: int, *, http: bool = True) -> None:
        self._host = _ProxyHost(ctx=multiprocessing.get_context("spawn"))
        self._host.start()
        self._proxy: Any = self._host.FaultProxy(target_host, target_port, http=http)  # type: ignore[attr-defined]
        self.port: int = self._proxy.get_port()

    def start(self) -> None:
        self._proxy.start()

    def stop(self) -> None:
        try:
            self._proxy.stop()
        finally:
            self._host.shutdown()

    def url_for(self, path: str = "", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def set_rate(self, rate_bps: float | None) -> None:
        self._proxy.set_rate(rate_bps)

    def set_down_rate(self, rate_bps: float | None) -> None:
        self._proxy.set_down_rate(rate_bps)

    def reset_after_bytes(self, n: int, times: int = 1) -> None:
        self._proxy.reset_after_bytes(n, times)

    def stall(self, seconds: float, times: int = 1) -> None:
        self._proxy.stall(seconds, times)

    def inject_status(
        self, code: int, times: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        self._proxy.inject_status(code, times, headers)

    def clear_faults(self) -> None:
        self._proxy.clear_faults()

    def refuse(self, on: bool) -> None:
        self._proxy.refuse(on)

    def counters(self) -> ProxyCounters:
        counters: ProxyCounters = self._proxy.counters()
        return counters

    def wait_until(self, predicate: Callable[[ProxyCounters], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.counters()):
            if time.monotonic() > deadline:
                return False
            time.sleep(SUBPROCESS_POLL_S)
        return True

    def __enter__(self) -> SubprocessFaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


ProxyFactory = Callable[..., FaultProxy]
ProcessProxyFactory = Callable[..., SubprocessFaultProxy]
