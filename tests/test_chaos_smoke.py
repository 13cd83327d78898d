"""The chaos bench (bench/chaos.py) keeps working: its machinery on a tiny schedule against the
real agent, nginx and mosquitto, and its reconciliation on hand-made evidence (so its two
figures that must be 0 can be seen to fail).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench.chaos import BoxPlan, Chaos, Kill, Step
from bench.chaos_ledger import Put
from bench.chaos_reconcile import (
    Evidence,
    IndexCopy,
    Lost,
    Row,
    RunEnd,
    ServerState,
    reconcile,
)

PREFIX = "/ingest/S-1/"


def test_tiny_schedule_loses_nothing_unreported_and_overwrites_nothing(tmp_path: Path) -> None:
    steps = [
        Step(0.0, "start_box", BoxPlan("box-1")),
        Step(4.0, "refuse_segment"),  # a 413 on one segment a few seconds ahead
        Step(8.0, "kill", Kill("boundary", down_s=0.5)),
        Step(14.0, "link_down"),
        Step(20.0, "kill", Kill("random", ("damage_files",), down_s=0.5)),
        Step(24.0, "link_up"),
        Step(28.0, "lift_refusal"),
        Step(40.0, "end_box"),
    ]
    with Chaos(tmp_path, seed=3) as chaos:
        chaos.run(steps)
        evidence = chaos.evidence()
    result = reconcile(evidence)
    assert [run.how.split()[0] for run in evidence.runs] == ["kill", "kill", "clean"]
    assert result.total.recorded > 0 and result.total.uploaded > 0
    assert result.unreported == [], result.unreported
    assert result.overwritten == [] and result.cross_box == []


# -- the reconciliation on hand-made evidence ------------------------------------------------


def _sha(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


def _row(rec: str, seq: int, uploaded: bool = True) -> Row:
    start = f"2026-11-23T06:00:{seq:02d}.000Z"
    return Row(rec, seq, _sha(f"segment {seq}"), 100, start, 1.0, False, uploaded, False, False, "")


def _put(name: str, data: str, box: str = "box-1") -> Put:
    return Put(PREFIX + name, _sha(data), len(data), 201, box, 0.0)


def _evidence(
    copies: list[IndexCopy], objects: dict[str, str], puts: list[Put] | None = None
) -> Evidence:
    archives = {
        rec: frozenset(name.split("/")[1] for name in objects if name.startswith(rec))
        for rec in {c.recording_id for c in copies}
    }
    return Evidence(
        copies=copies,
        held=frozenset(),
        server=ServerState(objects, archives, frozenset(c.recording_id for c in copies)),
        events=[],
        puts=puts or [],
        runs=[RunEnd("box-1", 2, "kill -9")],
        station_prefix=PREFIX,
    )


def test_a_segment_of_a_lost_index_upstream_under_a_later_recording_is_not_lost() -> None:
    old = IndexCopy("box-1", "kept", "R1", (_row("R1", 0), _row("R1", 1, uploaded=False)), ())
    new = IndexCopy("box-1", "end", "R2", (_row("R2", 0), _row("R2", 1)), ())
    objects = {"R1/00000000.ts": _sha("segment 0"), "R2/00000000.ts": _sha("segment 0"),
               "R2/00000001.ts": _sha("segment 1")}  # fmt: skip
    result = reconcile(_evidence([old, new], objects))
    assert (result.total.recorded, result.total.uploaded) == (2, 2)
    assert result.total.uploaded_later == 1
    assert result.unreported == [] and result.ok


def test_a_segment_nowhere_and_not_reported_is_unreported_loss() -> None:
    copy = IndexCopy(
        "box-1", "end", "R1", (_row("R1", 0), _row("R1", 1), _row("R1", 2)),
        (Lost("R1", 2, "evicted for room", "evicted"),),
    )  # fmt: skip
    result = reconcile(_evidence([copy], {"R1/00000000.ts": _sha("segment 0")}))
    assert result.unreported == ["R1/00000001"]
    assert result.total.lost == 1
    assert not result.ok


def test_a_second_put_with_other_bytes_is_an_overwrite_and_a_retry_is_not() -> None:
    copy = IndexCopy("box-1", "end", "R1", (_row("R1", 0),), ())
    objects = {"R1/00000000.ts": _sha("segment 0")}
    puts = [
        _put("R1/00000000.ts", "segment 0"),
        _put("R1/00000000.ts", "segment 0"),  # a retry after a kill: the same bytes
        _put("R1/00000001.ts", "one thing"),
        _put("R1/00000001.ts", "another"),
        _put("R1/archive.m3u8", "#EXTM3U\n00000000.ts\n", box="box-2"),  # another box's
    ]
    result = reconcile(_evidence([copy], objects, puts))
    assert result.same_bytes_retries == 1
    assert result.overwritten == ["R1/00000001.ts"]
    assert result.cross_box == ["R1/archive.m3u8 by box-2"]
    assert not result.ok
