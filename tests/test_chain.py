"""The spool's manifest chain (agent/spool/chain.py) on a real SQLite file: links, start notes
after clean and unclean stops, losses noted once in ranges, incidents from events, bounds."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from agent.core.events import Event
from agent.core.keys import generate_private_key
from agent.spool.chain import MAX_EVENT_NOTES, MAX_PENDING_NOTES, ManifestChain
from agent.spool.manifest import GENESIS_SHA256, ManifestSigner, SegmentFacts, read_manifest

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
    chain.committed()
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
