"""`station-agent spool ls|verify`: look into a spool (also while the agent runs)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
from pathlib import Path

from agent.spool.store import (
    GENESIS_SHA256,
    SEGMENT_DIR,
    SegmentRecord,
    Spool,
    SpoolError,
    segment_file_name,
)
from agent.tools.terminal import wrap


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    spool = subparsers.add_parser("spool", help="list or verify the segment spool")
    actions = spool.add_subparsers(dest="spool_action", required=True)
    ls = actions.add_parser("ls", help="one row per segment with every indexed field")
    ls.add_argument("--spool", type=Path, required=True, help="spool directory")
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    ls.set_defaults(func=_ls)
    verify = actions.add_parser("verify", help="check sizes, SHA-256 and the hash chain")
    verify.add_argument("--spool", type=Path, required=True, help="spool directory")
    verify.add_argument("--json", action="store_true", help="print one JSON object instead")
    verify.set_defaults(func=_verify)


def _open_read_only(path: Path) -> Spool | None:
    try:
        return Spool.open_read_only(path)
    except SpoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _ls(args: argparse.Namespace) -> int:
    spool = _open_read_only(args.spool)
    if spool is None:
        return 2
    try:
        records = spool.segments()
        lost = {seq: reason for seq, reason, _ in spool.lost()}
    except (sqlite3.Error, SpoolError) as exc:
        print(f"error: cannot read the spool index: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for record in records:
            row = record.as_dict() | {
                "object_name": record.object_name,
                "lost": lost.get(record.seq),
            }
            print(json.dumps(row))
        return 0
    print(f"recording {spool.recording_id or '-'} (objects upstream: <recording>/<seq>.ts)")
    print(
        f"{'seq':>8} {'started (UTC)':24} {'dur s':>6} {'bytes':>9} {'rung':>14} "
        f"{'sha256':12} {'prev':12} {'state':10} {'uploaded_to':12} note"
    )
    for r in records:
        state = "lost" if r.seq in lost else ("evicted" if r.evicted else "on disk")
        print(
            f"{r.seq:>8} {r.started_utc:24} {r.duration_s:>6.3f} {r.nbytes:>9} "
            f"{r.rung.name:>14} {r.sha256[:12]:12} {r.prev_sha256[:12]} {state:10} "
            f"{','.join(r.uploaded_to) or '-':12} {r.note}"
        )
    return 0


def verify_spool(path: Path, spool: Spool) -> list[str]:
    """Every problem found, one line each; an empty list means the spool is sound.

    Each row links to the row before it. Segment files re-indexed at start are inserted into
    the chain where their sequence number puts them (a background re-index may place them
    under a segment recorded meanwhile), so a row after a run of re-indexed rows may instead
    link to the row before that run (or to the genesis) or to any row of the run (the ones the
    background re-index had already written when that segment was stored)."""
    problems: list[str] = []
    records = spool.segments()
    lost = {seq for seq, _, _ in spool.lost()}
    previous: SegmentRecord | None = None
    before_reentry = GENESIS_SHA256  # the chain as it stood before a run of re-indexed rows
    reentry: set[str] = set()  # the hashes of the current run of re-indexed rows
    for record in records:
        problems += _check_file(path, record)
        expected = {previous.sha256 if previous else GENESIS_SHA256}
        if previous is not None and previous.recovered:
            expected |= {before_reentry, *reentry}
        if previous is not None and record.seq != previous.seq + 1:
            holes = set(range(previous.seq + 1, record.seq)) - lost
            if holes:
                problems.append(
                    f"segments {min(holes)}..{max(holes)} are missing from the index "
                    "and not reported as lost"
                )
            expected = set()  # the chain cannot be checked across a hole
        if expected and record.prev_sha256 not in expected:
            problems.append(
                f"segment {record.seq}: hash chain broken (prev_sha256 "
                f"{record.prev_sha256[:12]} != {previous.sha256[:12] if previous else 'genesis'}"
                f" of segment {previous.seq if previous else 'genesis'})"
            )
        if record.recovered:
            reentry.add(record.sha256)
        else:
            before_reentry = record.sha256
            reentry = set()
        previous = record
    indexed = {r.seq for r in records if not r.evicted}
    for entry in sorted((path / SEGMENT_DIR).glob("*")):
        stem = entry.name.split(".")[0]
        if entry.name.endswith(".tmp") or not stem.isdigit() or int(stem) not in indexed:
            problems.append(f"{entry.name}: file on disk is not in the index (leftover)")
    return problems


def _check_file(path: Path, record: SegmentRecord) -> list[str]:
    if record.evicted:
        return []
    file = path / SEGMENT_DIR / segment_file_name(record.seq)
    try:
        data = file.read_bytes()
    except OSError as exc:
        return [f"segment {record.seq}: file {file.name} unreadable: {exc.strerror or exc}"]
    if len(data) != record.nbytes:
        return [f"segment {record.seq}: size {len(data)} != indexed {record.nbytes}"]
    if hashlib.sha256(data).hexdigest() != record.sha256:
        return [f"segment {record.seq}: SHA-256 does not match the index (corrupted)"]
    return []


def _verify(args: argparse.Namespace) -> int:
    """Exit 0 sound, 1 a problem found, 2 the spool cannot be read."""
    spool = _open_read_only(args.spool)
    if spool is None:
        return 2
    try:
        problems = verify_spool(args.spool, spool)
        count = len(spool.segments())
        lost = len(spool.lost())
    except (sqlite3.Error, SpoolError) as exc:
        print(f"error: cannot read the spool index: {exc}", file=sys.stderr)
        return 2
    if args.json:
        report = {
            "ok": not problems,
            "spool": str(args.spool),
            "recording_id": spool.recording_id,
            "segments": count,
            "lost": lost,
            "problems": problems,
        }
        print(json.dumps(report, indent=2))
        return 1 if problems else 0
    for problem in problems:
        print(wrap(f"FAIL {problem}", indent=5))
    if problems:
        print(f"{len(problems)} problem(s) in {count} indexed segment(s)")
        return 1
    print(
        wrap(
            f"OK recording {spool.recording_id or '-'}: {count} segment(s), hash chain intact, "
            f"{lost} reported lost",
            indent=3,
        )
    )
    return 0
