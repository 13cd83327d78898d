"""A truly full disk never jams the spool: on a real small file system (a tmpfs mounted in a
private mount namespace, so nothing outside the test sees it) the spool stores segment after
segment with the free-space floor at 0, the link down and then back, and every segment deleted
before an upload has its `lost` row.

The store-and-evict loop runs in a child process inside the namespace: this module is also
that child (`python -m tests.test_spool_full_disk DIR SCENARIO SEED`), printing one JSON line.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.adapt.ladder import Rung
from agent.core.clock import utc_iso
from agent.core.events import RecordingSink
from agent.encode.segmenter import EncodedSegment
from agent.spool.store import Spool, SpoolError

RUNG = Rung(1280, 720, 30, 1_500_000)
SEGMENTS = 60  # 60 segments of 300-900 kB: 36 MB through a disk of 8-17 MB
LINK_DOWN_UNTIL = 35  # the uplink is down for the first 35 segments (~21 MB), then uploads resume
T0_S = 1_795_000_000.0
TMPFS_SIZES_MB = (8, 9, 11, 12, 13, 15, 17)


def run_child(folder: Path, scenario: str, seed: int) -> dict[str, Any]:
    """The loop the parent runs inside the small file system."""
    sink = RecordingSink(max_events=100_000)
    uplinks = [] if scenario == "no-uplink" else ["http"]
    min_free = 10**15 if scenario == "floor-over-disk" else 0
    spool = Spool(folder / "spool", uplinks, 10**12, min_free, sink)
    spool.open()
    rng = random.Random(seed)
    failed_adds: list[str] = []
    failed_marks: list[str] = []
    for k in range(SEGMENTS):
        data = rng.randbytes(rng.randint(300_000, 900_000))
        segment = EncodedSegment(
            data, utc_iso(T0_S + 2 * k), k * 180_000, 2.0, RUNG, 60, "x", k == 0
        )
        try:
            spool.add(segment)
        except (OSError, sqlite3.Error, SpoolError) as exc:
            failed_adds.append(f"segment {k}: {exc}")
        if uplinks and k >= LINK_DOWN_UNTIL:
            for record in spool.pending("http", newest_first=True, limit=2):
                try:
                    spool.read_verified(record.seq)
                    spool.mark_uploaded(record.seq, "http")
                except (OSError, sqlite3.Error, SpoolError) as exc:
                    failed_marks.append(f"seq {record.seq}: {exc}")
    db = spool.db
    unrecorded = [
        seq
        for (seq,) in db.execute(
            "SELECT seq FROM segments s WHERE evicted = 1"
            " AND (SELECT COUNT(*) FROM uploads u WHERE u.seq = s.seq) < ?"
            " AND seq NOT IN (SELECT seq FROM lost)",
            (len(uplinks),),
        )
    ]
    on_disk = {int(p.stem) for p in spool.segment_dir.glob("*.ts")}
    indexed = {r.seq for r in spool.segments() if not r.evicted}
    result = {
        "stored": len(spool.segments()),
        "failed_adds": failed_adds,
        "failed_marks": failed_marks,
        "last_adds_ok": not any(f.startswith(f"segment {SEGMENTS - 1}:") for f in failed_adds),
        "unrecorded_deletions": unrecorded,
        "lost": len(spool.lost()),
        "dropped_events": sink.kinds().count("segment_dropped"),
        "kinds": sorted(set(sink.kinds())),
        "files_without_rows": sorted(on_disk - indexed),
        "rows_without_files": sorted(indexed - on_disk),
        "kept_on_disk": len(indexed),
        "floor": spool.room.floor_bytes,
    }
    spool.close()
    return result


def in_small_tmpfs(tmp_path: Path, size_mb: int, scenario: str, seed: int) -> dict[str, Any]:
    mount = tmp_path / f"fs{size_mb}"
    mount.mkdir()
    script = (
        'mount -t tmpfs -o "size=$1m" tmpfs "$2"'
        ' && exec "$3" -m tests.test_spool_full_disk "$2" "$4" "$5"'
    )
    child = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(size_mb), str(mount),  # noqa: S607
         sys.executable, scenario, str(seed)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    assert not any(mount.iterdir()), "the tmpfs leaked out of its mount namespace"
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def namespaces_allowed(tmp_path_factory: pytest.TempPathFactory) -> None:
    probe = tmp_path_factory.mktemp("probe")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot mount a private small file system")
    tried = subprocess.run(
        ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1"', "sh", str(probe)],  # noqa: S607
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if tried.returncode != 0:
        pytest.skip(f"a private tmpfs mount is refused here: {tried.stderr.strip()}")


@pytest.mark.parametrize("size_mb", TMPFS_SIZES_MB)
@pytest.mark.parametrize("scenario", ["uplink", "no-uplink"])
def test_a_full_disk_never_jams_and_every_deletion_is_on_record(
    namespaces_allowed: None, tmp_path: Path, size_mb: int, scenario: str
) -> None:
    result = in_small_tmpfs(tmp_path, size_mb, scenario, seed=size_mb)
    assert result["failed_adds"] == [], "a segment could be neither stored nor reported"
    assert result["failed_marks"] == [], "an upload could not be recorded on the full disk"
    assert result["stored"] == SEGMENTS and result["last_adds_ok"]
    assert result["unrecorded_deletions"] == [], "a segment left the disk with no lost row"
    assert result["dropped_events"] == result["lost"] > 0  # the disk did fill: losses were said
    assert result["files_without_rows"] == [] and result["rows_without_files"] == []
    assert result["kept_on_disk"] >= 2


def test_a_floor_larger_than_the_disk_is_reported_and_recording_goes_on(
    namespaces_allowed: None, tmp_path: Path
) -> None:
    result = in_small_tmpfs(tmp_path, 12, "floor-over-disk", seed=1)
    assert "config_problem" in result["kinds"]
    assert result["floor"] < 12 * 2**20
    assert result["failed_adds"] == [] and result["stored"] == SEGMENTS
    assert result["kept_on_disk"] >= 2, "the floor deleted every segment at each write"
    assert result["unrecorded_deletions"] == []


if __name__ == "__main__":
    folder, scenario, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    print(json.dumps(run_child(folder, scenario, seed)))  # noqa: T201 - the parent reads it
