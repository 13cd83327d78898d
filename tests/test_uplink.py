"""The HTTP uplink against a real nginx (WebDAV PUT), with outages and faults on purpose."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.adapt.ladder import Rung
from agent.adapt.throughput import ThroughputEstimator
from agent.core.events import RecordingSink
from agent.encode.segmenter import EncodedSegment
from agent.service.config import AgentConfig, config_from_dict, load_secrets
from agent.spool.store import Spool
from agent.uplink.config import HttpUplinkConfig
from agent.uplink.targets import FileTarget, Progress, RejectedUploadError, UploadTarget
from agent.uplink.uploader import SegmentUploader
from tests.peers.agent import AgentProcess, Running, assert_all_on_server, spool_seqs, wait_until
from tests.peers.config import STATION, agent_config, write_toml
from tests.peers.faultproxy import FaultProxy
from tests.peers.ffprobe import ffprobe_json
from tests.peers.nginx import Nginx

FAST_RETRY = {"backoff_max_s": 0.5, "timeout_s": 2.0, "archive_interval_s": 0}


def make_uploader(
    cfg: HttpUplinkConfig, target: UploadTarget, spool: Spool, sink: RecordingSink
) -> SegmentUploader:
    """An uploader on its own, as open_outputs builds it (one box)."""
    return SegmentUploader(
        cfg, target, spool, sink, ThroughputEstimator(), name="http", station_id=STATION,
        box_id="box-a",
    )  # fmt: skip


def uplink_config(tmp: Path, url: str, **http: Any) -> AgentConfig:
    return config_from_dict(agent_config(tmp, uplink={"http": {"url": url} | FAST_RETRY | http}))


def playlist_seqs(text: str) -> list[int]:
    """Segment numbers in a playlist: "00000012.ts" (archive) or "<recording>/00000012.ts"."""
    return [int(m) for m in re.findall(r"^(?:[\w-]+/)?(\d{8})\.ts$", text, flags=re.M)]


def test_every_segment_uploaded_and_playlists_play(
    nginx: Nginx, tmp_path: Path, run_agent: Callable[[AgentConfig], Running]
) -> None:
    running = run_agent(uplink_config(tmp_path, nginx.url))
    assert wait_until(lambda: running.pipeline.segments_stored >= 4, timeout_s=30)
    spool = running.stop()
    upstream = nginx.root / STATION
    assert_all_on_server(spool, upstream)
    recorded_s = sum(r.duration_s for r in spool.segments())
    archive_name = f"{spool.recording_id}/archive.m3u8"
    archive = (upstream / archive_name).read_text()
    assert archive.rstrip().endswith("#EXT-X-ENDLIST") and "#EXT-X-GAP" not in archive
    assert playlist_seqs(archive) == [r.seq for r in spool.segments()]
    live = (upstream / "live.m3u8").read_text()
    # dated at its first segment, the others by their durations (a break would be dated too)
    assert live.count("#EXT-X-PROGRAM-DATE-TIME") == 1 and len(playlist_seqs(live)) >= 4
    assert "#EXT-X-ENDLIST" not in live, "a restart must not end the stream for viewers"
    for name in (archive_name, "live.m3u8"):
        probe = ffprobe_json(f"{nginx.url}/{STATION}/{name}")
        assert probe["streams"][0]["codec_name"] == "h264"
    probe = ffprobe_json(f"{nginx.url}/{STATION}/{archive_name}")
    archive_s = float(probe["format"]["duration"])
    assert abs(archive_s - recorded_s) <= 1.0, (archive_s, recorded_s)


def test_outage_live_edge_first_then_complete_archive(
    nginx: Nginx,
    fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
    run_agent: Callable[[AgentConfig], Running],
) -> None:
    # the link: a proxy with about 3x the video's rate, so backfill takes visible time
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    running = run_agent(uplink_config(tmp_path, proxy.url_for("/ingest")))
    upstream = nginx.root / STATION
    assert wait_until(lambda: running.pipeline.segments_stored >= 2 and not running.pending(), 30)
    records = running.spool.segments()
    video_bps = sum(r.nbytes for r in records) * 8 / sum(r.duration_s for r in records)
    proxy.set_rate(3 * video_bps)
    nginx.stop()
    outage_start = running.spool.next_seq()
    assert wait_until(lambda: running.spool.next_seq() >= outage_start + 8, timeout_s=30)
    assert running.sink.wait_for("uplink_down", timeout_s=5) is not None
    assert running.pending() >= 7
    nginx.start()
    back_at_seq = running.spool.next_seq() - 1  # the newest segment when the server returned

    def live_edge_caught_up() -> bool:
        live = upstream / "live.m3u8"
        return live.exists() and max(playlist_seqs(live.read_text())) >= back_at_seq

    assert wait_until(live_edge_caught_up, timeout_s=30)
    # measured in segments, not seconds: the live edge was back before 2 more were recorded,
    # while the outage's backlog was still being filled (live went first)
    assert running.spool.next_seq() - 1 <= back_at_seq + 2
    backlog_left = running.pending()
    assert backlog_left >= 3, backlog_left
    live_text = (upstream / "live.m3u8").read_text()
    assert "#EXT-X-GAP" in live_text, "the missing window segments are marked as gaps"
    assert wait_until(lambda: running.pending() == 0, timeout_s=90)
    assert running.sink.wait_for("uplink_up", timeout_s=5) is not None
    spool = running.stop()
    assert_all_on_server(spool, upstream)
    archive = (upstream / spool.recording_id / "archive.m3u8").read_text()
    assert "#EXT-X-GAP" not in archive and archive.rstrip().endswith("#EXT-X-ENDLIST")
    assert playlist_seqs(archive) == list(range(len(spool.segments())))


FAULTS: dict[str, Callable[[FaultProxy], None]] = {
    "reset mid-body": lambda p: p.reset_after_bytes(3_000, times=3),
    "stall beyond the timeout": lambda p: p.stall(4.0, times=1),
    "503 burst": lambda p: p.inject_status(503, times=6),
    "429 with Retry-After": lambda p: p.inject_status(429, times=2, headers={"Retry-After": "1"}),
    "slow link": lambda p: p.set_rate(400_000),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_end_with_every_segment_byte_identical(
    fault: str,
    nginx: Nginx,
    fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
    run_agent: Callable[[AgentConfig], Running],
) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    running = run_agent(uplink_config(tmp_path, proxy.url_for("/ingest")))
    assert wait_until(lambda: running.pipeline.segments_stored >= 1, timeout_s=30)
    FAULTS[fault](proxy)
    assert wait_until(lambda: running.pipeline.segments_stored >= 5, timeout_s=40)
    proxy.set_rate(None)
    assert wait_until(lambda: running.pending() == 0, timeout_s=60), running.sink.kinds()
    counters = proxy.counters()
    if fault != "slow link":
        injected = counters.resets + counters.stalls + counters.injected
        assert injected >= 1, counters
        uploader = running.pipeline.outputs[0]
        assert isinstance(uploader, SegmentUploader)
        assert uploader.figures.failures >= 1
    spool = running.stop()
    assert_all_on_server(spool, nginx.root / STATION)


def test_rejected_credential_keeps_recording_then_uploads_all_once_fixed(
    nginx_factory: Callable[..., Nginx],
    tmp_path: Path,
    run_agent: Callable[[AgentConfig], Running],
) -> None:
    server = nginx_factory(bearer_token="right-token")  # noqa: S106 - a test credential
    token = tmp_path / "upload-token"
    token.write_text("wrong-token\n")
    token.chmod(0o600)
    cfg = uplink_config(
        tmp_path, server.url, token_file=str(token), rejected_backoff_s=1.0, allow_insecure=True
    )
    running = run_agent(cfg)
    rejected = running.sink.wait_for("upload_rejected", timeout_s=30)
    assert rejected is not None and rejected.fields["status"] == 401
    assert "wrong-token" not in str(rejected) and "right-token" not in str(rejected)
    stored = running.pipeline.segments_stored
    assert wait_until(lambda: running.pipeline.segments_stored >= stored + 2, timeout_s=30)
    assert not list(server.root.rglob("*.ts")), "a refused segment reached the server"
    assert running.pending() >= 2
    token.write_text("right-token\n")
    running.pipeline.reload_secrets(load_secrets(cfg))  # what SIGHUP does
    assert wait_until(lambda: running.pending() == 0, timeout_s=60)
    spool = running.stop()
    assert_all_on_server(spool, server.root / STATION)


def test_kill_9_during_uploads_loses_nothing_and_duplicates_nothing(
    nginx: Nginx, fault_proxy: Callable[..., FaultProxy], tmp_path: Path
) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    proxy.set_rate(600_000)  # slow enough that kills land mid-upload
    data = agent_config(tmp_path, uplink={"http": {"url": proxy.url_for("/ingest")} | FAST_RETRY})
    config = write_toml(tmp_path / "station.toml", data)
    spool_dir = tmp_path / "spool"
    for kill in range(5):
        agent = AgentProcess(config).start()
        before = len(spool_seqs(spool_dir))
        assert wait_until(lambda before=before: len(spool_seqs(spool_dir)) >= before + 2, 30)
        time.sleep(0.1 * kill)
        agent.kill()
    proxy.set_rate(None)
    agent = AgentProcess(config).start()
    spool_probe = lambda: Spool.open_read_only(spool_dir)  # noqa: E731
    assert wait_until(lambda: len(spool_probe().pending("http")) == 0, timeout_s=60)
    assert agent.terminate() == 0
    spool = Spool.open_read_only(spool_dir)
    assert [r.seq for r in spool.segments()] == list(range(len(spool.segments())))
    assert_all_on_server(spool, nginx.root / STATION)


def test_https_with_client_certificate_and_token(
    nginx_factory: Callable[..., Nginx],
    tmp_path: Path,
    run_agent: Callable[[AgentConfig], Running],
) -> None:
    from tests.peers.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    token = tmp_path / "token"
    token.write_text("tls-token\n")
    token.chmod(0o600)
    server = nginx_factory(tls=pki, require_client_cert=True, bearer_token="tls-token")  # noqa: S106
    assert server.url.startswith("https://")
    tls = {
        "token_file": str(token),
        "ca_file": str(pki.ca_cert),
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
    }
    running = run_agent(uplink_config(tmp_path, server.url, **tls))
    assert wait_until(lambda: running.pipeline.segments_stored >= 3, timeout_s=30)
    assert wait_until(lambda: running.pending() == 0, timeout_s=30), running.sink.kinds()
    assert_all_on_server(running.stop(), server.root / STATION)


def test_wrong_ca_is_refused_with_a_clear_reason_and_nothing_lost(
    nginx_factory: Callable[..., Nginx],
    tmp_path: Path,
    run_agent: Callable[[AgentConfig], Running],
) -> None:
    from tests.peers.pki import make_pki

    server = nginx_factory(tls=make_pki(tmp_path / "server-pki"))
    other_ca = make_pki(tmp_path / "other-pki").ca_cert
    running = run_agent(uplink_config(tmp_path, server.url, ca_file=str(other_ca)))
    down = running.sink.wait_for("uplink_down", timeout_s=30)
    assert down is not None and "CERTIFICATE_VERIFY_FAILED" in down.message, down
    stored = running.pipeline.segments_stored
    assert wait_until(lambda: running.pipeline.segments_stored >= stored + 2, timeout_s=30)
    assert running.pending() >= 2 and running.spool.lost() == []


def test_archive_is_rewritten_at_its_interval_and_completed_at_stop(
    nginx: Nginx, tmp_path: Path, run_agent: Callable[[AgentConfig], Running]
) -> None:
    running = run_agent(uplink_config(tmp_path, nginx.url, archive_interval_s=3600))
    upstream = nginx.root / STATION
    live_path = upstream / "live.m3u8"
    # the live playlist follows each segment (written right after the spool marks it uploaded)
    assert wait_until(
        lambda: live_path.exists() and len(playlist_seqs(live_path.read_text())) >= 4, 30
    )
    live = playlist_seqs(live_path.read_text())
    archive = upstream / running.spool.recording_id / "archive.m3u8"
    archived = playlist_seqs(archive.read_text())
    assert len(live) >= 4 and len(archived) == 1, "the archive waits for its interval"
    spool = running.stop()
    final = archive.read_text()
    assert playlist_seqs(final) == [r.seq for r in spool.segments()]
    assert final.rstrip().endswith("#EXT-X-ENDLIST")


class ArchiveRefusingTarget(FileTarget):
    """A real file:// target whose server refuses archive.m3u8 (as nginx answers 413 once
    the archive outgrows client_max_body_size)."""

    def put(self, name: str, data: bytes, content_type: str, sha256: str | None,
            progress: Progress | None = None) -> None:  # fmt: skip
        if name.endswith("/archive.m3u8"):
            raise RejectedUploadError(413, "PUT archive.m3u8: HTTP 413 Request Entity Too Large")
        super().put(name, data, content_type, sha256, progress)


def test_a_refused_playlist_never_holds_segments_back(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = Spool(tmp_path / "spool", ["http"], 10**9, 0, sink)
    spool.open()
    rung = Rung(320, 240, 15, 300_000)
    for k in range(20):
        data = bytes([k]) * 2_000
        spool.add(
            EncodedSegment(data, "2026-11-23T10:00:00.000Z", k * 90_000, 1.0, rung, 15, "x", k == 0)
        )
    cfg = HttpUplinkConfig(
        url=f"file://{tmp_path / 'up'}", rejected_backoff_s=600, archive_interval_s=0
    )
    target = ArchiveRefusingTarget(cfg.url, STATION)
    uploader = make_uploader(cfg, target, spool, sink)
    uploader.start()
    try:
        assert wait_until(lambda: not spool.pending("http"), timeout_s=30), "segments throttled"
    finally:
        uploader.stop()
    assert "upload_rejected" not in sink.kinds()
    assert sink.kinds().count("playlist_failed") == 1
    assert uploader.publisher.playlist_error is not None
    assert playlist_seqs((tmp_path / "up" / STATION / "live.m3u8").read_text())[-1] == 19


class PlaylistHangingTarget(FileTarget):
    """A real file:// target whose live.m3u8 PUT hangs until released (a server that stops
    reading in the middle of a playlist upload)."""

    def __init__(self, url: str, station_id: str) -> None:
        super().__init__(url, station_id)
        self.hanging, self.release = threading.Event(), threading.Event()

    def put(self, name: str, data: bytes, content_type: str, sha256: str | None,
            progress: Progress | None = None) -> None:  # fmt: skip
        if name == "live.m3u8":
            self.hanging.set()
            self.release.wait(30)
        super().put(name, data, content_type, sha256, progress)


def test_a_hanging_playlist_put_shows_the_uplink_busy_for_the_watchdog(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = Spool(tmp_path / "spool", ["http"], 10**9, 0, sink)
    spool.open()
    rung = Rung(320, 240, 15, 300_000)
    at = "2026-11-23T10:00:00.000Z"
    spool.add(EncodedSegment(b"x" * 2_000, at, 0, 1.0, rung, 15, "x", True))
    cfg = HttpUplinkConfig(url=f"file://{tmp_path / 'up'}")
    target = PlaylistHangingTarget(cfg.url, STATION)
    uploader = make_uploader(cfg, target, spool, sink)
    uploader.start()
    try:
        assert target.hanging.wait(10)
        assert wait_until(lambda: uploader.figures.busy_since_s is not None, timeout_s=5)
    finally:
        target.release.set()
        uploader.stop()
    assert uploader.figures.busy_since_s is None


class LateArchiveTarget(FileTarget):
    """A real file:// target where an earlier archive.m3u8 PUT, held in the network after the
    agent gave up on it, lands right after the final one (seen in bench/chaos.py, seed 2)."""

    def __init__(self, url: str, station_id: str) -> None:
        super().__init__(url, station_id)
        self.held: tuple[str, bytes] | None = None
        self.landed = 0

    def put(self, name: str, data: bytes, content_type: str, sha256: str | None,
            progress: Progress | None = None) -> None:  # fmt: skip
        super().put(name, data, content_type, sha256, progress)
        if not name.endswith("/archive.m3u8"):
            return
        if self.held is None:
            self.held = (name, data)  # the first version, still on its way
        elif data.rstrip().endswith(b"#EXT-X-ENDLIST") and not self.landed:
            self.landed += 1
            super().put(*self.held, content_type, None, None)  # lands after the final one


def test_an_older_archive_landing_after_the_final_one_is_written_again(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = Spool(tmp_path / "spool", ["http"], 10**9, 0, sink)
    spool.open()
    rung = Rung(320, 240, 15, 300_000)
    at = "2026-11-23T10:00:00.000Z"
    cfg = HttpUplinkConfig(url=f"file://{tmp_path / 'up'}", archive_interval_s=0)
    target = LateArchiveTarget(cfg.url, STATION)
    uploader = make_uploader(cfg, target, spool, sink)
    uploader.start()
    try:
        for k in range(6):
            spool.add(
                EncodedSegment(bytes([k]) * 2_000, at, k * 90_000, 1.0, rung, 15, "x", k == 0)
            )
            assert wait_until(lambda: not spool.pending("http"), timeout_s=10)
            assert wait_until(lambda: target.held is not None, timeout_s=10)
    finally:
        uploader.stop()
    assert target.landed == 1, "the older archive landed after the final one"
    assert target.held is not None
    name, older = target.held
    final = (tmp_path / "up" / STATION / name).read_text()
    assert final != older.decode()
    assert playlist_seqs(final) == list(range(6))
    assert final.rstrip().endswith("#EXT-X-ENDLIST")
