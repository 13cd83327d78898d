"""Issue 12, the upload side: one bad segment never holds the live edge back, a missing or
damaged segment file is recorded as lost and skipped (never spun on, never PUT), and a stop fits
its deadline whatever the server does. Real spools, real nginx, a real fault proxy."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.adapt.ladder import Rung
from agent.adapt.throughput import ThroughputEstimator
from agent.core.events import RecordingSink
from agent.encode.segmenter import EncodedSegment
from agent.service.config import AgentConfig
from agent.spool.store import QUARANTINE_DIR, Spool
from agent.uplink.config import HttpUplinkConfig
from agent.uplink.targets import FileTarget, Progress
from agent.uplink.uploader import SegmentUploader
from tests.peers.agent import AgentProcess, Running, assert_all_on_server, wait_until
from tests.peers.config import STATION, agent_config, write_toml
from tests.peers.faultproxy import FaultProxy
from tests.peers.nginx import Nginx
from tests.test_uplink import playlist_seqs, uplink_config

RUNG = Rung(320, 240, 15, 300_000)
AT = "2026-11-23T10:00:00.000Z"


def filled_spool(path: Path, sink: RecordingSink, count: int) -> Spool:
    spool = Spool(path, ["http"], 10**9, 0, sink)
    spool.open()
    for k in range(count):
        segment = EncodedSegment(bytes([k]) * 2_000, AT, k * 90_000, 1.0, RUNG, 15, "x", k == 0)
        spool.add(segment)
    return spool


class CountingTarget(FileTarget):
    """A real file:// target that remembers every name it was asked to PUT."""

    def __init__(self, url: str, station_id: str) -> None:
        super().__init__(url, station_id)
        self.names: list[str] = []

    def put(self, name: str, data: bytes, content_type: str, sha256: str | None,
            progress: Progress | None = None) -> None:  # fmt: skip
        self.names.append(name)
        super().put(name, data, content_type, sha256, progress)


def file_uploader(
    tmp_path: Path, spool: Spool, sink: RecordingSink, target: FileTarget | None = None
) -> tuple[SegmentUploader, FileTarget]:
    cfg = HttpUplinkConfig(url=f"file://{tmp_path / 'up'}", archive_interval_s=0)
    target = target or CountingTarget(cfg.url, STATION)
    uploader = SegmentUploader(
        cfg, target, spool, sink, ThroughputEstimator(), name="http", station_id=STATION,
        box_id="box-a",
    )  # fmt: skip
    return uploader, target


def tags_of(archive: str, seq: int) -> list[str]:
    """The tag lines right before segment `seq` in a playlist."""
    lines = archive.splitlines()
    (at,) = [k for k, line in enumerate(lines) if line.endswith(f"{seq:08d}.ts")]
    tags = []
    for line in reversed(lines[:at]):
        if not line.startswith("#"):
            break
        tags.append(line)
    return tags


def test_a_missing_segment_file_is_recorded_lost_and_skipped_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = RecordingSink()
    spool = filled_spool(tmp_path / "spool", sink, 10)
    (spool.segment_dir / "00000004.ts").unlink()  # deleted behind the agent's back
    uploader, target = file_uploader(tmp_path, spool, sink)
    assert isinstance(target, CountingTarget)
    with caplog.at_level(logging.INFO, logger="agent.uplink"):
        uploader.start()
        try:
            assert wait_until(lambda: not spool.pending("http"), timeout_s=30), "it spins"
            # the uploader goes on (the index is rewritten twice more): 4 is not tried again
            written = target.names.count("recordings.json")
            assert wait_until(lambda: target.names.count("recordings.json") >= written + 2, 30)
        finally:
            uploader.stop()
    assert [seq for seq, _, _ in spool.lost()] == [4]
    assert not any(name.endswith("00000004.ts") for name in target.names)
    mentions = [
        r
        for r in caplog.records
        if r.name.startswith("agent.uplink") and "segment 4 " in r.getMessage()
    ]
    assert len(mentions) == 1, [r.getMessage() for r in mentions]
    assert sink.kinds().count("segment_dropped") == 1
    archive = (tmp_path / "up" / STATION / spool.recording_id / "archive.m3u8").read_text()
    assert "#EXT-X-GAP" in tags_of(archive, 4)
    assert uploader.status(0.0)["skipped_lost"] == 1


def test_a_truncated_segment_is_never_uploaded_but_quarantined_and_recorded_lost(
    tmp_path: Path,
) -> None:
    sink = RecordingSink()
    spool = filled_spool(tmp_path / "spool", sink, 8)
    damaged = spool.segment_dir / "00000005.ts"
    damaged.write_bytes(damaged.read_bytes()[:1_000])  # a torn write, a bad sector
    uploader, target = file_uploader(tmp_path, spool, sink)
    assert isinstance(target, CountingTarget)
    uploader.start()
    try:
        assert wait_until(lambda: not spool.pending("http"), timeout_s=30)
    finally:
        uploader.stop()
    assert not any(name.endswith("00000005.ts") for name in target.names), "never PUT"
    recording = tmp_path / "up" / STATION / spool.recording_id
    assert not (recording / "00000005.ts").exists()
    assert len(list(recording.glob("*.ts"))) == 7
    (lost,) = spool.lost()
    assert lost[0] == 5 and "bytes" in lost[1]
    assert [p.name for p in (spool.path / QUARANTINE_DIR).iterdir()], "kept for a person"
    assert "#EXT-X-GAP" in tags_of((recording / "archive.m3u8").read_text(), 5)


