"""sd_notify datagrams on a real AF_UNIX socket; progress watchdog and supervisor loop."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.adapt.ladder import Rung
from agent.core.events import RecordingSink
from agent.service.pipeline import run_until
from agent.service.sdnotify import SdNotifier
from agent.service.supervision import ProgressWatchdog, Supervisor, status_line

TIMEOUT_S = 10.0


class NotifyListener:
    """Plays the service manager: a bound datagram socket that records every message."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            with self._changed:
                self.messages.append(data.decode())
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[str]], bool]) -> list[str]:
        with self._changed:
            assert self._changed.wait_for(lambda: predicate(self.messages), TIMEOUT_S), (
                f"not seen in time; got {self.messages[-10:]}"
            )
            return list(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_S)
        self.sock.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def listener(socket_dir: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(str(socket_dir / "notify"))
    yield lst
    lst.close()


# --- SdNotifier -------------------------------------------------------------------------------


def test_no_notify_socket_is_a_silent_no_op() -> None:
    notifier = SdNotifier({})
    assert not notifier.enabled
    assert notifier.ready("up") is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval_s() is None
    assert (notifier.sent, notifier.send_errors) == (0, 0)


def test_messages_arrive_as_datagrams(socket_dir: Path, listener: NotifyListener) -> None:
    notifier = SdNotifier({"NOTIFY_SOCKET": str(socket_dir / "notify")})
    assert notifier.enabled
    assert notifier.ready("starting")
    assert notifier.status("streaming 720p30\n1.5 Mbit/s")
    assert notifier.watchdog()
    assert notifier.stopping("finishing the segment")
    got = listener.wait_for(lambda m: len(m) >= 4)
    assert got == [
        "READY=1\nSTATUS=starting",
        "STATUS=streaming 720p30 1.5 Mbit/s",  # one line: a newline would start a new field
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=finishing the segment",
    ]
    assert (notifier.sent, notifier.send_errors) == (4, 0)
    notifier.close()


def test_abstract_socket() -> None:
    name = f"station-agent-test-{uuid.uuid4().hex}"
    lst = NotifyListener(b"\0" + name.encode())
    try:
        notifier = SdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert lst.wait_for(lambda m: len(m) >= 1) == ["READY=1"]
    finally:
        lst.close()


def test_send_error_is_counted_not_raised(socket_dir: Path) -> None:
    notifier = SdNotifier({"NOTIFY_SOCKET": str(socket_dir / "nobody-listens")})
    assert notifier.enabled
    assert notifier.watchdog() is False
    assert notifier.status("x") is False
    assert (notifier.sent, notifier.send_errors) == (0, 2)


def test_unsupported_socket_kind_disables() -> None:
    assert not SdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


@pytest.mark.parametrize(
    ("env", "expected_timeout_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # someone else's
        ({"WATCHDOG_USEC": "banana"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected_timeout_s: float | None) -> None:
    notifier = SdNotifier(env, pid=4242)
    assert notifier.watchdog_timeout_s() == expected_timeout_s
    expected_interval_s = None if expected_timeout_s is None else expected_timeout_s / 2
    assert notifier.watchdog_interval_s() == expected_interval_s


def test_own_pid_is_the_default() -> None:
    env = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert SdNotifier(env).watchdog_interval_s() == 2.0


# --- ProgressWatchdog (pure: time stepped by hand) -------------------------------------------


def test_stage_stalls_after_its_deadline_and_recovers_on_beat() -> None:
    wd = ProgressWatchdog({"capture": 10.0, "encode": 5.0}, now_s=100.0)
    assert wd.healthy(105.0)  # start-up grace: deadlines run from construction
    assert wd.stalled(105.1) == ["encode"]
    wd.beat("encode", 106.0)
    assert wd.stalled(110.05) == ["capture"]
    wd.beat("capture", 110.05)
    assert wd.healthy(110.05)
    assert wd.silent_s(111.0) == {"capture": pytest.approx(0.95), "encode": pytest.approx(5.0)}


def test_idle_uplink_is_healthy_but_a_hung_upload_is_not() -> None:
    wd = ProgressWatchdog({"uplink": 20.0}, now_s=0.0)
    wd.idle("uplink", 1.0)  # nothing to upload
    assert wd.healthy(1000.0)
    assert wd.silent_s(1000.0) == {"uplink": None}
    wd.busy("uplink", 1000.0)  # a segment arrives: the clock starts now, not at the last beat
    assert wd.healthy(1019.0)
    wd.busy("uplink", 1010.0)  # still busy: does not reset the clock
    assert wd.stalled(1020.5) == ["uplink"]
    wd.beat("uplink", 1020.5)  # bytes went out
    assert wd.healthy(1030.0)
    wd.idle("uplink", 1031.0)
    assert wd.healthy(5000.0)


def test_unknown_stage_and_bad_deadline_are_errors() -> None:
    wd = ProgressWatchdog({"encode": 5.0}, now_s=0.0)
    with pytest.raises(KeyError):
        wd.beat("encoder", 1.0)
    with pytest.raises(ValueError, match="deadline"):
        ProgressWatchdog({"encode": 0.0}, now_s=0.0)
    with pytest.raises(ValueError, match="at least one"):
        ProgressWatchdog({}, now_s=0.0)


@given(
    deadline_s=st.floats(0.1, 100.0),
    beats=st.lists(st.floats(0.0, 1000.0), min_size=1, max_size=20),
    probe_s=st.floats(0.0, 2000.0),
)
def test_stalled_iff_silent_longer_than_deadline(
    deadline_s: float, beats: list[float], probe_s: float
) -> None:
    wd = ProgressWatchdog({"encode": deadline_s}, now_s=0.0)
    for t in beats:  # in any order: late reports never move progress backwards
        wd.beat("encode", t)
    last_s = max(beats)
    assert wd.healthy(probe_s) == (probe_s - last_s <= deadline_s)


# --- Supervisor ------------------------------------------------------------------------------


class RecordingNotifier:
    """A real, typed stand-in for SdNotifier that keeps what would have been sent."""

    def __init__(self, interval_s: float | None) -> None:
        self.sent: list[str] = []
        self._interval_s = interval_s

    def status(self, text: str) -> bool:
        self.sent.append("STATUS=" + text)
        return True

    def watchdog(self) -> bool:
        self.sent.append("WATCHDOG=1")
        return True

    def watchdog_interval_s(self) -> float | None:
        return self._interval_s


def test_supervisor_withholds_pings_while_a_stage_is_stalled() -> None:
    wd = ProgressWatchdog({"encode": 5.0, "uplink": 20.0}, now_s=0.0)
    notifier = RecordingNotifier(interval_s=15.0)
    sink = RecordingSink()
    text = ["streaming"]
    sup = Supervisor(notifier, wd, lambda: text[0], sink=sink)
    assert sup.interval_s == 1.0
    assert sup.tick(1.0)
    assert sup.tick(2.0)
    assert notifier.sent == ["STATUS=streaming", "WATCHDOG=1", "WATCHDOG=1"]  # status on change

    notifier.sent.clear()
    assert not sup.tick(6.0)  # encode silent for 6 s > 5 s
    assert not sup.tick(7.0)
    assert notifier.sent == ["STATUS=STALLED: encode | streaming"]
    assert sup.stalled_stages == ["encode"]
    stalled = [e for e in sink.events if e.kind == "stage_stalled"]
    assert len(stalled) == 1 and stalled[0].fields["stages"] == ["encode"]

    notifier.sent.clear()
    wd.beat("encode", 7.5)
    text[0] = "streaming again"
    assert sup.tick(8.0)
    assert notifier.sent == ["STATUS=streaming again", "WATCHDOG=1"]
    assert sink.kinds()[-1] == "watchdog_recovered"


def test_supervisor_survives_a_broken_status_callable() -> None:
    wd = ProgressWatchdog({"encode": 5.0}, now_s=0.0)
    notifier = RecordingNotifier(interval_s=None)

    def broken() -> str:
        return str({}["rung"])  # type: ignore[index]  # a KeyError on purpose

    sup = Supervisor(notifier, wd, broken)
    assert sup.tick(1.0)
    assert notifier.sent == ["WATCHDOG=1"]
    assert sup.status_errors == 1


def test_status_line() -> None:
    line = status_line("streaming", Rung(1280, 720, 30, 1_500_000), 1_480_000.0, 0)
    assert line == "streaming 720p30 1.5 Mbit/s, backlog 0"


class CountingClock:
    """time.monotonic that lets a test wait until the supervisor has ticked n more times."""

    def __init__(self) -> None:
        self.calls = 0
        self._changed = threading.Condition()

    def __call__(self) -> float:
        with self._changed:
            self.calls += 1
            self._changed.notify_all()
        return time.monotonic()

    def wait_more(self, n: int) -> None:
        with self._changed:
            target = self.calls + n
            assert self._changed.wait_for(lambda: self.calls >= target, TIMEOUT_S)


def test_hung_stage_stops_the_watchdog_pings_end_to_end(
    socket_dir: Path, listener: NotifyListener
) -> None:
    """A worker thread beats 'encode' until the test makes it hang: the WATCHDOG=1 datagrams
    on the socket stop, and come back when it is released."""
    env = {"NOTIFY_SOCKET": str(socket_dir / "notify"), "WATCHDOG_USEC": "200000"}
    notifier = SdNotifier(env)
    clock = CountingClock()
    # A deadline far above the 0.1 s ping interval so a slow CI box never stalls by accident.
    wd = ProgressWatchdog({"encode": 0.5}, now_s=clock())
    sink = RecordingSink()
    sup = Supervisor(notifier, wd, lambda: "streaming 720p30", sink=sink)
    assert sup.interval_s == pytest.approx(0.1)

    stop = threading.Event()
    running = threading.Event()  # cleared = the worker hangs
    running.set()

    def worker() -> None:
        while not stop.is_set():
            running.wait()
            wd.beat("encode", time.monotonic())
            stop.wait(0.01)  # one "frame"

    threads = [
        threading.Thread(target=worker, daemon=True),
        threading.Thread(
            target=run_until, args=(stop, lambda: sup.tick(clock()), sup.interval_s), daemon=True
        ),
    ]
    for t in threads:
        t.start()
    try:
        notifier.ready("starting")
        listener.wait_for(lambda m: m.count("WATCHDOG=1") >= 3)

        running.clear()  # the encoder hangs
        assert sink.wait_for("stage_stalled", TIMEOUT_S) is not None
        clock.wait_more(5)  # five more supervisor ticks while stalled
        notifier.status("marker")
        got = listener.wait_for(lambda m: "STATUS=marker" in m)
        stalled_at = next(i for i, m in enumerate(got) if m.startswith("STATUS=STALLED"))
        assert "WATCHDOG=1" not in got[stalled_at:]
        assert sup.withheld >= 5

        running.set()  # released: pings resume
        listener.wait_for(lambda m: "WATCHDOG=1" in m[m.index("STATUS=marker") :])
        assert sink.wait_for("watchdog_recovered", TIMEOUT_S) is not None
    finally:
        stop.set()
        running.set()
        for t in threads:
            t.join(TIMEOUT_S)
        notifier.close()
