"""Wall-clock steps (issue 12): the encoder with its wall clock injected, and the real agent, its
CLOCK_REALTIME stepped by an LD_PRELOAD shim while its monotonic clock and sleeps stay real,
uploading to a real nginx."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent.adapt.ladder import Rung
from agent.capture.capture import Capture
from agent.capture.config import CaptureConfig
from agent.capture.sources import open_source
from agent.core.clock import parse_utc
from agent.core.events import RecordingSink
from agent.encode.config import EncodeConfig
from agent.encode.loop import EncodeLoop
from agent.encode.segmenter import EncodedSegment
from agent.spool.store import Spool, segment_file_name
from tests.peers.agent import AgentProcess, spool_seqs, wait_until
from tests.peers.config import SMALL_CAPTURE, SMALL_RUNG, STATION, agent_config, write_toml
from tests.peers.nginx import Nginx
from tests.peers.wallclock import WallClockShim

HOUR_S = 3600.0
FAST_UPLINK = {"backoff_max_s": 0.5, "timeout_s": 2.0, "archive_interval_s": 0}
SEGMENTS_BETWEEN_STEPS = 3  # 1-s segments: the step lands well inside a run of them
WAIT_S = 30.0


def events(agent: AgentProcess, kind: str) -> list[dict[str, Any]]:
    return [e for e in agent.json_lines() if e.get("type") == "event" and e["kind"] == kind]


def tags_before(playlist: str, seq: int) -> list[str]:
    """The tag lines right before segment `seq`'s URI in a media playlist."""
    lines = playlist.splitlines()
    (at,) = [k for k, line in enumerate(lines) if line.endswith(segment_file_name(seq))]
    tags: list[str] = []
    for line in reversed(lines[:at]):
        if not line.startswith("#"):  # the previous segment's URI
            break
        tags.append(line)
    return tags


def archive_playlist(nginx: Nginx) -> str:
    found = sorted((nginx.root / STATION).rglob("archive.m3u8"), key=lambda p: p.stat().st_mtime)
    assert found, "no archive playlist upstream"
    return found[-1].read_text()


def test_the_segment_after_a_step_starts_a_discontinuity() -> None:
    offset_s = [0.0]
    segments: list[EncodedSegment] = []
    sink = RecordingSink()
    capture_cfg = CaptureConfig(**SMALL_CAPTURE)
    capture = Capture(
        capture_cfg,
        sink,
        source_factory=lambda: open_source(
            capture_cfg.source, capture_cfg.width, capture_cfg.height, capture_cfg.fps
        ),
    )
    rung = Rung(**SMALL_RUNG)
    loop = EncodeLoop(
        STATION,
        EncodeConfig(segment_s=1.0, preset="ultrafast"),
        capture,
        rung,
        on_segment=segments.append,
        sink=sink,
        stale_after_s=capture_cfg.stall_timeout_s,
        choose_rung=lambda _figures: rung,
        wall_clock=lambda: time.time() + offset_s[0],
    )
    capture.start()
    loop.start()
    try:
        assert wait_until(lambda: len(segments) >= 2, WAIT_S)
        at_step = len(segments)
        offset_s[0] = -HOUR_S
        assert wait_until(lambda: len(segments) >= at_step + 3, WAIT_S)
    finally:
        loop.stop()
        capture.stop()
    marked = [k for k, segment in enumerate(segments) if segment.discontinuity]
    # the segment recording when the clock stepped finishes unmarked (unless the step fell
    # between its end and the next start); the next one starts the discontinuity
    assert marked[0] == 0 and len(marked) == 2, marked
    assert at_step <= marked[1] <= at_step + 1, (marked, at_step)
    after, before = segments[marked[1]], segments[marked[1] - 1]
    assert parse_utc(after.started_utc) < parse_utc(before.started_utc) - HOUR_S / 2
    assert sink.kinds() == []  # the event is the service's (ClockWatch), once per step


