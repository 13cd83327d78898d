"""Frames in, playable segments on disk: judged by the real ffprobe."""

from __future__ import annotations

import collections
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

import agent.encode.loop as loop_module
from agent.adapt.ladder import Rung
from agent.capture.capture import Capture
from agent.capture.config import CaptureConfig
from agent.capture.sources import SourceError
from agent.core.config import Secrets
from agent.core.events import EventFanout, RecordingSink
from agent.service.config import AgentConfig, config_from_dict
from agent.service.pipeline import Pipeline
from agent.spool.store import Spool
from agent.tools.spool_cli import verify_spool
from tests.peers.agent import wait_until
from tests.peers.config import SMALL_RUNG, agent_config
from tests.peers.ffprobe import ffprobe_json

FPS = 15
FRAME_S = 1 / FPS


SMALL = {"width": 160, "height": 120, "fps": 10, "bitrate_bps": 150_000}


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Pipeline, RecordingSink]]:
    two_rungs = {"ladder": [SMALL, SMALL_RUNG], "start_rung": "240p15"}
    pipeline, sink = make_pipeline(config_from_dict(agent_config(tmp_path, adapt=two_rungs)))
    pipeline.start()
    yield pipeline, sink
    if pipeline.encode.alive:
        pipeline.stop()


def make_pipeline(cfg: AgentConfig) -> tuple[Pipeline, RecordingSink]:
    events, sink = EventFanout(), RecordingSink()
    events.subscribe(sink.emit)
    return Pipeline(cfg, Secrets(), events), sink


def stopped_spool(pipeline: Pipeline) -> Spool:
    """The spool of a stopped pipeline, opened again read-only (as `spool ls` does)."""
    return Spool.open_read_only(pipeline.cfg.spool.path)


def segment_files(spool: Spool) -> list[Path]:
    return [spool.segment_dir / r.file_name for r in spool.segments()]


