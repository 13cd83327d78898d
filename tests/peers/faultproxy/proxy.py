"""FaultProxy: the control API (see the package doc) and the accept loop."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import replace

from tests.peers.faultproxy.faults import Claim, PendingFaults, ProxyCounters
from tests.peers.faultproxy.link import SOCK_POLL_S, SOCKET_BUFFER_BYTES, Link, close_rst
from tests.peers.faultproxy.throttle import TokenBucket

log = logging.getLogger(__name__)

# Two threads per connection; tests never need more than a handful of connections.
MAX_CONNECTIONS = 32
JOIN_TIMEOUT_S = 2.0


class FaultProxy:
    """TCP proxy from a free 127.0.0.1 port to (target_host, target_port); see package doc."""

    def __init__(self, target_host: str, target_port: int, *, http: bool = True) -> None:
        self.target = (target_host, target_port)
        self.http = http
        self.up = TokenBucket()
        self.down = TokenBucket()
        self.stopping = threading.Event()
        self._cond = threading.Condition()
        self._counters = ProxyCounters()
        self._pending = PendingFaults()
        self._links: set[Link] = set()
        self._want_listening = True
        self._listening = False
        self._acceptor: threading.Thread | None = None
        self._listener: socket.socket | None = self._listen(0)
        self.port: int = self._listener.getsockname()[1]

    # -- control -------------------------------------------------------------------------
    def start(self) -> None:
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy-accept")
        self._acceptor.start()
        self._await(lambda: self._listening, "listening")

    def stop(self) -> None:
        self.stopping.set()
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

    def inject_status_for(
        self, path_suffix: str, code: int, headers: dict[str, str] | None = None
    ) -> None:
        """Every request whose path ends with `path_suffix` is answered with `code` (never
        reaching the server) until clear_faults(): a server that refuses one object."""
        with self._cond:
            self._pending.path_injects.append((path_suffix, code, dict(headers or {})))

    def clear_faults(self) -> None:
        with self._cond:
            self._pending = PendingFaults()

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

    # -- used by its links (link.LinkOwner) -------------------------------------------------
    def count(self, **deltas: int) -> None:
        with self._cond:
            c = self._counters
            self._counters = replace(c, **{k: getattr(c, k) + v for k, v in deltas.items()})
            self._cond.notify_all()

    def claim(self, is_request: bool, want_reset: bool, path: str = "") -> Claim:
        with self._cond:
            return self._pending.claim(is_request, want_reset, path)

    def link_done(self, link: Link) -> None:
        with self._cond:
            self._links.discard(link)
        self.count(open_connections=-1)

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
        while not self.stopping.is_set():
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
                self.stopping.wait(SOCK_POLL_S)
                continue
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:  # e.g. out of file descriptors: keep serving
                log.warning("fault proxy: accept failed: %r", exc)
                self.stopping.wait(SOCK_POLL_S)
                continue
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        with self._cond:
            full = len(self._links) >= MAX_CONNECTIONS
            if not full:
                link = Link(self, client)
                self._links.add(link)
        if full:
            log.warning("fault proxy: over %d connections, resetting one", MAX_CONNECTIONS)
            close_rst(client)
            self.count(rejected=1)
            return
        self.count(open_connections=1)
        link.start()
