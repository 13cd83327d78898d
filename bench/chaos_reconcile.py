"""The chaos bench's reconciliation: what the boxes recorded, what the server holds, what the
agent said it lost. Pure: it takes what bench/chaos_boxes.py read (index copies, the server's
files, the MQTT events, the ledger's PUTs) and returns figures; `render` prints them.

A segment is known by its bytes (SHA-256): after a lost index the same file is re-indexed into
a new recording and uploaded again under that recording's name, and it is still one segment the
camera recorded once. Each segment ends up in exactly one of:

    uploaded     an object upstream has its bytes (under its own name, or a later recording's)
    lost         the agent reported it: a `lost` row in an index, or a segment_dropped event
    held         not uploaded yet, still whole in the spool of a box (its file checked)
    UNREPORTED   none of these: the camera's seconds are gone and nobody was told (must be 0)

An upstream object is overwritten when a name is PUT again with other bytes (segments and
manifests never change once written), or when a box writes into another box's recording.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.chaos_ledger import Put

GAP_MIN_S = 0.5  # segments that touch within this are continuous (frame timing, rounding)
STEP_MATCH_S = 5.0  # a clock_stepped event explains a gap when its times are this close
# {station}/{recording}/{seq:08d}.ts or .json (a signed manifest): written once, never again
IMMUTABLE = re.compile(r"^(?P<rec>[^/]+)/(?P<seq>\d{8})\.(?P<ext>ts|json)$")
ARCHIVE = re.compile(r"^(?P<rec>[^/]+)/archive\.m3u8$")
INDEX_NAME = "recordings.json"


@dataclass(frozen=True)
class Row:
    """A segment row of a spool index."""

    recording_id: str
    seq: int
    sha256: str
    nbytes: int
    started_utc: str
    duration_s: float
    evicted: bool
    uploaded: bool
    discontinuity: bool
    recovered: bool
    note: str

    @property
    def start_s(self) -> float:
        return _utc_s(self.started_utc)

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True)
class Lost:
    recording_id: str
    seq: int
    reason: str
    cause: str


@dataclass(frozen=True)
class IndexCopy:
    """One spool index as the bench read it: a copy kept before the bench damaged or replaced
    it, or a box's index at the end."""

    box: str
    label: str
    recording_id: str
    rows: tuple[Row, ...]
    lost: tuple[Lost, ...]


@dataclass(frozen=True)
class RunEnd:
    """How one run of a box's agent ended, and the highest segment number its spool then held
    (files included: a file renamed just before a kill is re-indexed by the next run)."""

    box: str
    last_seq: int
    how: str


@dataclass(frozen=True)
class ServerState:
    objects: dict[str, str]  # name under the station folder -> SHA-256
    archives: dict[str, frozenset[str]]  # recording id -> file names its archive.m3u8 lists
    index_ids: frozenset[str]  # recording ids in the final recordings.json


@dataclass(frozen=True)
class Evidence:
    """Everything the bench collected, for `reconcile`."""

    copies: Sequence[IndexCopy]  # oldest first
    held: frozenset[tuple[str, int]]  # (recording, seq) whole in a spool, not uploaded
    server: ServerState
    events: Sequence[dict[str, Any]]  # each with the "box" it came from
    puts: Sequence[Put]
    runs: Sequence[RunEnd]
    station_prefix: str  # request path of the station folder: "/ingest/CHAOS-0001/"
    # the offsets each box's wall clock had (a clock shim): a re-indexed segment's start comes
    # from its file's time, which the kernel stamps unshifted
    clock_offsets_s: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass
class RecordingLine:
    recording_id: str
    box: str
    recorded: int = 0
    seconds: float = 0.0
    uploaded: int = 0  # byte-identical upstream
    uploaded_later: int = 0  # of them, only under a later recording (re-indexed)
    lost: int = 0
    lost_s: float = 0.0
    held: int = 0
    unreported: int = 0
    not_in_archive: int = 0


@dataclass(frozen=True)
class Gap:
    recording_id: str
    after_seq: int
    before_seq: int
    gap_s: float
    missing_s: float  # the gap less any clock step that explains it
    reasons: tuple[str, ...]


