"""A TCP proxy on 127.0.0.1 that injects network faults on purpose, for tests and benches.

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
- `inject_status_for(path_suffix, code, headers)`: every request whose path ends with the
  suffix is answered with `code` until `clear_faults()` (a server refusing one object).
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

Parts:
    framing    HTTP/1.x request heads and injected responses (pure)
    faults     the armed faults, what one unit claims, the counters (pure)
    throttle   the token bucket behind set_rate / set_down_rate
    link       one proxied connection: two pump threads that apply a unit's faults
    proxy      FaultProxy: the control API and the accept loop
    process    SubprocessFaultProxy: the same in a child process
"""

from __future__ import annotations

from collections.abc import Callable

from tests.peers.faultproxy.faults import ProxyCounters
from tests.peers.faultproxy.framing import RequestHead, parse_request_head, render_response
from tests.peers.faultproxy.process import SubprocessFaultProxy
from tests.peers.faultproxy.proxy import FaultProxy

ProxyFactory = Callable[..., FaultProxy]
ProcessProxyFactory = Callable[..., SubprocessFaultProxy]

__all__ = [
    "FaultProxy",
    "ProcessProxyFactory",
    "ProxyCounters",
    "ProxyFactory",
    "RequestHead",
    "SubprocessFaultProxy",
    "parse_request_head",
    "render_response",
]
