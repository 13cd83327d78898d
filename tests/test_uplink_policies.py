"""The uploader's pure policies, time stepped by hand: the per-segment schedule (issue 12: the
live edge never waits for one bad segment) and the station index (names that never repeat, an
index that never drops an entry, two boxes on one station seen)."""

from __future__ import annotations

import json
import random

from hypothesis import given
from hypothesis import strategies as st

from agent.core.clock import utc_iso
from agent.uplink.recordings import (
    RecordingEntry,
    StationRecordings,
    parse_index,
    render_index,
)
from agent.uplink.schedule import Refusal, UploadSchedule

NOW_WALL_S = 1_800_000_000.0


def schedule(**overrides: float) -> UploadSchedule:
    options = {
        "backoff_max_s": 2.0,
        "rejected_backoff_s": 60.0,
        "refused_max_attempts": 3,
        "set_aside_retry_s": 600.0,
    } | overrides
    return UploadSchedule(
        backoff_max_s=options["backoff_max_s"],
        rejected_backoff_s=options["rejected_backoff_s"],
        refused_max_attempts=int(options["refused_max_attempts"]),
        set_aside_retry_s=options["set_aside_retry_s"],
        rng=random.Random(1),
    )


# -- the schedule -------------------------------------------------------------------------


def test_a_refused_segment_waits_alone_and_is_set_aside_after_n_refusals() -> None:
    plan = schedule()
    now_s = 0.0
    outcomes = []
    for seq in (10, 11, 12):
        assert plan.succeeded(seq) is None  # the live edge keeps going up
        outcomes.append(plan.refused(5, now_s, 413, "HTTP 413"))
        assert 5 in plan.waiting(now_s) and plan.link_ready_at_s <= now_s, "only 5 waits"
        if len(outcomes) < 3:
            now_s += 61.0
            assert 5 not in plan.waiting(now_s)
    assert outcomes == [Refusal.SEGMENT, Refusal.SEGMENT, Refusal.SET_ASIDE]
    assert list(plan.set_aside) == [5] and plan.set_aside[5].status == 413
    assert 5 in plan.waiting(now_s + 599.0) and 5 not in plan.waiting(now_s + 601.0)
    assert plan.refused(5, now_s + 601.0, 413, "HTTP 413") is Refusal.SEGMENT  # not again
    assert plan.succeeded(5) is not None and not plan.set_aside


def test_refusals_of_every_segment_hold_the_link_and_blame_none() -> None:
    plan = schedule()
    now_s = 0.0
    for seq in range(20):  # a wrong credential: every segment refused, none accepted
        now_s = max(now_s, plan.link_ready_at_s)
        plan.refused(seq, now_s, 401, "HTTP 401")
    assert plan.rejected and not plan.set_aside
    assert 30.0 <= plan.link_ready_at_s - now_s <= 60.0
    plan.wake()  # the technician fixed the token
    assert plan.link_ready_at_s == 0.0 and plan.waiting(now_s) == set()
    plan.succeeded(19)
    assert not plan.rejected and plan.consecutive_failures == 0


def test_a_failing_segment_waits_on_its_own_timer_and_the_link_briefly() -> None:
    plan = schedule()
    plan.failed(3, 100.0)
    assert 3 in plan.waiting(100.0) or plan.next_due_s() == 100.0
    assert plan.link_ready_at_s - 100.0 <= 2.0
    plan.failed(4, 101.0, retry_after_s=30.0)
    assert plan.link_ready_at_s == 131.0, "Retry-After holds the link"
    plan.forget_due(200.0)  # nothing was picked although both were due: they are gone
    assert plan.next_due_s() is None


@given(
    st.lists(
        st.tuples(st.sampled_from(["ok", "fail", "refuse"]), st.integers(0, 5), st.floats(0, 5)),
        max_size=60,
    )
)
def test_waits_stay_within_their_bounds(steps: list[tuple[str, int, float]]) -> None:
    plan = schedule(backoff_max_s=2.0, rejected_backoff_s=60.0, set_aside_retry_s=600.0)
    now_s = 0.0
    for outcome, seq, dt_s in steps:
        now_s += dt_s
        if outcome == "ok":
            plan.succeeded(seq)
            assert seq not in plan.waiting(now_s) and seq not in plan.set_aside
        elif outcome == "fail":
            plan.failed(seq, now_s)
        else:
            plan.refused(seq, now_s, 413, "refused")
        assert plan.link_ready_at_s - now_s <= 60.0
        due_s = plan.next_due_s()
        assert due_s is None or due_s - now_s <= 600.0