@dataclass
class Reconciliation:
    lines: list[RecordingLine]
    unstored_dropped: int  # segments dropped before they had a row (reported, no bytes)
    unreported: list[str]  # "recording/seq" of each unreported loss
    overwritten: list[str]  # object names PUT again with other bytes
    cross_box: list[str]  # PUTs into a recording of another box
    same_bytes_retries: int
    incomplete_puts: int  # bodies cut off (kills, resets): never reached nginx
    segment_puts: int
    manifests: int  # signed manifests upstream (issue 14), counted apart
    index_entries_dropped: list[str]  # a recordings.json PUT that lost an entry seen before
    archive_regressions: list[str]  # an archive.m3u8 PUT listing less than an earlier one
    recordings_not_in_index: list[str]
    lost_rows_without_event: list[str]
    gaps: list[Gap] = field(default_factory=list)

    @property
    def total(self) -> RecordingLine:
        total = RecordingLine("total", "")
        for line in self.lines:
            for name in ("recorded", "seconds", "uploaded", "uploaded_later", "lost", "lost_s",
                         "held", "unreported", "not_in_archive"):  # fmt: skip
                setattr(total, name, getattr(total, name) + getattr(line, name))
        return total

    @property
    def ok(self) -> bool:
        return not self.unreported and not self.overwritten and not self.cross_box


def reconcile(evidence: Evidence) -> Reconciliation:
    rows, owner = _merge_rows(evidence.copies)
    lost_keys = {(x.recording_id, x.seq): x for c in evidence.copies for x in c.lost}
    event_keys, box_keys, unstored = _loss_events(evidence.events)
    on_server = _server_segments(evidence.server)
    first_place: dict[str, tuple[str, int]] = {}  # sha -> where the segment first appeared
    places: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for key, row in rows.items():  # in the order the recordings first appeared
        first_place.setdefault(row.sha256, key)
        places[row.sha256].append(key)
    lines = {rec: RecordingLine(rec, box) for rec, box in owner.items()}
    unreported = []
    for sha, (rec, seq) in first_place.items():
        row, line = rows[(rec, seq)], lines[rec]
        line.recorded += 1
        line.seconds += row.duration_s
        keys = places[sha]
        if sha in on_server:
            line.uploaded += 1
            if f"{rec}/{seq:08d}.ts" not in on_server[sha]:
                line.uploaded_later += 1  # only as a re-indexed copy in a later recording
            if not _listed(on_server[sha], evidence.server.archives):
                line.not_in_archive += 1
        elif any(k in lost_keys or k in event_keys or (owner[k[0]], k[1]) in box_keys
                 for k in keys):  # fmt: skip
            line.lost += 1
            line.lost_s += row.duration_s
        elif any(k in evidence.held for k in keys):
            line.held += 1
        else:
            line.unreported += 1
            unreported.append(f"{rec}/{seq:08d}")
    puts = _judge_puts(evidence, owner)
    return Reconciliation(
        lines=list(lines.values()),
        unstored_dropped=unstored,
        unreported=unreported,
        lost_rows_without_event=[
            f"{rec}/{seq:08d}"
            for (rec, seq) in lost_keys
            if (rec, seq) not in event_keys and (owner.get(rec, ""), seq) not in box_keys
        ],
        recordings_not_in_index=[
            rec
            for rec in owner
            if _uploaded_any(rec, evidence.server.objects) and rec not in evidence.server.index_ids
        ],  # fmt: skip
        gaps=_gaps(rows, owner, first_place, lost_keys, on_server, evidence),
        **puts,
    )


# -- the parts -----------------------------------------------------------------------------


def _merge_rows(
    copies: Sequence[IndexCopy],
) -> tuple[dict[tuple[str, int], Row], dict[str, str]]:
    """Every row of every copy, a later copy's row replacing an earlier one; and which box
    each recording belongs to, in the order the recordings first appeared."""
    rows: dict[tuple[str, int], Row] = {}
    owner: dict[str, str] = {}
    for copy in copies:
        owner.setdefault(copy.recording_id, copy.box)
        for row in copy.rows:
            rows[(row.recording_id, row.seq)] = row
    order = {rec: k for k, rec in enumerate(owner)}
    ordered = sorted(rows.items(), key=lambda item: (order[item[0][0]], item[0][1]))
    return dict(ordered), owner


