"""The real agent under a fake systemd: READY=1, STATUS=, WATCHDOG=1, and no pings once a stage
hangs (here: the upload server stops reading while the agent's own timeout is long)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers.agent import AgentProcess, wait_until
from tests.peers.config import agent_config, write_toml
from tests.peers.faultproxy import FaultProxy
from tests.peers.nginx import Nginx


class FakeSystemd:
    """The NOTIFY_SOCKET end: records every datagram the agent sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def drain(self, for_s: float) -> None:
        end = time.monotonic() + for_s
        while time.monotonic() < end:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def seen(self, prefix: str) -> list[str]:
        return [m for _, m in self.messages if m.startswith(prefix)]

    def pings_since(self, since_s: float) -> int:
        return sum(1 for at, m in self.messages if m == "WATCHDOG=1" and at >= since_s)


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.sock.close()


def test_ready_status_watchdog_and_pings_stop_when_upload_hangs(
    systemd: FakeSystemd,
    nginx: Nginx,
    fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    http = {"url": proxy.url_for("/ingest"), "timeout_s": 300.0}  # httpx will not give up
    data = agent_config(tmp_path, uplink={"http": http}, watchdog={"uplink_s": 3.0})
    env = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "2000000"}
    agent = AgentProcess(write_toml(tmp_path / "station.toml", data), env=env).start()
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and len(systemd.seen("WATCHDOG=1")) < 3:
            systemd.drain(0.5)
        assert systemd.seen("READY=1"), systemd.messages
        statuses = systemd.seen("STATUS=")
        assert any("240p15" in s and "backlog" in s for s in statuses), statuses
        assert len(systemd.seen("WATCHDOG=1")) >= 3, agent.stderr()[-2000:]

        proxy.stall(300.0, times=50)  # the server stops reading: uploads hang mid-request
        stalled_seen = False
        end = time.monotonic() + 30
        while time.monotonic() < end and not stalled_seen:
            systemd.drain(0.5)
            stalled_seen = any("STALLED: uplink" in s for s in systemd.seen("STATUS="))
        assert stalled_seen, systemd.messages[-10:]
        quiet_from = time.monotonic()
        systemd.drain(4.0)  # four watchdog intervals of 1 s
        assert systemd.pings_since(quiet_from) == 0
        assert agent.proc is not None and agent.proc.poll() is None  # systemd would restart it
    finally:
        agent.kill()
    assert wait_until(lambda: agent.proc is not None and agent.proc.poll() is not None, 10)
