"""All fixtures: real peers (nginx, mosquitto, fault proxies), telemetry, the agent itself.

    def test_x(nginx: Nginx) -> None: ...                    # started, stopped at teardown
    def test_y(nginx_factory: NginxFactory) -> None:
        server = nginx_factory(bearer_token="s3cret")          # started with options
    def test_z(nginx: Nginx, fault_proxy: ProxyFactory) -> None:
        proxy = fault_proxy("127.0.0.1", nginx.http_port)      # started, stopped at teardown
    fault_proxy_process(...)  # same API, in a child process: for PyAV RTMP (holds the GIL)
    def test_m(mosquitto: Mosquitto, subscriber: SubscriberFactory) -> None:
        sub = subscriber(mosquitto, "stations/#")

The peers themselves are in tests/peers/ (`from tests.peers.nginx import Nginx`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import settings

from agent.service.config import AgentConfig
from agent.telemetry import MqttConfig, Telemetry, open_channel
from control.service import ControlService
from control.simulate import Simulator
from tests.peers.agent import AgentFactory, AgentProcess, Running
from tests.peers.browser import chromium
from tests.peers.control import ControlFactory, SimulatorFactory, control_config, small_fleet
from tests.peers.faultproxy import (
    FaultProxy,
    ProcessProxyFactory,
    ProxyFactory,
    SubprocessFaultProxy,
)
from tests.peers.mosquitto import Mosquitto, MosquittoFactory, Subscriber, SubscriberFactory
from tests.peers.nginx import Nginx, NginxFactory, check_installed
from tests.peers.telemetry import STATION, SUMMARY, TelemetryFactory
from tests.peers.telemetry_runner import fake_status

# Shared, noisy 2-core machines: no per-example time limit (tests never assert timings).
settings.register_profile("station-agent", deadline=None)
settings.load_profile("station-agent")


# -- nginx and fault proxies ----------------------------------------------------------------
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


# -- mosquitto ------------------------------------------------------------------------------
@pytest.fixture
def mosquitto_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoFactory]:
    started: list[Mosquitto] = []

    def make(**options: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), **options)
        started.append(broker)
        broker.start()
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    return mosquitto_factory()


@pytest.fixture
def subscriber() -> Iterator[SubscriberFactory]:
    made: list[Subscriber] = []

    def make(broker: Mosquitto, topics: str | list[str], **options: Any) -> Subscriber:
        sub = Subscriber(broker, topics, **options)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


# -- the agent ------------------------------------------------------------------------------
@pytest.fixture
def telemetry_factory(tmp_path: Path) -> Iterator[TelemetryFactory]:
    """make(cfg, **keywords of open_channel and Telemetry) -> a started Telemetry, stopped at
    teardown."""
    made: list[Telemetry] = []

    def make(
        cfg: MqttConfig | None,
        *,
        state_dir: Path | None = None,
        password: str | None = None,
        command_key: Ed25519PublicKey | None = None,
        out: TextIO = sys.stdout,
        **options: Any,
    ) -> Telemetry:
        options.setdefault("station_id", STATION)
        options.setdefault("status", fake_status)
        options.setdefault("summary", SUMMARY)
        options.setdefault("commands", {})
        options.setdefault("version", "0.1.0-test")
        options.setdefault("spool_path", tmp_path)
        channel = open_channel(
            cfg,
            station_id=options["station_id"],
            state_dir=state_dir or tmp_path / "state",
            password=password,
            command_key=command_key,
            out=out,
        )
        telemetry = Telemetry(channel, **options)
        made.append(telemetry)
        telemetry.start()
        return telemetry

    yield make
    for telemetry in made:
        telemetry.stop("test teardown")


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[AgentFactory]:
    """start(spec) -> a running tests/peers/telemetry_runner.py process; killed at teardown."""
    made: list[AgentProcess] = []

    def start(spec: dict[str, Any]) -> AgentProcess:
        agent = AgentProcess.for_telemetry(spec, tmp_path / f"agent-{len(made)}.json")
        made.append(agent)
        return agent.start(ready="started")

    yield start
    for agent in made:
        agent.close()


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


# -- the control centre ---------------------------------------------------------------------
@pytest.fixture
def control_factory(tmp_path: Path) -> Iterator[ControlFactory]:
    """make(broker, folder=tmp_path / "control", **sections) -> a started ControlService
    (stopped at teardown; `svc.stop()` first is fine); the same folder keeps its database."""
    made: list[ControlService] = []

    def make(broker: Mosquitto, folder: Path | None = None, **sections: Any) -> ControlService:
        folder = folder or tmp_path / "control"
        folder.mkdir(parents=True, exist_ok=True)
        service = ControlService(control_config(folder, broker, **sections)).start()
        made.append(service)
        return service

    yield make
    for service in made:
        if not service.stopped:
            service.stop()


@pytest.fixture
def simulator_factory() -> Iterator[SimulatorFactory]:
    """make(broker, stations, **SimOptions) -> a running simulated fleet (1 s heartbeats)."""
    made: list[Simulator] = []

    def make(broker: Mosquitto, stations: int, **options: Any) -> Simulator:
        sim = small_fleet(broker, stations, **options).start()
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium (Selenium WebDriver), quit at teardown."""
    driver = chromium(tmp_path)
    yield driver
    driver.quit()