def _loss_events(
    events: Iterable[dict[str, Any]],
) -> tuple[set[tuple[str, int]], set[tuple[str, int]], int]:
    """segment_dropped events: (recording, seq) when they name the recording, (box, seq)
    otherwise; and how many were dropped before they had a row (no seq)."""
    by_recording: set[tuple[str, int]] = set()
    by_box: set[tuple[str, int]] = set()
    unstored = 0
    for event in events:
        if event.get("kind") != "segment_dropped":
            continue
        fields = event.get("fields") or {}
        seq = fields.get("seq")
        if not isinstance(seq, int):
            unstored += 1
        elif fields.get("recording_id"):
            by_recording.add((str(fields["recording_id"]), seq))
        else:
            by_box.add((str(event["box"]), seq))
    return by_recording, by_box, unstored


def _server_segments(server: ServerState) -> dict[str, set[str]]:
    """SHA-256 -> the segment objects upstream with those bytes."""
    found: dict[str, set[str]] = defaultdict(set)
    for name, sha in server.objects.items():
        match = IMMUTABLE.match(name)
        if match and match["ext"] == "ts":
            found[sha].add(name)
    return found


def _listed(names: set[str], archives: dict[str, frozenset[str]]) -> bool:
    """Whether an archive playlist lists one of these objects (its recording's archive)."""
    for name in names:
        rec, _, file = name.partition("/")
        if file in archives.get(rec, frozenset()):
            return True
    return False


def _uploaded_any(rec: str, objects: dict[str, str]) -> bool:
    return any(name.startswith(f"{rec}/") and name.endswith(".ts") for name in objects)


def _judge_puts(evidence: Evidence, owner: dict[str, str]) -> dict[str, Any]:
    """Overwrites, writes into another box's recording, and the station index's entries."""
    first: dict[str, str] = {}  # immutable name -> the bytes first stored there
    overwritten: set[str] = set()
    cross_box: set[str] = set()
    retries = incomplete = segment_puts = 0
    index_seen: set[str] = set()
    dropped: list[str] = []
    archive_seen: dict[str, tuple[frozenset[str], bool]] = {}
    regressions: list[str] = []
    for put in evidence.puts:
        if put.sha256 is None:
            incomplete += 1
            continue
        if not put.stored or not put.path.startswith(evidence.station_prefix):
            continue
        name = put.path.removeprefix(evidence.station_prefix)
        immutable = IMMUTABLE.match(name)
        archive = ARCHIVE.match(name)
        rec = immutable["rec"] if immutable else archive["rec"] if archive else None
        if rec is not None and rec in owner and owner[rec] != put.box:
            cross_box.add(f"{name} by {put.box}")
        if immutable:
            segment_puts += immutable["ext"] == "ts"
            if name not in first:
                first[name] = put.sha256
            elif first[name] == put.sha256:
                retries += 1
            else:
                overwritten.add(name)
        elif name == INDEX_NAME and put.body is not None:
            ids = _index_ids(put.body)
            dropped += [f"{rec} (by {put.box})" for rec in sorted(index_seen - ids)]
            index_seen |= ids
        elif archive and put.body is not None:
            listed, ended = archive_entries(put.body.decode(errors="replace"))
            before, was_ended = archive_seen.get(name, (frozenset(), False))
            if not before <= listed or (was_ended and not ended):
                lost = len(before - listed)
                regressions.append(f"{name}: {lost} entries{' and ENDLIST' * was_ended} gone")
            archive_seen[name] = (before | listed, was_ended or ended)
    manifests = sum(
        1 for n in evidence.server.objects if n.endswith(".json") and IMMUTABLE.match(n)
    )
    return {
        "overwritten": sorted(overwritten),
        "cross_box": sorted(cross_box),
        "same_bytes_retries": retries,
        "incomplete_puts": incomplete,
        "segment_puts": segment_puts,
        "manifests": manifests,
        "index_entries_dropped": dropped,
        "archive_regressions": regressions,
    }


