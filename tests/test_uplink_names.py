"""Issue 12: upstream names never repeat. Every object is under its recording's folder, the
station index lists every recording and never loses one, a replaced box overwrites nothing, and
two boxes recording one station at once both say so. Real agent processes, a real nginx."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from agent.core.events import RecordingSink
from agent.spool.store import Spool
from agent.uplink.recordings import parse_index
from tests.peers.agent import AgentProcess, assert_all_on_server, spool_seqs, wait_until
from tests.peers.config import STATION, agent_config, write_toml
from tests.peers.nginx import Nginx
from tests.test_uplink import playlist_seqs
from tests.test_uplink_faults import file_uploader, filled_spool

FAST = {"backoff_max_s": 0.5, "timeout_s": 2.0, "archive_interval_s": 0}  # index every 2 s


def box(tmp_path: Path, name: str, url: str) -> AgentProcess:
    """An agent process with its own spool (another box) for the one test station."""
    folder = tmp_path / name
    folder.mkdir()
    data = agent_config(folder, uplink={"http": {"url": url} | FAST})
    return AgentProcess(write_toml(folder / "station.toml", data))


def events(agent: AgentProcess, kind: str) -> list[dict[str, Any]]:
    return [e for e in agent.json_lines() if e.get("type") == "event" and e["kind"] == kind]


def index(nginx: Nginx) -> dict[str, Any]:
    return dict(json.loads((nginx.root / STATION / "recordings.json").read_bytes()))


def recording_id(spool_dir: Path) -> str:
    spool = Spool.open_read_only(spool_dir)
    try:
        return spool.recording_id
    finally:
        spool.close()


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its SHA-256 and its modification time (a PUT of the same
    bytes still changes the time)."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_two_boxes_on_one_station_both_report_it(nginx: Nginx, tmp_path: Path) -> None:
    a, b = box(tmp_path, "a", nginx.url), box(tmp_path, "b", nginx.url)
    try:
        a.start()
        b.start()
        assert wait_until(lambda: events(a, "duplicate_station") and events(b, "duplicate_station"),
                          timeout_s=60), (a.stderr()[-1500:], b.stderr()[-1500:])  # fmt: skip
        assert a.terminate() == 0 and b.terminate() == 0
    finally:
        a.kill()
        b.kill()
    ids = {name: recording_id(tmp_path / name / "spool") for name in ("a", "b")}
    (seen_by_a,) = events(a, "duplicate_station")  # once per episode
    (seen_by_b,) = events(b, "duplicate_station")
    assert seen_by_a["severity"] == "error"
    assert seen_by_a["fields"]["other_recording_id"] == ids["b"]
    assert seen_by_b["fields"]["other_recording_id"] == ids["a"]
    assert seen_by_a["fields"]["other_box_id"] == seen_by_b["fields"]["box_id"]
    assert seen_by_a["fields"]["other_box_id"] != seen_by_b["fields"]["other_box_id"]
    listed = {r["recording_id"]: r for r in index(nginx)["recordings"]}
    assert set(listed) == set(ids.values())
    for name in ("a", "b"):  # each recording whole, in its own folder
        spool = Spool.open_read_only(tmp_path / name / "spool")
        assert_all_on_server(spool, nginx.root / STATION)
        assert listed[spool.recording_id]["ended"] is True


def test_a_replaced_box_overwrites_nothing_and_the_index_lists_both(
    nginx: Nginx, tmp_path: Path
) -> None:
    station = nginx.root / STATION
    first = box(tmp_path, "a", nginx.url)
    spool_dir = tmp_path / "a" / "spool"
    first.start()
    assert wait_until(lambda: len(spool_seqs(spool_dir)) >= 3, timeout_s=30)
    assert first.terminate() == 0
    old = Spool.open_read_only(spool_dir)
    old_id, old_records = old.recording_id, old.segments()
    assert_all_on_server(old, station)
    old.close()
    before = snapshot(station / old_id)
    # the box is replaced (or re-imaged): a fresh spool, the same station and config
    shutil.rmtree(spool_dir)
    second = AgentProcess(first.config_path).start()
    assert wait_until(lambda: len(spool_seqs(spool_dir)) >= 3, timeout_s=30)
    assert second.terminate() == 0
    new = Spool.open_read_only(spool_dir)
    assert new.recording_id != old_id
    assert_all_on_server(new, station)
    assert snapshot(station / old_id) == before, "an object of the first recording was replaced"
    archive = (station / old_id / "archive.m3u8").read_text()
    assert playlist_seqs(archive) == [r.seq for r in old_records]
    assert archive.rstrip().endswith("#EXT-X-ENDLIST")
    listed = {r["recording_id"]: r for r in index(nginx)["recordings"]}
    assert set(listed) == {old_id, new.recording_id}
    assert listed[old_id]["ended"] and listed[old_id]["segments"] == len(old_records)
    assert listed[old_id]["archive"] == f"{old_id}/archive.m3u8"
    live = (station / "live.m3u8").read_text()
    assert all(line.startswith(f"{new.recording_id}/") for line in live.splitlines()
               if line.endswith(".ts")), "live.m3u8 follows the current recording"  # fmt: skip
    assert not events(second, "duplicate_station"), "a recording that ended is no duplicate"
    online = [m for m in second.json_lines() if m.get("state") == "online"]
    assert [m["summary"]["recording_id"] for m in online] == [old_id, new.recording_id]


def test_a_malformed_index_is_kept_aside_and_entries_of_others_are_kept(tmp_path: Path) -> None:
    sink = RecordingSink()
    spool = filled_spool(tmp_path / "spool", sink, 3)
    station = tmp_path / "up" / STATION
    station.mkdir(parents=True)
    garbage = b'{"format": 1, "recordings": [{"recording_id": "20261122T070000Z-0ld0ne"'
    (station / "recordings.json").write_bytes(garbage)  # a half-written index
    uploader, _ = file_uploader(tmp_path, spool, sink)
    uploader.start()
    try:
        assert sink.wait_for("station_index_malformed", timeout_s=30) is not None
        assert wait_until(lambda: not spool.pending("http"), timeout_s=30)
    finally:
        uploader.stop()
    (kept,) = station.glob("recordings.json.bad-*")
    assert kept.read_bytes() == garbage, "the unreadable index is kept byte for byte"
    entries, problems = parse_index((station / "recordings.json").read_bytes())
    assert problems == [] and list(entries) == [spool.recording_id]
    assert entries[spool.recording_id].ended and entries[spool.recording_id].segments == 3

    # a readable index with another box's recording: it stays, untouched, beside ours
    other = dict(json.loads((station / "recordings.json").read_bytes())["recordings"][0])
    other |= {"recording_id": "20261122T070000Z-0ld0ne", "box_id": "other-box", "revision": 7}
    document = {"format": 1, "station_id": STATION, "updated_utc": other["updated_utc"],
                "recordings": [other]}  # fmt: skip
    (station / "recordings.json").write_text(json.dumps(document))
    again, _ = file_uploader(tmp_path, spool, sink)
    again.start()
    again.stop()
    entries, problems = parse_index((station / "recordings.json").read_bytes())
    assert problems == [] and set(entries) == {other["recording_id"], spool.recording_id}
    assert entries[other["recording_id"]].as_dict() == other
    assert sink.kinds().count("station_index_malformed") == 1
