"""The spool's manifest chain (agent/spool/chain.py) on a real SQLite file: links, start notes
after clean and unclean stops, losses noted once in ranges, incidents from events, bounds."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from pathlib import Path

import pytest

from agent.core.events import Event, RecordingSink
from agent.core.keys import canonical_json, generate_private_key
from agent.spool.chain import MAX_EVENT_NOTES, MAX_PENDING_NOTES, ManifestChain
from agent.spool.manifest import (
    GENESIS_SHA256,
    Manifest,
    ManifestSigner,
    SegmentFacts,
    read_manifest,
)
from agent.spool.store import SegmentMissing, Spool
from agent.tools.verify import KeyRing, verify_station
from agent.tools.verify_files import FolderStore, read_station_or_recording
from tests.test_spool_recovery import real_segments

KEY = generate_private_key()
TABLES = """
CREATE TABLE IF NOT EXISTS segments (seq INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS lost (seq INTEGER PRIMARY KEY, reason TEXT, cause TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def open_chain(path: Path) -> tuple[ManifestChain, sqlite3.Connection]:
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(TABLES)
    chain = ManifestChain(ManifestSigner(KEY, "AZ-0001", "test"))
    chain.open(db)
    return chain, db


def store(chain: ManifestChain, db: sqlite3.Connection, seq: int) -> bytes:
    data = bytes([seq % 256]) * 100
    facts = SegmentFacts(
        "R1", seq, f"2026-11-23T06:15:{seq:02d}.000Z", 1.0, len(data),
        hashlib.sha256(data).hexdigest(),
    )  # fmt: skip
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO segments (seq) VALUES (?)", (seq,))
    body = chain.append(db, facts)
    db.execute("COMMIT")
    return body


def test_manifests_link_and_the_first_says_a_new_recording(tmp_path: Path) -> None:
    chain, db = open_chain(tmp_path / "index.sqlite")
    bodies = [store(chain, db, seq) for seq in range(3)]
    manifests = [read_manifest(b) for b in bodies]
    assert manifests[0].prev_sha256 == GENESIS_SHA256
    assert [m.prev_sha256 for m in manifests[1:]] == [m.sha256 for m in manifests[:-1]]
    assert [n["kind"] for n in manifests[0].notes] == ["start"]
    assert manifests[0].notes[0]["previous_stop"] == "none"
    assert manifests[1].notes == [] and manifests[2].notes == []
    assert all(m.signed_by(KEY.public_key()) for m in manifests)
    assert ManifestChain.manifest(db, 1) == bodies[1]


def test_a_row_made_out_of_order_is_signed_after_the_head(tmp_path: Path) -> None:
    chain, db = open_chain(tmp_path / "index.sqlite")
    first, third = store(chain, db, 5), store(chain, db, 7)  # 6 is re-indexed later
    late = read_manifest(store(chain, db, 6))
    assert read_manifest(third).prev_sha256 == read_manifest(first).sha256
    assert late.prev_sha256 == read_manifest(third).sha256 and late.seq == 6


def test_the_start_note_tells_a_clean_stop_from_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    chain, db = open_chain(path)
    store(chain, db, 0)
    chain.close(db)
    db.close()
    chain, db = open_chain(path)
    first = read_manifest(store(chain, db, 1))
    assert first.notes[0]["previous_stop"] == "clean"
    assert first.prev_sha256 == read_manifest(ManifestChain.manifest(db, 0) or b"").sha256
    db.close()  # no close(): as after kill -9
    chain, db = open_chain(path)
    assert read_manifest(store(chain, db, 2)).notes[0]["previous_stop"] == "unclean"


def test_signing_that_starts_on_an_old_recording_says_so(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)
    db.executescript(TABLES)
    db.execute("INSERT INTO segments (seq) VALUES (0)")  # recorded without a key
    chain = ManifestChain(ManifestSigner(KEY, "AZ-0001", "test"))
    chain.open(db)
    manifest = read_manifest(store(chain, db, 1))
    assert manifest.prev_sha256 == GENESIS_SHA256
    assert manifest.notes[0]["previous_stop"] == "unknown"


def test_losses_go_into_the_chain_once_as_ranges(tmp_path: Path) -> None:
    chain, db = open_chain(tmp_path / "index.sqlite")
    for seq in range(6):
        store(chain, db, seq)
    reason = "spool full: evicted before upload"
    db.executemany(
        "INSERT INTO lost (seq, reason, cause) VALUES (?, ?, ?)",
        [(1, reason, "evicted"), (2, reason, "evicted"), (4, "gone", "missing")],
    )
    notes = read_manifest(store(chain, db, 6)).notes
    assert notes == [
        {"kind": "lost", "first_seq": 1, "last_seq": 2, "cause": "evicted", "reason": reason},
        {"kind": "lost", "first_seq": 4, "last_seq": 4, "cause": "missing", "reason": "gone"},
    ]  # fmt: skip
    assert read_manifest(store(chain, db, 7)).notes == []


def test_incidents_are_noted_and_bounded(tmp_path: Path) -> None:
    chain, db = open_chain(tmp_path / "index.sqlite")
    store(chain, db, 0)
    chain.note_event(Event("clock_stepped", "warning", "wall clock stepped forward by 7200.0 s"))
    chain.note_event(Event("rung_changed", "info", "720p -> 480p"))  # not part of the record
    chain.note_event(Event("segment_dropped", "critical", "segment 3 lost", {"seq": 3}))
    notes = read_manifest(store(chain, db, 1)).notes
    assert [(n["kind"], n["event"]) for n in notes] == [("event", "clock_stepped")]
    for k in range(MAX_PENDING_NOTES + 10):
        chain.note_event(Event("camera_lost", "error", f"camera lost #{k}"))
    notes = read_manifest(store(chain, db, 2)).notes
    assert len(notes) == MAX_EVENT_NOTES + 1 and notes[-1] == {"kind": "notes_dropped", "count": 10}
    assert notes[0]["message"] == "camera lost #10"  # the oldest were the ones dropped
    left = MAX_PENDING_NOTES - MAX_EVENT_NOTES
    seen = 0
    for seq in range(3, 100):
        seen += len(read_manifest(store(chain, db, seq)).notes)
        if seen >= left:
            break
    assert seen == left


def test_a_failed_transaction_keeps_the_notes_for_the_next_manifest(tmp_path: Path) -> None:
    chain, db = open_chain(tmp_path / "index.sqlite")
    facts = SegmentFacts("R1", 0, "2026-11-23T06:15:00.000Z", 1.0, 1, "00" * 32)
    db.execute("BEGIN IMMEDIATE")
    chain.append(db, facts)
    db.execute("ROLLBACK")  # e.g. the disk was full
    assert ManifestChain.manifest(db, 0) is None
    assert read_manifest(store(chain, db, 0)).notes[0]["kind"] == "start"


def export(spool: Spool, folder: Path) -> Path:
    """What the uploader puts upstream: each stored segment and its manifest."""
    rec = folder / spool.recording_id
    rec.mkdir(parents=True)
    for record in spool.segments():
        manifest = spool.manifest(record.seq)
        if not record.evicted and manifest is not None:
            (rec / record.file_name).write_bytes(spool.read_verified(record.seq))
            (rec / f"{record.seq:08d}.json").write_bytes(manifest)
    return folder


def test_a_spool_signs_its_segments_re_indexed_files_and_losses(tmp_path: Path) -> None:
    def open_signed() -> Spool:
        chain = ManifestChain(ManifestSigner(KEY, "AZ-0001", "test"))
        spool = Spool(tmp_path / "spool", ["http"], 10**9, 0, sink, disk_free=lambda p: 10**12,
                      chain=chain)  # fmt: skip
        spool.open()
        return spool

    sink = RecordingSink()
    segments = real_segments(6)
    spool = open_signed()
    for segment in segments[:2]:
        spool.add(segment)
    spool.close()  # a clean stop
    orphan = tmp_path / "spool" / "segments" / "00000002.ts"
    orphan.write_bytes(segments[2].data)  # then a kill between its rename and its row
    spool = open_signed()
    assert spool.recovery is not None and spool.recovery.reindexed == [2]
    spool.add(segments[3])
    (tmp_path / "spool" / "segments" / "00000003.ts").unlink()  # gone before its upload
    with pytest.raises(SegmentMissing):
        spool.read_verified(3)
    spool.add(segments[4])
    spool.add(segments[5])
    manifests = [read_manifest(spool.manifest(seq) or b"") for seq in range(6)]
    assert [n["previous_stop"] for n in manifests[0].notes] == ["none"]
    assert [n["previous_stop"] for n in manifests[2].notes] == ["clean"]  # the re-indexed one
    assert manifests[2].prev_sha256 == manifests[1].sha256
    assert [n["kind"] for n in manifests[4].notes] == ["lost"]
    upstream = export(spool, tmp_path / "up" / "AZ-0001")
    layout = read_station_or_recording(FolderStore(upstream), "AZ-0001")
    result = verify_station("AZ-0001", layout.recordings, KeyRing({"AZ-0001": KEY.public_key()}))
    assert [v.verdict for v in result.verdicts] == ["OK", "OK", "OK", "LOST", "OK", "OK"]
    assert result.ok
    spool.close()
    spool = Spool.open_read_only(tmp_path / "spool")  # `spool ls` on a running agent's spool
    assert spool.manifest(0) == manifests_bytes(manifests[0])


def manifests_bytes(manifest: Manifest) -> bytes:
    return (
        canonical_json(manifest.fields | {"sig": base64.b64encode(manifest.signature).decode()})
        + b"\n"
    )