def archive_entries(text: str) -> tuple[frozenset[str], bool]:
    """The segments an archive playlist lists as available (not EXT-X-GAP), and whether it
    has ENDLIST."""
    listed = set()
    gap = False
    for line in (raw.strip() for raw in text.splitlines()):
        if line == "#EXT-X-GAP":
            gap = True
        elif line and not line.startswith("#"):
            if not gap:
                listed.add(line)
            gap = False
    return frozenset(listed), "#EXT-X-ENDLIST" in text


def _index_ids(body: bytes) -> set[str]:
    try:
        document = json.loads(body)
        return {str(e["recording_id"]) for e in document["recordings"]}
    except (ValueError, KeyError, TypeError):
        return set()


def _gaps(
    rows: dict[tuple[str, int], Row],
    owner: dict[str, str],
    first_place: dict[str, tuple[str, int]],
    lost: dict[tuple[str, int], Lost],
    on_server: dict[str, set[str]],
    evidence: Evidence,
) -> list[Gap]:
    """Holes in each recording's uploaded timeline (what a viewer of its archive sees), with
    the agent's reasons (lost rows, clock_stepped, re-indexed, clamped starts) and the bench's
    (the kill or stop that ended a run there). A hole between two segments re-indexed from an
    earlier recording was counted there already."""
    steps = [e for e in evidence.events if e.get("kind") == "clock_stepped"]
    gaps: list[Gap] = []
    for rec, box in owner.items():
        timeline = sorted((r for (rr, _), r in rows.items() if rr == rec), key=lambda r: r.seq)
        up = [r for r in timeline if f"{rec}/{r.seq:08d}.ts" in on_server.get(r.sha256, set())]
        for a, b in zip(up, up[1:], strict=False):
            if first_place[a.sha256][0] != rec and first_place[b.sha256][0] != rec:
                continue
            between = [r for r in timeline if a.seq < r.seq < b.seq]
            gap_s = b.start_s - a.end_s
            if not between and gap_s < GAP_MIN_S:
                continue
            reasons = _row_reasons(between, lost, on_server, evidence.held)
            reasons += [
                f"bench: {run.how}"
                for run in evidence.runs
                if run.box == box and a.seq <= run.last_seq < b.seq
            ]
            step_s = 0.0
            for event in steps:
                if event["box"] == box and _step_near(event, b.start_s):
                    step_s += float(event["fields"]["step_s"])
                    reasons.append(f"agent: clock_stepped {event['fields']['step_s']:+.0f} s")
            if b.recovered:
                reasons.append("agent: re-indexed at start (its row was never written)")
            elif b.discontinuity:
                reasons.append("agent: a discontinuity (a new run, or the clock stepped)")
            if "clamped" in b.note:
                reasons.append("agent: start clamped (the wall clock behind the index)")
            shim_s = _shim_offset(a, b, gap_s, evidence.clock_offsets_s.get(box, ()))
            if shim_s:
                reasons.append(f"bench: a re-indexed start is its file's time, which the "
                               f"clock shim does not shift ({shim_s:+.0f} s)")  # fmt: skip
            missing_s = max(0.0, gap_s - max(0.0, step_s) - shim_s)
            gaps.append(Gap(rec, a.seq, b.seq, gap_s, missing_s, tuple(reasons) or ("none",)))
    return gaps


def _row_reasons(
    between: list[Row],
    lost: dict[tuple[str, int], Lost],
    on_server: dict[str, set[str]],
    held: frozenset[tuple[str, int]],
) -> list[str]:
    """What became of the segments a viewer misses in a gap, counted by fate."""
    fates: dict[tuple[str, str], int] = defaultdict(int)  # (whose word, what) -> segments
    for row in between:
        key = (row.recording_id, row.seq)
        if row.sha256 in on_server:
            fates[("agent: ", "re-indexed into a later recording, uploaded there")] += 1
        elif key in lost:
            fates[("agent: ", f"lost ({lost[key].cause}: {lost[key].reason[:60]})")] += 1
        elif key in held:
            fates[("", "held in the spool")] += 1
        else:
            fates[("", "UNREPORTED")] += 1
    return [f"{who}{n} segment(s) {what}" for (who, what), n in fates.items()]


def _shim_offset(a: Row, b: Row, gap_s: float, offsets_s: tuple[float, ...]) -> float:
    """The shim's offset that explains a gap between a re-indexed and a recorded segment
    (0.0: none does). On a real box the kernel and the agent share one clock."""
    if a.recovered == b.recovered:
        return 0.0
    near = [o for o in offsets_s if o and abs(gap_s - o) <= STEP_MATCH_S * 12]
    return min(near, key=lambda o: abs(gap_s - o), default=0.0)


