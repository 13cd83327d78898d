"""The test peers themselves work against the real things: nginx, RTMP, ffprobe, FaultProxy."""

from __future__ import annotations

import io
import os
import ssl
import threading
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from tests.peers.faultproxy import ProcessProxyFactory, ProxyFactory, parse_request_head
from tests.peers.ffprobe import ffprobe_json
from tests.peers.nginx import Nginx, NginxFactory
from tests.peers.pki import make_pki
from tests.peers.ports import port_open

FPS = 10
WIDTH, HEIGHT = 160, 120
# Generous bound for events that take milliseconds on an idle machine.
EVENT_TIMEOUT_S = 10.0


def _frames(count: int) -> list[av.VideoFrame]:
    frames = []
    for i in range(count):
        img = np.full((HEIGHT, WIDTH, 3), 40, dtype=np.uint8)
        img[:, (i * 8) % WIDTH :, 1] = 220  # a moving edge so frames differ
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        frames.append(frame)
    return frames


def _encode(container: av.container.OutputContainer, seconds: float) -> None:
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.options = {"preset": "ultrafast", "g": str(FPS)}
    for frame in _frames(int(seconds * FPS)):
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _ts_segment(seconds: float) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as container:
        _encode(container, seconds)
    return buf.getvalue()


def _push_rtmp(url: str, seconds: float) -> None:
    with av.open(url, "w", format="flv") as container:
        _encode(container, seconds)


def _video(probe: dict) -> dict:
    return next(s for s in probe["streams"] if s["codec_type"] == "video")


# -- nginx: HTTP ------------------------------------------------------------------------------


def test_put_then_get_round_trip(nginx: Nginx) -> None:
    body = os.urandom(300_000)
    url = f"{nginx.url}/AZ-0001/00000001.ts"
    with httpx.Client() as client:
        assert client.put(url, content=body).status_code == 201
        assert (nginx.root / "AZ-0001" / "00000001.ts").read_bytes() == body
        assert client.get(url).content == body
        assert client.put(url, content=body[:10]).status_code == 204  # idempotent overwrite
        assert client.get(url).content == body[:10]
        assert client.delete(url).status_code == 204
        assert client.get(url).status_code == 404


def test_bearer_token_guards_writes_and_survives_reload(nginx_factory: NginxFactory) -> None:
    first = "first-token"
    nginx = nginx_factory(bearer_token=first)
    url, port = f"{nginx.url}/AZ-0001/live.m3u8", nginx.http_port

    def put(token: str | None) -> int:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.put(url, content=b"#EXTM3U\n", headers=headers).status_code

    assert put(None) == 401
    assert put("wrong") == 401
    assert put("first-token") == 201
    assert httpx.get(url).status_code == 200  # reads stay open
    nginx.set_bearer_token("second-token")
    assert nginx.http_port == port
    assert put("first-token") == 401
    assert put("second-token") == 204
    assert httpx.get(url).content == b"#EXTM3U\n"
    with pytest.raises(ValueError, match="b64token"):
        nginx.set_bearer_token('bad"token')


def test_stop_refuses_and_start_serves_on_same_port(nginx: Nginx) -> None:
    url = f"{nginx.url}/AZ-0001/00000001.ts"
    port = nginx.http_port
    assert httpx.put(url, content=b"segment").status_code == 201
    nginx.stop()
    assert not port_open(port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
    nginx.start()
    assert nginx.http_port == port
    assert httpx.get(url).content == b"segment"
    nginx.restart()
    assert httpx.get(url).content == b"segment"


def test_ffprobe_reads_playlist_over_http(nginx: Nginx) -> None:
    base = f"{nginx.url}/AZ-0001"
    playlist = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
        "#EXTINF:1.0,\n00000000.ts\n#EXTINF:1.0,\n00000001.ts\n#EXT-X-ENDLIST\n"
    )
    for name in ("00000000.ts", "00000001.ts"):
        assert httpx.put(f"{base}/{name}", content=_ts_segment(1.0)).status_code == 201
    assert httpx.put(f"{base}/archive.m3u8", content=playlist.encode()).status_code == 201
    probe = ffprobe_json(f"{base}/archive.m3u8")
    video = _video(probe)
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", WIDTH, HEIGHT)
    assert 1.5 <= float(probe["format"]["duration"]) <= 2.5


