"""ArchivePlan: the archive's rewrites paid from a byte budget; time stepped by segment."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.service.config import AgentConfig, config_from_dict
from agent.uplink import archive
from agent.uplink.archive import (
    ARCHIVE_SHARE,
    PART_SEGMENTS,
    WHOLE,
    ArchivePlan,
    part_name,
    part_of,
    part_range,
)
from agent.uplink.playlists import Entry, render_archive
from tests.peers.agent import Running, wait_until
from tests.peers.config import STATION, agent_config
from tests.peers.nginx import Nginx
from tests.test_uplink import playlist_seqs

SEGMENT_BYTES = 49_000  # a 2 s segment at the lowest rung (150 kbit/s), muxed
TIMER_EVERY = 15  # the archive timer: 30 s of 2 s segments


def entries(first: int, last: int) -> list[Entry]:
    return [
        Entry(seq, f"{seq:08d}.ts", 2.0, "2026-11-23T06:00:00.000Z", seq == 0, True)
        for seq in range(first, last + 1)
    ]


def size_of(key: int, newest: int) -> tuple[int, int]:
    """Bytes and entries of a document as the publisher renders it."""
    first, last = (0, newest) if key == WHOLE else part_range(key)
    listed = entries(first, min(last, newest))
    return len(render_archive(listed, ended=False).encode()), len(listed)


def run_day(plan: ArchivePlan, segments: int) -> tuple[dict[int, int], dict[int, int]]:
    """Upload `segments` segments; at every timer tick write what is due. Returns bytes written
    per document and, per document, the most segments it ever lagged behind the newest."""
    spent: dict[int, int] = {}
    lag: dict[int, int] = {}
    last_written: dict[int, int] = {WHOLE: -1}
    for seq in range(segments):
        plan.changed(seq, SEGMENT_BYTES)
        if seq % TIMER_EVERY:
            continue
        for key in plan.due(seq):
            size, count = size_of(key, seq)
            plan.written(key, size, count)
            spent[key] = spent.get(key, 0) + size
            last_written[key] = seq
        for key in (WHOLE, part_of(seq)):
            lag[key] = max(lag.get(key, 0), seq - last_written.get(key, part_range(key)[0]))
    return spent, lag


def test_a_short_recording_is_rewritten_on_every_tick() -> None:
    plan = ArchivePlan()
    plan.changed(0, SEGMENT_BYTES)
    assert plan.due(0) == [part_of(0), WHOLE]  # the part first, the whole last
    size, count = size_of(WHOLE, 0)
    plan.written(WHOLE, size, count)
    plan.written(0, size, count)
    assert plan.due(0) == []  # nothing changed since
    plan.changed(1, SEGMENT_BYTES)
    assert plan.due(1) == [0, WHOLE]  # small documents: the free allowance pays


def test_a_fifteen_hour_day_at_the_lowest_rung_costs_under_half_a_percent() -> None:
    segments = 15 * 3600 // 2
    spent, lag = run_day(ArchivePlan(), segments)
    video = segments * SEGMENT_BYTES
    archive_share = sum(spent.values()) / video
    assert archive_share <= 2 * ARCHIVE_SHARE + 0.0005, archive_share
    # the whole archive re-sent every 30 s would have cost half as much as the video itself
    resent = sum(28 * seq for seq in range(0, segments, TIMER_EVERY))
    assert resent > 0.4 * video and spent[WHOLE] < 0.01 * resent
    # the newest part follows within minutes; the whole lags by a share of the day's length
    # at this rung (its rewrites spaced by its size), and is complete at a clean stop
    newest_part_lag = max(lag[k] for k in lag if k != WHOLE)
    assert newest_part_lag * 2 <= 15 * 60, f"a part lagged {newest_part_lag * 2} s"
    assert lag[WHOLE] <= 0.3 * segments


def test_backfill_marks_the_old_part_and_the_whole() -> None:
    plan = ArchivePlan()
    spent, _ = run_day(plan, 3 * PART_SEGMENTS)
    assert plan.dirty() in ([], [2], [WHOLE], [2, WHOLE])
    for key in plan.due(3 * PART_SEGMENTS - 1):  # settle what the day left
        plan.written(key, *size_of(key, 3 * PART_SEGMENTS - 1))
    plan.changed(5, SEGMENT_BYTES)  # an old segment arrives late: part 0 changes
    assert 0 in plan.dirty() and WHOLE in plan.dirty()
    assert part_name(0) == "archive-0000.m3u8"


def test_a_lost_segment_earns_nothing_but_still_marks_its_part() -> None:
    plan = ArchivePlan()
    plan.changed(7, 0)
    assert plan.dirty() == [0, WHOLE]
    assert plan.due(7) == [0, WHOLE]  # small: the free allowance pays
    assert ArchivePlan(free_bytes=0).due(7) == []  # with nothing earned, nothing is due


def test_parts_and_the_whole_upstream(
    nginx: Nginx,
    tmp_path: Path,
    run_agent: Callable[[AgentConfig], Running],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real pipeline into a real nginx, with parts of 3 segments: every finished part is
    upstream with ENDLIST, and at the clean stop archive.m3u8 lists the whole recording."""
    monkeypatch.setattr(archive, "PART_SEGMENTS", 3)
    http = {"url": nginx.url, "archive_interval_s": 0, "backoff_max_s": 0.5}
    running = run_agent(config_from_dict(agent_config(tmp_path, uplink={"http": http})))
    assert wait_until(lambda: running.pipeline.segments_stored >= 8, timeout_s=40)
    spool = running.stop()
    folder = nginx.root / STATION / spool.recording_id
    seqs = [r.seq for r in spool.segments()]
    whole = (folder / "archive.m3u8").read_text()
    assert playlist_seqs(whole) == seqs and whole.rstrip().endswith("#EXT-X-ENDLIST")
    for part in range(seqs[-1] // 3 + 1):
        text = (folder / part_name(part)).read_text()
        first, last = part * 3, min(part * 3 + 2, seqs[-1])
        assert playlist_seqs(text) == list(range(first, last + 1)), (part, text)
        assert f"#EXT-X-MEDIA-SEQUENCE:{first}" in text
        assert text.rstrip().endswith("#EXT-X-ENDLIST")  # done, or the recording stopped


def test_a_days_archive_is_rendered_a_page_at_a_time() -> None:
    """A 15-hour day (27,000 segments) from a generator: the entries are never all held, so
    the renderer's peak is a few times its text, not the day's entries as objects (~6 MB for
    the entries alone, more for the spool's records, kept as the heap's high-water mark)."""
    day = 27_000
    text = render_archive(iter(entries(0, 99)), ended=False)
    assert text == render_archive(entries(0, 99), ended=False), "a generator renders the same"

    def one_by_one() -> Iterator[Entry]:
        for seq in range(day):
            yield from entries(seq, seq)

    tracemalloc.start()
    try:
        text = render_archive(one_by_one(), ended=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert playlist_seqs(text) == list(range(day))
    assert text.count("#EXT-X-PROGRAM-DATE-TIME:") == day // 30
    assert text.startswith("#EXTM3U\n") and text.endswith("#EXT-X-ENDLIST\n")
    assert peak < 4 * len(text), f"peak {peak / 1e6:.1f} MB for {len(text) / 1e6:.1f} MB of text"
