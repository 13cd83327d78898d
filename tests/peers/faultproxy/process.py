"""SubprocessFaultProxy: the same FaultProxy, run in a child process."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.managers import BaseManager
from typing import Any

from tests.peers.faultproxy.faults import ProxyCounters
from tests.peers.faultproxy.proxy import FaultProxy

# wait_until polls the child this often (a round trip is ~0.1 ms).
SUBPROCESS_POLL_S = 0.02


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

    def inject_status_for(
        self, path_suffix: str, code: int, headers: dict[str, str] | None = None
    ) -> None:
        self._proxy.inject_status_for(path_suffix, code, headers)

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