def test_steps_back_and_forward_are_reported_and_marked(tmp_path: Path, nginx: Nginx) -> None:
    shim = WallClockShim(tmp_path / "shim")
    spool_dir = tmp_path / "spool"
    config = write_toml(
        tmp_path / "station.toml",
        agent_config(tmp_path, uplink={"http": {"url": nginx.url} | FAST_UPLINK}),
    )
    agent = AgentProcess(config, env=shim.env).start()
    try:
        steps_at: list[int] = []  # the newest stored seq when each step happened
        for delta_s in (-HOUR_S, 2 * HOUR_S):
            before = len(spool_seqs(spool_dir))
            assert wait_until(
                lambda before=before: len(spool_seqs(spool_dir)) >= before + SEGMENTS_BETWEEN_STEPS,
                WAIT_S,
            ), agent.stderr()[-2000:]
            steps_at.append(spool_seqs(spool_dir)[-1])
            shim.step(delta_s)
            expected = len(steps_at)
            assert wait_until(lambda n=expected: len(events(agent, "clock_stepped")) >= n, WAIT_S)
        last = spool_seqs(spool_dir)[-1]
        assert wait_until(
            lambda: spool_seqs(spool_dir)[-1] >= last + SEGMENTS_BETWEEN_STEPS, WAIT_S
        )
        assert agent.terminate() == 0, agent.stderr()[-2000:]
    finally:
        agent.kill()

    stepped = events(agent, "clock_stepped")
    assert [round(e["fields"]["step_s"] / HOUR_S) for e in stepped] == [-1, 2]
    for event, delta_s in zip(stepped, (-HOUR_S, 2 * HOUR_S), strict=True):
        assert event["severity"] == "warning"
        assert abs(event["fields"]["step_s"] - delta_s) < 1.0
        moved_s = parse_utc(event["fields"]["to_utc"]) - parse_utc(event["fields"]["from_utc"])
        assert abs(moved_s - delta_s) < 1.0

    spool = Spool.open_read_only(spool_dir)
    records = spool.segments()
    marked = [r.seq for r in records if r.discontinuity]
    # the first segment of the run, then one segment after each step: the one recording when
    # the clock stepped finishes unmarked, the next one (or the one after, if the spool was a
    # segment behind) starts the discontinuity
    assert marked[0] == 0 and len(marked) == 3, marked
    for seq, step_seq in zip(marked[1:], steps_at, strict=True):
        assert step_seq < seq <= step_seq + 3, (marked, steps_at)

    archive = archive_playlist(nginx)
    for seq in marked[1:]:
        tags = tags_before(archive, seq)
        assert "#EXT-X-DISCONTINUITY" in tags, (seq, tags)
        assert any(t.startswith("#EXT-X-PROGRAM-DATE-TIME:") for t in tags), (seq, tags)
    unmarked = [r.seq for r in records if not r.discontinuity]
    assert all("#EXT-X-DISCONTINUITY" not in tags_before(archive, seq) for seq in unmarked)

    # a restart with the clock back at real time is an hour behind what was recorded
    shim.set_offset(0.0)
    agent = AgentProcess(config, env=shim.env).start()
    try:
        assert wait_until(lambda: events(agent, "clock_behind"), WAIT_S), agent.stderr()[-2000:]
        assert agent.terminate() == 0
    finally:
        agent.kill()
    (behind,) = events(agent, "clock_behind")
    assert behind["severity"] == "warning"
    assert abs(behind["fields"]["behind_s"] - HOUR_S) < 5.0
    _, started_again = events(agent, "agent_started")
    stopped, _ = events(agent, "agent_stopping")
    # the restart is stamped before the first run's stop (+1 h then): what clock_behind explains
    assert parse_utc(started_again["at_utc"]) < parse_utc(stopped["at_utc"])

    # the spool keeps segment times monotonic in the index (a start earlier than the previous
    # end is clamped, agent/spool/store.py)
    starts = [parse_utc(r.started_utc) for r in records]
    assert all(b >= a for a, b in zip(starts, starts[1:], strict=False)), "started_utc went back"