def _step_near(event: dict[str, Any], start_s: float) -> bool:
    """Whether the step landed where the segment after the gap starts (a step forward opens
    a gap; a step back is clamped in the index and opens none)."""
    fields = event.get("fields") or {}
    try:
        return abs(_utc_s(fields["to_utc"]) - start_s) <= STEP_MATCH_S
    except (KeyError, ValueError):
        return False


def _utc_s(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- the table -----------------------------------------------------------------------------


def render(result: Reconciliation, max_gaps: int = 40) -> str:
    head = (f"{'recording':<26} {'box':<6} {'recorded':>8} {'seconds':>8} "
            f"{'uploaded=':>9} {'(later)':>7} {'lost':>5} {'held':>5} {'UNREPORTED':>10} "
            f"{'!archive':>8}")  # fmt: skip
    out = [head, "-" * len(head)]
    for line in [*result.lines, result.total]:
        if line.recording_id == "total":
            out.append("-" * len(head))
        out.append(
            f"{line.recording_id:<26} {line.box:<6} {line.recorded:>8} {line.seconds:>8.1f} "
            f"{line.uploaded:>9} {line.uploaded_later:>7} {line.lost:>5} {line.held:>5} "
            f"{line.unreported:>10} {line.not_in_archive:>8}"
        )
    total = result.total
    out += [
        "",
        f"segments recorded                 {total.recorded} ({total.seconds:.1f} s), "
        f"plus {result.unstored_dropped} dropped before storing (reported)",
        f"uploaded byte-identical           {total.uploaded} "
        f"({total.uploaded_later} only under a later recording after a lost index)",
        f"reported lost                     {total.lost} ({total.lost_s:.1f} s) + "
        f"{result.unstored_dropped} unstored",
        f"held in a spool, not uploaded     {total.held}",
        f"UNREPORTED LOST                   {total.unreported}"
        + (f"  {result.unreported[:10]}" if result.unreported else ""),
        f"upstream objects overwritten      {len(result.overwritten) + len(result.cross_box)}"
        + (f"  {(result.overwritten + result.cross_box)[:10]}" if not result.ok else ""),
        f"segment PUTs {result.segment_puts}: {result.same_bytes_retries} same-bytes retries, "
        f"{result.incomplete_puts} bodies cut off (never stored); manifests upstream "
        f"{result.manifests}",
        f"station index: entries dropped {len(result.index_entries_dropped)}"
        f"{' ' + str(result.index_entries_dropped[:5]) if result.index_entries_dropped else ''}"
        f", recordings missing from recordings.json {result.recordings_not_in_index}",
        f"archive.m3u8 rewrites that went backwards (a stale PUT landing late): "
        f"{len(result.archive_regressions)} {result.archive_regressions[:5] or ''}",
        f"lost rows never sent as segment_dropped: {len(result.lost_rows_without_event)} "
        f"{result.lost_rows_without_event[:10] if result.lost_rows_without_event else ''}",
    ]
    out += ["", *render_gaps(result.gaps, max_gaps)]
    return "\n".join(out)


def render_gaps(gaps: list[Gap], max_gaps: int) -> list[str]:
    if not gaps:
        return ["gaps in the uploaded timelines: none"]
    missing_s = sum(g.missing_s for g in gaps)
    out = [f"gaps in the uploaded timelines: {len(gaps)}, {missing_s:.1f} s of video missing "
           f"(clock steps not counted)",
           f"  {'recording':<26} {'seqs':>11} {'gap s':>8} {'missing':>8}  reasons"]  # fmt: skip
    for gap in gaps[:max_gaps]:
        seqs = f"{gap.after_seq}..{gap.before_seq}"
        out.append(
            f"  {gap.recording_id:<26} {seqs:>11} {gap.gap_s:>8.1f} {gap.missing_s:>8.1f}  "
            + "; ".join(gap.reasons)
        )
    if len(gaps) > max_gaps:
        out.append(f"  ... {len(gaps) - max_gaps} more")
    return out