class HangingTarget(FileTarget):
    """A real file:// target whose server stops answering after the first segment: every
    later request hangs until the test ends."""

    def __init__(self, url: str, station_id: str) -> None:
        super().__init__(url, station_id)
        self.hanging, self.release = threading.Event(), threading.Event()

    def put(self, name: str, data: bytes, content_type: str, sha256: str | None,
            progress: Progress | None = None) -> None:  # fmt: skip
        if name.endswith(".ts") and not name.endswith("00000000.ts"):
            self.hanging.set()
            self.release.wait(120)
        super().put(name, data, content_type, sha256, progress)


def test_stop_returns_by_its_deadline_while_a_put_hangs(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = filled_spool(tmp_path / "spool", sink, 5)
    target = HangingTarget(f"file://{tmp_path / 'up'}", STATION)
    uploader, _ = file_uploader(tmp_path, spool, sink, target)
    uploader.start()
    try:
        assert target.hanging.wait(10)
        stopper = threading.Thread(target=uploader.stop, kwargs={"drain_s": 1.0}, daemon=True)
        stopper.start()
        stopper.join(timeout=20)  # a bound far above the 1 s it may take
        assert not stopper.is_alive(), "stop() waited for a PUT that hangs"
    finally:
        target.release.set()
    assert len(spool.pending("http")) >= 3, "nothing was marked that did not go up"


def test_the_live_edge_never_waits_for_a_refused_segment(
    nginx: Nginx,
    fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
    run_agent: Callable[[AgentConfig], Running],
) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    proxy.inject_status_for("/00000002.ts", 413)  # the server refuses one object, always
    cfg = uplink_config(
        tmp_path,
        proxy.url_for("/ingest"),
        rejected_backoff_s=2.0,
        refused_max_attempts=3,
        set_aside_retry_s=15.0,
    )
    running = run_agent(cfg)
    recording = nginx.root / STATION / running.spool.recording_id
    assert proxy.wait_until(lambda c: c.injected >= 1, timeout_s=30)
    # the ten segments after it go up while it is refused (the old uploader backed off and
    # retried the oldest, the refused one, so they waited behind it)
    after = [recording / f"{seq:08d}.ts" for seq in range(3, 13)]
    assert wait_until(lambda: all(p.exists() for p in after), timeout_s=40), running.sink.kinds()
    assert not (recording / "00000002.ts").exists()
    rejected = running.sink.wait_for("upload_rejected", timeout_s=30)
    assert rejected is not None, running.sink.kinds()
    assert rejected.fields["seq"] == 2 and rejected.fields["status"] == 413
    assert "413" in rejected.fields["reason"]
    assert running.pipeline.status()["uplink"]["set_aside"] == 1
    archive = recording / "archive.m3u8"
    assert wait_until(lambda: archive.exists() and "#EXT-X-GAP" in archive.read_text(), 10)
    assert "#EXT-X-GAP" in tags_of(archive.read_text(), 2)
    refused_so_far = proxy.counters().injected
    assert refused_so_far <= 4, "set aside: retried rarely"
    proxy.clear_faults()  # the server takes it after all: the next rare retry brings it
    assert wait_until(lambda: running.pending() == 0, timeout_s=40)
    assert running.sink.kinds().count("upload_rejected") == 1, "reported once"
    spool = running.stop()
    assert_all_on_server(spool, nginx.root / STATION)
    final = archive.read_text()
    assert "#EXT-X-GAP" not in final and playlist_seqs(final) == [r.seq for r in spool.segments()]


def test_the_agent_stops_within_systemds_limit_while_the_server_hangs(
    nginx: Nginx, fault_proxy: Callable[..., FaultProxy], tmp_path: Path
) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    url = proxy.url_for("/ingest")
    data = agent_config(tmp_path, uplink={"http": {"url": url, "archive_interval_s": 0}})
    agent = AgentProcess(write_toml(tmp_path / "station.toml", data)).start()
    try:
        assert wait_until(lambda: list(nginx.root.rglob("00000001.ts")), timeout_s=30)
        proxy.stall(600.0, times=1000)  # every request from now on: no byte for 10 minutes
        assert proxy.wait_until(lambda c: c.stalls >= 1, timeout_s=30)
        # systemd's TimeoutStopSec is 30 s; 20 leaves the margin
        assert agent.terminate(timeout_s=20) == 0, agent.stderr()[-2000:]
    finally:
        agent.kill()
    log = agent.stderr()
    assert re.search(r"abandoned|not written a last time", log), log[-2000:]