def test_segments_are_playable_h264_with_keyframe_first(
    running: tuple[Pipeline, RecordingSink], tmp_path: Path
) -> None:
    pipeline, _ = running
    assert wait_until(lambda: pipeline.segments_stored >= 4, timeout_s=30)
    pipeline.stop()
    spool = stopped_spool(pipeline)
    records = spool.segments()
    files = segment_files(spool)
    assert len(files) >= 4
    for record, path in zip(records, files, strict=True):
        probe = ffprobe_json(path, show_frames=True)
        (stream,) = probe["streams"]
        assert stream["codec_name"] == "h264"
        assert (stream["width"], stream["height"]) == (320, 240)
        frames = probe["frames"]
        assert frames[0]["key_frame"] == 1 and frames[0]["pict_type"] == "I"
        probed_s = float(frames[-1]["pts_time"]) - float(frames[0]["pts_time"]) + FRAME_S
        assert abs(probed_s - record.duration_s) <= FRAME_S + 1e-6, probed_s
        if record is records[-1]:  # the stop ends the last segment at its next frame
            assert 0 < record.duration_s <= 1.0 + 1e-6
        else:
            assert abs(record.duration_s - 1.0) <= FRAME_S + 1e-6

    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(p.read_bytes() for p in files))
    frames = ffprobe_json(joined, show_frames=True)["frames"]
    pts = [float(f["pts_time"]) for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False)), "timestamps must increase"
    total_s = pts[-1] - pts[0] + FRAME_S
    assert abs(total_s - sum(r.duration_s for r in records)) <= FRAME_S + 1e-6
    with av.open(str(joined)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == len(frames)


def test_rung_change_applies_at_next_boundary_without_gap(
    running: tuple[Pipeline, RecordingSink],
) -> None:
    pipeline, _ = running
    assert wait_until(lambda: pipeline.segments_stored >= 2, timeout_s=30)
    small = Rung(**SMALL)
    assert pipeline.pin_rung("120p10") == small  # what the set_rung command will do
    assert wait_until(
        lambda: any(r.rung == small for r in pipeline.spool.segments()[-1:]), timeout_s=30
    )
    assert wait_until(lambda: pipeline.spool.segments()[-1].seq >= 4, timeout_s=30)
    pipeline.stop()
    spool = stopped_spool(pipeline)
    records = spool.segments()
    assert [r.seq for r in records] == list(range(len(records)))
    sizes = [(r.rung.width, r.rung.height) for r in records]
    switch = sizes.index((160, 120))
    assert switch >= 2 and all(s == (160, 120) for s in sizes[switch:])
    assert records[switch].discontinuity
    starts = []
    for path in segment_files(spool):
        probe = ffprobe_json(path)
        assert (probe["streams"][0]["width"], probe["streams"][0]["height"]) in {
            (320, 240),
            (160, 120),
        }
        starts.append(float(probe["format"]["start_time"]))
    for k in range(1, len(records)):
        expected = starts[k - 1] + records[k - 1].duration_s
        assert abs(starts[k] - expected) <= FRAME_S + 1e-6, (k, starts[k], expected)


def write_video(path: Path, seconds: float, fps: int = 15) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        rng = np.random.default_rng(1)
        for i in range(int(seconds * fps)):
            img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            img[:, (i * 5) % 320 :] //= 2
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_file_source_that_disappears_is_reopened_and_run_goes_on(tmp_path: Path) -> None:
    video = tmp_path / "camera.mp4"
    write_video(video, seconds=1.0)
    cfg = config_from_dict(
        agent_config(
            tmp_path,
            capture={"source": f"file:{video}", "stall_timeout_s": 1, "reconnect_max_s": 1},
        )
    )
    pipeline, sink = make_pipeline(cfg)
    pipeline.start()
    try:
        assert wait_until(lambda: pipeline.capture.frames_in > 5, timeout_s=20)
        hidden = tmp_path / "hidden.mp4"
        shutil.move(video, hidden)
        assert sink.wait_for("camera_lost", timeout_s=20) is not None
        stored_during_outage = pipeline.segments_stored
        assert wait_until(lambda: pipeline.segments_stored >= stored_during_outage + 2, 20)
        status = pipeline.status()["capture"]
        assert status["state"] == "reconnecting" and status["outage_since_utc"] is not None
        shutil.move(hidden, video)
        assert sink.wait_for("camera_restored", timeout_s=20) is not None
        status = pipeline.status()["capture"]
        assert status["outages"] == 1 and status["recent_outages"][0]["end_utc"] is not None
    finally:
        pipeline.stop()
    assert pipeline.encode.alive is False and pipeline.encode.error is None


class FlakyCamera:
    """A real FrameSource that fails to open its first `failures` times, then delivers."""

    description = "flaky camera"

    def __init__(self, state: dict[str, int]) -> None:
        self._state = state

    def open(self) -> None:
        self._state["opens"] += 1
        if self._state["opens"] <= self._state["failures"]:
            raise SourceError(f"device busy (open #{self._state['opens']})")

    def read(self) -> np.ndarray | None:
        return np.zeros((24, 32, 3), np.uint8)

    def close(self) -> None:
        pass


def test_camera_that_errors_n_times_is_reopened_with_one_outage() -> None:
    state = {"opens": 0, "failures": 4}
    sink = RecordingSink()
    capture = Capture(
        CaptureConfig(source="v4l2:/dev/video9", reconnect_max_s=1),
        sink,
        source_factory=lambda: FlakyCamera(state),
        rng=random.Random(7),
    )
    capture.start()
    try:
        assert wait_until(lambda: capture.frames_in > 3, timeout_s=20)
    finally:
        capture.stop()
    assert state["opens"] == 5
    assert sink.kinds().count("camera_lost") == 1
    assert sink.kinds().count("camera_restored") == 1
    outage = capture.outages[0]
    assert outage.end_utc is not None and outage.duration_s is not None
    assert "device busy" in outage.reason


class CountingCamera:
    """Frame k is uniformly grey level k % 200 + 20, delivered as fast as asked."""

    description = "counting camera"

    def __init__(self) -> None:
        self.k = 0

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray | None:
        self.k += 1
        return np.full((48, 64, 3), self.k % 200 + 20, np.uint8)

    def close(self) -> None:
        pass


def test_the_frame_the_encoder_holds_is_never_reused_under_it() -> None:
    """Frame buffers are pooled: the capture may reuse one only once the encoder has moved on
    from it (its next latest()) or it was dropped unread; copies for others are their own."""
    capture = Capture(CaptureConfig(source="test:"), RecordingSink(), CountingCamera)
    capture.start()
    try:
        for _ in range(20):
            assert wait_until(lambda: capture.latest() is not None, 5)
            held = capture.latest()
            assert held is not None
            seen = held.image.copy()
            copy = capture.newest_copy()
            until = capture.frames_in + 8  # the capture goes on delivering meanwhile
            assert wait_until(lambda: capture.frames_in >= until, 5)  # noqa: B023
            assert np.array_equal(held.image, seen), "a held frame was overwritten"
            assert copy is not None and copy.image is not held.image
        assert capture.frames_dropped > 0  # frames were dropped, so their buffers went round
    finally:
        capture.stop()


class DelayedEncoder:
    """A real libx264 encoder whose packets come out 3 frames late, as hardware encoders'
    (QSV async depth, NVENC surfaces, V4L2 M2M buffers) do."""

    has_latency = True
    keeps_frames = True  # a hardware encoder may read a frame after encode() returned

    def __init__(self, inner: Any) -> None:
        self._inner, self._queue = inner, collections.deque[Any]()
        self.name, self.rung = inner.name, inner.rung

    def encode(self, i420: np.ndarray, pts: int, keyframe: bool) -> list[Any]:
        self._queue.extend(self._inner.encode(i420, pts, keyframe))
        out = []
        while len(self._queue) > 3:
            out.append(self._queue.popleft())
        return out

    def flush(self) -> list[Any]:
        out = [*self._queue, *self._inner.flush()]
        self._queue.clear()
        return out


def test_encoder_with_output_latency_keeps_idr_alignment_and_every_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = loop_module.open_video_encoder
    monkeypatch.setattr(
        loop_module, "open_video_encoder", lambda *args: DelayedEncoder(real_open(*args))
    )
    pipeline, _ = make_pipeline(config_from_dict(agent_config(tmp_path)))
    pipeline.start()
    assert wait_until(lambda: pipeline.segments_stored >= 3, timeout_s=30)
    pipeline.stop()
    spool = stopped_spool(pipeline)
    total = 0
    for path in segment_files(spool):
        with av.open(str(path)) as container:
            packets = [p for p in container.demux(video=0) if p.size]
        assert packets[0].is_keyframe, path.name
        assert [p.is_keyframe for p in packets].count(True) == 1, path.name
        total += len(packets)
    assert total == pipeline.encode.frames_out, "every encoded frame is in a segment"


def test_rung_whose_height_is_not_a_multiple_of_4_encodes(tmp_path: Path) -> None:
    # 270p is in the default 16:9 ladder; its chroma planes are 135 rows high
    rung_270 = {"width": 480, "height": 270, "fps": 15, "bitrate_bps": 250_000}
    data = agent_config(
        tmp_path, capture={"width": 640, "height": 360}, adapt={"ladder": [rung_270]}
    )
    pipeline, sink = make_pipeline(config_from_dict(data))
    pipeline.start()
    try:
        assert wait_until(lambda: pipeline.segments_stored >= 2, timeout_s=30), sink.kinds()
    finally:
        pipeline.stop()
    assert "encoder_failed" not in sink.kinds()
    probe = ffprobe_json(segment_files(stopped_spool(pipeline))[0])
    assert (probe["streams"][0]["width"], probe["streams"][0]["height"]) == (480, 270)


def test_a_failing_frame_restarts_the_encoder_and_recording_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, sink = make_pipeline(config_from_dict(agent_config(tmp_path)))
    real_prepare = pipeline.encode._prepare
    calls = {"n": 0}

    def prepare_that_fails_once(*args: Any) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 20:
            raise ValueError("a broken frame")
        return real_prepare(*args)

    monkeypatch.setattr(pipeline.encode, "_prepare", prepare_that_fails_once)
    pipeline.start()
    try:
        assert sink.wait_for("encoder_failed", timeout_s=30) is not None
        stored = pipeline.segments_stored
        assert wait_until(lambda: pipeline.segments_stored >= stored + 2, timeout_s=30)
    finally:
        pipeline.stop()
    assert pipeline.encode.failures == 1
    records = stopped_spool(pipeline).segments()
    assert any(r.discontinuity for r in records[1:]), "the restart is marked in the playlists"
    assert [r.seq for r in records] == list(range(len(records)))


def _index_full(pipeline: Pipeline, full: bool) -> None:
    """Make the spool's SQLite index unable to grow (SQLITE_FULL), or give it room again."""
    with pipeline.spool._lock:
        if full:
            pages = pipeline.spool.db.execute("PRAGMA page_count").fetchone()[0]
            pipeline.spool.db.execute(f"PRAGMA max_page_count = {pages}")
        else:
            pipeline.spool.db.execute("PRAGMA max_page_count = 1073741823")


def test_full_index_is_reported_and_recording_resumes_without_loss(tmp_path: Path) -> None:
    pipeline, sink = make_pipeline(config_from_dict(agent_config(tmp_path)))
    pipeline.start()
    try:
        assert wait_until(lambda: pipeline.segments_stored >= 2, timeout_s=30)
        _index_full(pipeline, True)
        assert sink.wait_for("spool_write_failed", timeout_s=30) is not None
        _index_full(pipeline, False)
        stored = pipeline.segments_stored
        assert wait_until(lambda: pipeline.segments_stored >= stored + 3, timeout_s=40)
    finally:
        pipeline.stop()
    spool = stopped_spool(pipeline)
    records = spool.segments()
    assert [r.seq for r in records] == list(range(len(records))) and spool.lost() == []
    assert verify_spool(tmp_path / "spool", spool) == []
    assert len(records) == pipeline.encode.segments, "every segment was stored"
    # whole seconds but the last, which the stop ended early
    assert all(abs(r.duration_s - 1.0) < 1e-6 for r in records[:-1])
    assert 0 < records[-1].duration_s <= 1.0 + 1e-6


def test_stop_is_bounded_while_the_disk_stays_broken(tmp_path: Path) -> None:
    pipeline, sink = make_pipeline(config_from_dict(agent_config(tmp_path)))
    pipeline.start()
    assert wait_until(lambda: pipeline.segments_stored >= 1, timeout_s=30)
    _index_full(pipeline, True)
    assert sink.wait_for("spool_write_failed", timeout_s=30) is not None
    stopper = threading.Thread(target=pipeline.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=60)  # systemd would SIGKILL after TimeoutStopSec (30 s)
    assert not stopper.is_alive(), "stop() hung on a broken disk"
    dropped = [e for e in sink.events if e.kind == "segment_dropped"]
    assert dropped and all("could not be stored" in e.message for e in dropped)
