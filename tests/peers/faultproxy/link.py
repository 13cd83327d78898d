"""One proxied connection: an upstream pump thread (which also dials the target) and a
downstream pump thread, applying the faults each unit claims from the proxy."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable
from typing import Protocol

from tests.peers.faultproxy.faults import Claim
from tests.peers.faultproxy.framing import (
    MAX_HEAD_BYTES,
    RequestHead,
    parse_request_head,
    render_response,
)
from tests.peers.faultproxy.throttle import TokenBucket

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
# Small kernel buffers so a throttle is felt by the sender instead of hiding megabytes in
# loopback socket buffers; still far above what the proxy itself can move per poll.
SOCKET_BUFFER_BYTES = 64 * 1024
# Every blocking socket call wakes this often to notice stop/abort/refuse.
SOCK_POLL_S = 0.1
CONNECT_TIMEOUT_S = 5.0
_LINGER_RST = struct.pack("ii", 1, 0)


class LinkOwner(Protocol):
    """What a link needs from its proxy (FaultProxy)."""

    target: tuple[str, int]
    http: bool
    up: TokenBucket
    down: TokenBucket
    stopping: threading.Event

    def count(self, **deltas: int) -> None: ...

    def claim(self, is_request: bool, want_reset: bool, path: str = "") -> Claim: ...

    def link_done(self, link: Link) -> None: ...


class LinkClosed(Exception):
    """The link was aborted or the proxy stops: unwind the pump thread."""


class Link:
    """One proxied connection; `start()` dials the target and pumps both ways."""

    def __init__(self, proxy: LinkOwner, client: socket.socket) -> None:
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
        return self._abort.is_set() or self.proxy.stopping.is_set()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        with self._lock:
            self._alive += 1
        t = threading.Thread(target=self._guard, args=(target,), name=f"faultproxy-{name}")
        self._threads.append(t)
        t.start()

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except LinkClosed:
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
            close_rst(self.client)
        else:
            self.client.close()
        if self.server is not None:
            self.server.close()
        self.proxy.link_done(self)

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
            self.proxy.count(rejected=1)
            self.abort(rst=True)
            return
        server.settimeout(SOCK_POLL_S)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server = server
        self.proxy.count(connections=1)
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
                self._apply(self.proxy.claim(is_request=False, want_reset=True))
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
        self.proxy.count(requests=1)
        claim = self.proxy.claim(True, want_reset=self._reset_left is None, path=head.path)
        self._apply(claim)
        if claim.inject is not None:
            code, headers = claim.inject
            del buf[:head_end]
            close = head.close or head.expect_continue
            if not head.expect_continue:
                self._swallow(buf, head.content_length)
            self.proxy.count(injected=1)
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

    def _apply(self, claim: Claim) -> None:
        if claim.stall_s is not None:
            self.proxy.count(stalls=1)
            log.info("fault proxy: stalling for %.1f s", claim.stall_s)
            self._abort.wait(claim.stall_s)
            self._check()
        if claim.reset_after_bytes is not None:
            self._reset_left = claim.reset_after_bytes
            self._maybe_reset()

    def _maybe_reset(self) -> None:
        if self._reset_left == 0:
            self.proxy.count(resets=1)
            log.info("fault proxy: resetting connection")
            self.abort(rst=True)
            raise LinkClosed

    @property
    def server_sock(self) -> socket.socket:
        assert self.server is not None
        return self.server

    # -- socket calls that notice aborts ------------------------------------------------------
    def _check(self) -> None:
        if self._cancelled():
            raise LinkClosed

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
            self.proxy.count(**{"bytes_up" if up else "bytes_down": n})
            self._write(sock, view[:n])
            view = view[n:]
            if up and self._reset_left is not None:
                self._reset_left -= n
                self._maybe_reset()


def close_rst(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError):  # already dead: close() below is all that is left
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()