@given(st.lists(st.integers(0, 1000), min_size=2, max_size=50))
def test_a_server_refusing_everything_sets_nothing_aside(seqs: list[int]) -> None:
    plan = schedule(refused_max_attempts=1)
    for k, seq in enumerate(seqs):
        plan.refused(seq, float(k), 403, "HTTP 403")
    distinct_in_a_row = any(a != b for a, b in zip(seqs, seqs[1:], strict=False))
    if distinct_in_a_row:
        assert plan.rejected
        assert set(plan.set_aside) <= {seqs[0]}, "only the first could be blamed"


# -- the station index --------------------------------------------------------------------


def entry(recording_id: str, box_id: str, revision: int, **changes: object) -> RecordingEntry:
    fields: dict[str, object] = {
        "recording_id": recording_id,
        "box_id": box_id,
        "started_utc": "2026-11-23T06:15:02.000Z",
        "updated_utc": utc_iso(NOW_WALL_S),
        "ended": False,
        "revision": revision,
        "first_seq": 0,
        "last_seq": revision,
        "segments": revision + 1,
        "lost_segments": 0,
        "archive": f"{recording_id}/archive.m3u8",
    } | changes
    return RecordingEntry(**fields)  # type: ignore[arg-type]


def test_index_round_trip_and_unreadable_entries_reported() -> None:
    a, b = entry("20261123T061502Z-aaaaaa", "box-a", 3), entry("20261123T071502Z-bbbbbb", "b", 1)
    data = render_index("AZ-0001", utc_iso(NOW_WALL_S), [b, a])
    entries, problems = parse_index(data)
    assert problems == [] and entries == {a.recording_id: a, b.recording_id: b}
    document = json.loads(data)
    assert [r["recording_id"] for r in document["recordings"]] == [a.recording_id, b.recording_id]
    document["recordings"].append({"recording_id": "x", "segments": "many"})
    entries, problems = parse_index(json.dumps(document).encode())
    assert set(entries) == {a.recording_id, b.recording_id} and len(problems) == 1
    assert parse_index(b"<html>502 Bad Gateway</html>")[1]
    assert parse_index(b'{"format": 2, "recordings": []}')[1]


def test_merge_keeps_every_entry_ever_seen_and_the_newest_version() -> None:
    mine = StationRecordings("mine", "box-m", interval_s=30.0)
    old, new = entry("other", "box-o", 4), entry("other", "box-o", 5, ended=True)
    mine.merge({"other": new}, now_s=0.0, now_wall_s=NOW_WALL_S)
    mine.merge({"other": old}, now_s=1.0, now_wall_s=NOW_WALL_S)  # a writer put an older copy
    mine.merge({}, now_s=2.0, now_wall_s=NOW_WALL_S)  # ... or dropped it
    assert mine.entries == {"other": new}
    own = entry("mine", "box-m", mine.next_revision())
    assert {e.recording_id for e in mine.document(own)} == {"other", "mine"}
    mine.merge({"mine": entry("mine", "box-m", 9)}, now_s=3.0, now_wall_s=NOW_WALL_S)
    assert mine.next_revision() == 10, "a restarted agent goes on from its entry's revision"


def test_a_live_other_recording_is_a_duplicate_once_per_episode() -> None:
    mine = StationRecordings("mine", "box-m", interval_s=10.0)  # live window 30 s
    long_ago = utc_iso(NOW_WALL_S - 3600)
    # another box's entry, last written an hour ago by our clock: not live at first sight
    mine.merge({"o": entry("o", "box-o", 1, updated_utc=long_ago)}, 0.0, NOW_WALL_S)
    assert mine.new_duplicates(0.0) == []
    mine.merge({"o": entry("o", "box-o", 2, updated_utc=long_ago)}, 10.0, NOW_WALL_S)
    assert [e.recording_id for e in mine.new_duplicates(10.0)] == ["o"], "it is changing"
    mine.merge({"o": entry("o", "box-o", 3)}, 20.0, NOW_WALL_S)
    assert mine.new_duplicates(20.0) == [], "reported once per episode"
    assert mine.new_duplicates(51.0) == [], "unchanged for 3 intervals: the episode ended"
    mine.merge({"o": entry("o", "box-o", 4)}, 60.0, NOW_WALL_S)
    assert [e.recording_id for e in mine.new_duplicates(60.0)] == ["o"], "a new episode"
    mine.merge({"o": entry("o", "box-o", 5, ended=True)}, 70.0, NOW_WALL_S)
    assert mine.live_others(70.0) == []


def test_a_fresh_entry_of_another_box_is_live_at_first_sight_but_not_our_own_box() -> None:
    mine = StationRecordings("mine", "box-m", interval_s=10.0)
    fresh = {"o": entry("o", "box-o", 1), "old-spool": entry("old-spool", "box-m", 7)}
    mine.merge(fresh, 0.0, NOW_WALL_S)
    assert [e.recording_id for e in mine.new_duplicates(0.0)] == ["o"]
