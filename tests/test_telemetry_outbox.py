"""The event outbox when the disk is full (a real, small tmpfs) and when the spool is replaced:
no event is dropped without a count, and `seq` never goes back."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.events import Event
from agent.telemetry.outbox import OUTBOX_FILENAME, Outbox, move_outbox
from tests.peers.agent import AgentProcess
from tests.peers.config import STATION as AGENT_STATION
from tests.peers.config import agent_config, write_toml
from tests.peers.mosquitto import Mosquitto, Received, SubscriberFactory
from tests.peers.telemetry import TelemetryFactory, mqtt_cfg, topic, valid

WAIT_S = 15.0
SMALL_FS = "1m"  # room for the outbox's files and a little more; the filler takes the rest
BIG_MESSAGE = "x" * 3000  # each event then needs a new page of the WAL: a full disk refuses it


class SmallDisk:
    """A real tmpfs of SMALL_FS at `path`; `fill()` leaves no byte free, `free()` undoes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = b"\0" * 65536
            while chunk:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    chunk = chunk[: len(chunk) // 2]
        finally:
            os.close(fd)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs (a really full disk) needs root")
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(  # noqa: S603 - fixed arguments
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS},mode=0700", "tmpfs", str(path)],  # noqa: S607
        check=True,
    )
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)  # noqa: S603, S607


def test_a_full_disk_keeps_events_in_memory_in_order(small_disk: SmallDisk) -> None:
    box = Outbox(small_disk.path / OUTBOX_FILENAME, max_memory_events=5)
    stored = [box.add(f'{{"n":{n}}}') for n in range(3)]
    small_disk.fill()
    waiting = [box.add(f'{{"n":{n},"m":"{BIG_MESSAGE}"}}') for n in range(3, 10)]
    assert box.store_failures > 0, "the full disk never refused an event: the test is void"
    assert stored + waiting == list(range(1, 11))  # numbered in order, stored or not
    assert box.in_memory == 5 and box.memory_dropped == 2  # bounded: the oldest unstored went
    sent = box.after(0, 100)
    assert [seq for seq, _ in sent] == [1, 2, 3, 6, 7, 8, 9, 10]  # the gap is the counted drop
    assert box.pending == 8
    box.remove([1, 6])  # delivered from disk and from memory
    assert box.pending == 6 and box.in_memory == 4
    assert box.retry() is False  # still full

    small_disk.free()
    assert box.retry() is True
    assert box.in_memory == 0 and box.add("{}") == 11
    box.close()
    reopened = Outbox(small_disk.path / OUTBOX_FILENAME)  # what waited in memory is on disk now
    assert [seq for seq, _ in reopened.after(0, 100)] == [2, 3, 7, 8, 9, 10, 11]
    reopened.close()


def test_events_during_a_full_disk_are_sent_and_counted(
    mosquitto: Mosquitto,
    subscriber: SubscriberFactory,
    telemetry_factory: TelemetryFactory,
    small_disk: SmallDisk,
) -> None:
    sub = subscriber(mosquitto, [topic("event"), topic("heartbeat")])
    telemetry = telemetry_factory(mqtt_cfg(mosquitto), state_dir=small_disk.path)
    assert sub.wait_for(lambda m: b"agent_started" in m.payload, WAIT_S) is not None
    small_disk.fill()
    for n in range(10):
        telemetry.emit(Event("spool_write_failed", "critical", BIG_MESSAGE, {"n": n}))
    assert telemetry.connection()["events_unsaved"] > 0, "the disk never refused an event"

    def is_event(m: Received) -> bool:
        return m.topic == topic("event")

    events = sub.wait_distinct(is_event, 11, WAIT_S)
    for body in events:
        valid(body)
    assert [e["kind"] for e in events] == ["agent_started"] + ["spool_write_failed"] * 10
    assert [e["seq"] for e in events] == list(range(1, 12))
    heartbeat = sub.wait_for(
        lambda m: m.topic == topic("heartbeat") and m.json()["telemetry"]["events_unsaved"] > 0,
        WAIT_S,
    )
    assert heartbeat is not None, "the heartbeat does not tell about the unstored events"
    assert valid(heartbeat.payload)["telemetry"]["events_dropped"] == 0

    small_disk.free()
    telemetry.emit(Event("disk_ok", "info", "room again"))
    state = telemetry.connection()
    assert state["events_in_memory"] == 0 and state["events_dropped"] == 0


def test_an_outbox_inside_the_spool_is_taken_over_with_its_seq(tmp_path: Path) -> None:
    old_dir, new_dir = tmp_path / "spool" / "telemetry", tmp_path / "telemetry"
    old = Outbox(old_dir / OUTBOX_FILENAME)
    seqs = [old.add(f'{{"n":{n}}}') for n in range(7)]
    old.remove(seqs[:5])  # two still waiting to be sent
    old.close()
    assert move_outbox(old_dir, new_dir) == 2
    assert not (old_dir / OUTBOX_FILENAME).exists()
    assert move_outbox(old_dir, new_dir) == 0  # once only
    box = Outbox(new_dir / OUTBOX_FILENAME)
    assert box.after(0, 10) == [(6, '{"n":5}'), (7, '{"n":6}')]
    assert box.add("{}") == 8
    box.close()


def test_seq_keeps_increasing_when_the_spool_is_replaced(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: SubscriberFactory
) -> None:
    sub = subscriber(mosquitto, topic("event", AGENT_STATION))
    mqtt = {"url": mosquitto.url, "heartbeat_s": 1, "reconnect_max_s": 1}
    config = write_toml(tmp_path / "station.toml", agent_config(tmp_path, mqtt=mqtt))

    def run_once(stopped_so_far: int) -> None:
        agent = AgentProcess(config).start()
        try:
            stops = sub.wait_count(
                lambda m: b"agent_started" in m.payload, stopped_so_far + 1, WAIT_S
            )
            assert len(stops) == stopped_so_far + 1, agent.stderr()[-2000:]
            assert agent.terminate() == 0
        finally:
            agent.kill()

    run_once(0)
    shutil.rmtree(tmp_path / "spool")  # a replaced spool (a new disk, a re-created index)
    run_once(1)
    received = sub.wait_count(lambda m: b"agent_stopping" in m.payload, 2, WAIT_S)
    assert len(received) == 2
    unique: dict[str, dict[str, Any]] = {}
    for message in sub.messages:
        body = valid(message.payload)
        unique.setdefault(body["id"], body)
    events = list(unique.values())
    kinds = [e["kind"] for e in events]
    assert kinds.count("agent_started") == 2 and kinds.count("agent_stopping") == 2
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    assert not (tmp_path / "spool" / "telemetry").exists()  # the outbox is beside the spool
    assert (tmp_path / "telemetry" / OUTBOX_FILENAME).exists()