def test_ffprobe_error_is_loud(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="ffprobe failed"):
        ffprobe_json(tmp_path / "missing.ts")


# -- nginx: TLS -------------------------------------------------------------------------------


def test_tls_with_client_certificate(nginx_factory: NginxFactory, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    token = "tok"  # noqa: S105 - a test token
    nginx = nginx_factory(tls=pki, require_client_cert=True, bearer_token=token)
    assert nginx.url.startswith("https://127.0.0.1:")
    url, auth = f"{nginx.url}/AZ-0001/a.ts", {"Authorization": "Bearer tok"}
    anonymous = ssl.create_default_context(cafile=str(pki.ca_cert))
    with httpx.Client(verify=anonymous) as client:
        assert client.put(url, content=b"x", headers=auth).status_code == 400  # no client cert
    with_cert = ssl.create_default_context(cafile=str(pki.ca_cert))
    with_cert.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    with httpx.Client(verify=with_cert) as client:
        assert client.put(url, content=b"x", headers=auth).status_code == 201
    with pytest.raises(httpx.ConnectError):  # the server's certificate is not trusted
        httpx.get(url)


# -- nginx: RTMP ------------------------------------------------------------------------------


def test_rtmp_push_is_recorded(nginx: Nginx) -> None:
    _push_rtmp(f"{nginx.rtmp_url}/test", seconds=2.0)
    recording = nginx.wait_for_recording("test", timeout_s=EVENT_TIMEOUT_S)
    probe = ffprobe_json(recording, show_frames=True)
    video = _video(probe)
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", WIDTH, HEIGHT)
    assert 1.5 <= float(probe["format"]["duration"]) <= 2.5
    assert len(probe["frames"]) >= 15


# -- FaultProxy -------------------------------------------------------------------------------


def test_parse_request_head_framing() -> None:
    head = parse_request_head(b"PUT /a HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\n\r\n")
    assert head is not None and (head.method, head.content_length, head.close) == ("PUT", 12, False)
    head = parse_request_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert head is not None and (head.content_length, head.close) == (0, True)
    assert parse_request_head(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") is None
    assert parse_request_head(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n") is None
    assert parse_request_head(b"PRI * HTTP/2.0\r\n\r\n") is None


def test_proxy_passes_requests_through(nginx: Nginx, fault_proxy: ProxyFactory) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    body = os.urandom(200_000)
    url = proxy.url_for("/ingest/AZ-0001/00000001.ts")
    with httpx.Client() as client:
        assert client.put(url, content=body).status_code == 201
        assert client.get(url).content == body
    assert (nginx.root / "AZ-0001" / "00000001.ts").read_bytes() == body
    counters = proxy.counters()
    assert (counters.connections, counters.requests) == (1, 2)  # one keep-alive connection
    assert counters.bytes_up > len(body) and counters.bytes_down > len(body)
    assert proxy.wait_until(lambda c: c.open_connections == 0, EVENT_TIMEOUT_S)


def test_proxy_reset_hits_keep_alive_connection(nginx: Nginx, fault_proxy: ProxyFactory) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    url = proxy.url_for("/ingest/AZ-0001/00000002.ts")
    body = os.urandom(500_000)
    with httpx.Client() as client:
        assert client.get(proxy.url_for("/ingest/")).status_code == 200  # connection now open
        proxy.reset_after_bytes(50_000)
        with pytest.raises(httpx.TransportError):
            client.put(url, content=body)
        assert client.put(url, content=body).status_code in (201, 204)  # a fresh connection
    assert (nginx.root / "AZ-0001" / "00000002.ts").read_bytes() == body
    counters = proxy.counters()
    assert (counters.resets, counters.connections) == (1, 2)


def test_proxy_stall_times_the_client_out(nginx: Nginx, fault_proxy: ProxyFactory) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    url = proxy.url_for("/ingest/AZ-0001/stalled.ts")
    proxy.stall(5.0)
    with pytest.raises(httpx.TimeoutException):
        httpx.put(url, content=b"x" * 1000, timeout=0.5)
    assert proxy.counters().stalls == 1
    assert httpx.put(url, content=b"y" * 1000).status_code in (201, 204)
    assert (nginx.root / "AZ-0001" / "stalled.ts").read_bytes() == b"y" * 1000


def test_proxy_injects_statuses_per_request(nginx: Nginx, fault_proxy: ProxyFactory) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    url = proxy.url_for("/ingest/AZ-0001/00000003.ts")
    body = os.urandom(100_000)
    with httpx.Client() as client:
        assert client.get(proxy.url_for("/ingest/")).status_code == 200
        proxy.inject_status(429, headers={"Retry-After": "1"})
        resp = client.put(url, content=body)
        assert (resp.status_code, resp.headers["retry-after"]) == (429, "1")
        assert not (nginx.root / "AZ-0001" / "00000003.ts").exists()  # never reached nginx
        proxy.inject_status(503, times=2)
        assert [client.put(url, content=body).status_code for _ in range(3)] == [503, 503, 201]
    assert (nginx.root / "AZ-0001" / "00000003.ts").read_bytes() == body
    counters = proxy.counters()
    assert (counters.injected, counters.requests, counters.connections) == (3, 5, 1)


def test_proxy_throttle_change_reaches_open_upload(nginx: Nginx, fault_proxy: ProxyFactory) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    url = proxy.url_for("/ingest/AZ-0001/00000004.ts")
    body = os.urandom(400_000)
    proxy.set_rate(80_000)  # 10 kB/s: this upload alone would need 40 s
    proxy.set_down_rate(4_000_000)
    statuses: list[int] = []
    upload = threading.Thread(
        target=lambda: statuses.append(httpx.put(url, content=body).status_code)
    )
    upload.start()
    assert proxy.wait_until(lambda c: c.bytes_up >= 15_000, EVENT_TIMEOUT_S)
    assert upload.is_alive() and proxy.counters().bytes_up < len(body)  # held back
    proxy.set_rate(None)  # back to full speed: the open connection must speed up
    upload.join(EVENT_TIMEOUT_S)
    assert statuses == [201]
    assert (nginx.root / "AZ-0001" / "00000004.ts").read_bytes() == body
    assert httpx.get(url).content == body  # not through the proxy
    assert httpx.get(proxy.url_for("/ingest/AZ-0001/00000004.ts")).content == body  # down-throttled


def test_proxy_refuse_is_link_down(nginx: Nginx, fault_proxy: ProxyFactory) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    url = proxy.url_for("/ingest/")
    assert httpx.get(url).status_code == 200
    proxy.refuse(True)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
    proxy.refuse(False)
    assert httpx.get(url).status_code == 200


def test_proxy_forwards_rtmp_raw(nginx: Nginx, fault_proxy_process: ProcessProxyFactory) -> None:
    proxy = fault_proxy_process("127.0.0.1", nginx.rtmp_port)  # PyAV holds the GIL in RTMP I/O
    _push_rtmp(f"rtmp://127.0.0.1:{proxy.port}/live/proxied", seconds=1.0)
    recording = nginx.wait_for_recording("proxied", timeout_s=EVENT_TIMEOUT_S)
    assert _video(ffprobe_json(recording))["codec_name"] == "h264"
    counters = proxy.counters()
    assert counters.requests == 0 and counters.bytes_up > 1000
