"""Shared fixtures: a real nginx (WebDAV PUT + RTMP) and a fault-injecting TCP proxy.

    def test_x(nginx: Nginx) -> None: ...                    # started, stopped at teardown
    def test_y(nginx_factory: NginxFactory) -> None:
        server = nginx_factory(bearer_token="s3cret")          # started with options
    def test_z(nginx: Nginx, fault_proxy: ProxyFactory) -> None:
        proxy = fault_proxy("127.0.0.1", nginx.http_port)      # started, stopped at teardown

Helpers for test modules live in tests/servers.py (`Nginx`, `ffprobe_json`, `free_port`,
`port_open`) and tests/faultproxy.py (`FaultProxy`); import them as `from servers import ...`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faultproxy import FaultProxy
from servers import Nginx, check_installed

NginxFactory = Callable[..., Nginx]
ProxyFactory = Callable[..., FaultProxy]


@pytest.fixture(scope="session")
def system_peers() -> None:
    """Fails (never skips) when nginx, its RTMP module or ffprobe are not installed."""
    check_installed()


@pytest.fixture
def nginx_factory(
    system_peers: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NginxFactory]:
    started: list[Nginx] = []

    def make(**options: Any) -> Nginx:
        server = Nginx(tmp_path_factory.mktemp("nginx"), **options)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def nginx(nginx_factory: NginxFactory) -> Nginx:
    return nginx_factory()


@pytest.fixture
def fault_proxy() -> Iterator[ProxyFactory]:
    started: list[FaultProxy] = []

    def make(target_host: str, target_port: int, **options: Any) -> FaultProxy:
        proxy = FaultProxy(target_host, target_port, **options)
        started.append(proxy)
        proxy.start()
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
