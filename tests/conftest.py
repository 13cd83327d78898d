"""Shared fixtures: a real nginx (WebDAV PUT + RTMP) and a fault-injecting TCP proxy.

    def test_x(nginx: Nginx) -> None: ...                    # started, stopped at teardown
    def test_y(nginx_factory: NginxFactory) -> None:
        server = nginx_factory(bearer_token="s3cret")          # started with options
    def test_z(nginx: Nginx, fault_proxy: ProxyFactory) -> None:
        proxy = fault_proxy("127.0.0.1", nginx.http_port)      # started, stopped at teardown
    fault_proxy_process(...)  # same API, in a child process: for PyAV RTMP (holds the GIL)

Helpers for test modules live in tests/servers.py (`Nginx`, `ffprobe_json`, `free_port`,
`port_open`) and tests/faultproxy.py (`FaultProxy`); import them as `from servers import ...`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from agentrun import Running
from faultproxy import FaultProxy, SubprocessFaultProxy
from hypothesis import settings
from servers import Nginx, check_installed

from agent.service.config import AgentConfig

# Shared, noisy 2-core machines: no per-example time limit (tests never assert timings).
settings.register_profile("station-agent", deadline=None)
settings.load_profile("station-agent")

NginxFactory = Callable[..., Nginx]
ProxyFactory = Callable[..., FaultProxy]
ProcessProxyFactory = Callable[..., SubprocessFaultProxy]


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


@pytest.fixture
def run_agent() -> Iterator[Callable[[AgentConfig], Running]]:
    """Starts a whole agent pipeline in-process; stopped cleanly at teardown."""
    started: list[Running] = []

    def make(cfg: AgentConfig) -> Running:
        running = Running(cfg)
        started.append(running)
        running.pipeline.start()
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture
def fault_proxy_process() -> Iterator[ProcessProxyFactory]:
    """Like fault_proxy, but the proxy runs in a child process: use it for clients that hold
    the GIL while blocked on the network (PyAV RTMP output), which deadlock in-process."""
    started: list[SubprocessFaultProxy] = []

    def make(target_host: str, target_port: int, **options: Any) -> SubprocessFaultProxy:
        proxy = SubprocessFaultProxy(target_host, target_port, **options)
        started.append(proxy)
        proxy.start()
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
