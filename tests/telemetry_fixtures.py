"""pytest fixtures for telemetry tests: real mosquitto, subscribers, Telemetry, agent processes.

    pytest_plugins = ["telemetry_fixtures"]      # in each telemetry test module

(tests/conftest.py belongs to another part; test modules must not import this module directly,
so that pytest can register it as a plugin.)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest
from mqtt_broker import Mosquitto, MosquittoFactory, Subscriber, SubscriberFactory
from telemetry_helpers import (
    STATION,
    SUMMARY,
    AgentFactory,
    AgentProcess,
    TelemetryFactory,
)
from telemetry_runner import fake_status

from agent.telemetry import MqttConfig, Telemetry, open_channel


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
    """start(spec) -> a running tests/telemetry_runner.py process; killed at teardown."""
    made: list[AgentProcess] = []

    def start(spec: dict[str, Any]) -> AgentProcess:
        agent = AgentProcess(spec, tmp_path / f"agent-{len(made)}.log")
        made.append(agent)
        return agent

    yield start
    for agent in made:
        agent.close()
