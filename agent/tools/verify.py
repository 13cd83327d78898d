"""Verification of a station's uploaded recordings against its public key. Pure: the files are
handed in (agent/tools/verify_cli.py fetches them from a folder or a URL).

Each segment gets one verdict:
- OK: its manifest is in the agent's exact form, signed with the station's key, for this
  station, recording and sequence number, follows the previous manifest, and the segment's
  size and SHA-256 are the signed ones;
- NOT OK: the segment or its manifest was altered, the manifest does not follow the previous
  one, or it is not signed with the station's key;
- MISSING: a link of the chain is absent (the segment, its manifest or both);
- UNSIGNED: a segment recorded before the station signed anything (no key configured);
- FOREIGN: a manifest of another station or another recording (or signed with another
  station's key) put in this one's place;
- LOST: absent, and the agent itself reported it lost (a later signed manifest says so and
  why): an honest gap, not a failure.

Coverage is computed from the OK segments only: the span from the first to the last signed
segment (or a given window), the seconds covered, and each gap with the agent's own reasons
from the signed notes around it (a restart, a clock step, segments it lost).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.core.clock import parse_utc
from agent.core.keys import fingerprint
from agent.spool.manifest import (
    GENESIS_SHA256,
    NOTE_DROPPED,
    NOTE_EVENT,
    NOTE_LOST,
    NOTE_START,
    PREVIOUS_STOP,
    Manifest,
    ManifestError,
    read_manifest,
)

OK = "OK"
NOT_OK = "NOT OK"
MISSING = "MISSING"
UNSIGNED = "UNSIGNED"
FOREIGN = "FOREIGN"
LOST = "LOST"
FAILING = (NOT_OK, MISSING, UNSIGNED, FOREIGN)  # any of these: the exit status is not 0
# Segments follow each other within a frame or two (the encoder runs at a constant frame rate
# from the monotonic clock); a hole under half a second is timestamp rounding, not a gap.
GAP_TOLERANCE_S = 0.5


@dataclass(frozen=True)
class SegmentFile:
    nbytes: int
    sha256: str


@dataclass
class RecordingFiles:
    """What was found of one recording: manifest files' bytes and segment files' hashes by
    sequence number, and the numbers its archive playlist lists."""

    recording_id: str
    manifests: dict[int, bytes] = field(default_factory=dict)
    segments: dict[int, SegmentFile] = field(default_factory=dict)
    listed: set[int] = field(default_factory=set)


class KeyRing:
    """Public keys by station id. `anonymous` is a key given without a station (`--key`): the
    station is then the one its manifests name."""

    def __init__(
        self,
        keys: Mapping[str, Ed25519PublicKey],
        anonymous: Ed25519PublicKey | None = None,
    ) -> None:
        self.keys = dict(keys)
        self.anonymous = anonymous
        self._stations_by_fingerprint = {fingerprint(k): s for s, k in self.keys.items()}

    def key_for(self, station_id: str) -> Ed25519PublicKey | None:
        return self.keys.get(station_id, self.anonymous)

    def station_of(self, key_fingerprint: str) -> str | None:
        return self._stations_by_fingerprint.get(key_fingerprint)


@dataclass(frozen=True)
class SegmentVerdict:
    recording_id: str
    seq: int
    verdict: str
    reason: str
    started_utc: str | None = None  # from its manifest, when the manifest could be read
    duration_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "recording_id": self.recording_id,
            "seq": self.seq,
            "verdict": self.verdict,
            "reason": self.reason,
            "started_utc": self.started_utc,
            "duration_s": self.duration_s,
        }


@dataclass(frozen=True)
class Gap:
    start_s: float  # Unix seconds
    end_s: float
    reasons: tuple[str, ...]  # the agent's own, from its signed notes; may be empty
    detail: str  # what the verifier saw there

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s


@dataclass
class RecordingResult:
    recording_id: str
    verdicts: list[SegmentVerdict]
    trusted: dict[int, Manifest]  # manifests signed by this station for this recording

    @cached_property
    def signed_seqs(self) -> list[int]:
        return sorted(self.trusted)

    @cached_property
    def verdict_seqs(self) -> list[int]:
        return [v.seq for v in self.verdicts]  # verdicts are in seq order


@dataclass
class StationResult:
    station_id: str
    key_fingerprint: str | None
    recordings: list[RecordingResult]
    first_s: float | None
    last_s: float | None
    covered_s: float
    gaps: list[Gap]

    @property
    def verdicts(self) -> list[SegmentVerdict]:
        return [v for r in self.recordings for v in r.verdicts]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((OK, NOT_OK, MISSING, UNSIGNED, FOREIGN, LOST), 0)
        for verdict in self.verdicts:
            counts[verdict.verdict] += 1
        return counts

    @property
    def ok(self) -> bool:
        """Exit status 0: something was found, and everything present verifies."""
        counts = self.counts()
        return counts[OK] > 0 and not any(counts[v] for v in FAILING)

    @property
    def missing_s(self) -> float:
        return sum(gap.seconds for gap in self.gaps)

    @property
    def span_s(self) -> float:
        return 0.0 if self.first_s is None or self.last_s is None else self.last_s - self.first_s

    @property
    def coverage(self) -> float:
        return self.covered_s / self.span_s if self.span_s > 0 else 0.0

    @property
    def longest_gap(self) -> Gap | None:
        return max(self.gaps, key=lambda g: g.seconds, default=None)


# --- one recording ---------------------------------------------------------------------------


def verify_recording(station_id: str, files: RecordingFiles, keys: KeyRing) -> RecordingResult:
    """A verdict for every segment the files, the playlist or the signed chain name."""
    key = keys.key_for(station_id)
    parsed: dict[int, Manifest | str] = {}
    for seq, data in files.manifests.items():
        try:
            parsed[seq] = read_manifest(data)
        except ManifestError as exc:
            parsed[seq] = f"manifest {exc}"
    problems: dict[int, tuple[str, str]] = {}  # seq -> (verdict, reason) before the chain
    trusted: dict[int, Manifest] = {}
    for seq, item in parsed.items():
        if isinstance(item, str):
            problems[seq] = (NOT_OK, item)
            continue
        problem = _judge(item, seq, station_id, files.recording_id, key, keys)
        if problem is None:
            trusted[seq] = item
        else:
            problems[seq] = problem
    for seq in _forks(trusted):
        problems[seq] = (NOT_OK, "signed after the same manifest as another one (a fork)")
    lost = _reported_losses(trusted.values())
    # before the first signed segment: UNSIGNED when the box said signing began there
    unsigned_before = _signing_began(trusted) if parsed else 2**62
    expected = set(files.manifests) | set(files.segments) | files.listed
    if trusted:  # every seq up to the last signed one
        expected |= set(range(min(unsigned_before, max(trusted)), max(trusted) + 1))
    verdicts = []
    for seq in sorted(expected):
        verdict, reason = _verdict(seq, files, problems, trusted, lost, unsigned_before)
        found = parsed.get(seq)
        timed = found if isinstance(found, Manifest) and verdict != FOREIGN else None
        verdicts.append(
            SegmentVerdict(
                files.recording_id, seq, verdict, reason,
                timed.started_utc if timed else None, timed.duration_s if timed else None,
            )
        )  # fmt: skip
    trusted = {seq: m for seq, m in trusted.items() if seq not in problems}
    return RecordingResult(files.recording_id, verdicts, trusted)


def _judge(
    manifest: Manifest,
    seq: int,
    station_id: str,
    recording_id: str,
    key: Ed25519PublicKey | None,
    keys: KeyRing,
) -> tuple[str, str] | None:
    """Why this manifest cannot be trusted here (verdict, reason), or None."""
    if manifest.station_id != station_id:
        return FOREIGN, f"manifest of station {manifest.station_id[:24]}"
    other = keys.station_of(manifest.key_fingerprint)
    if other is not None and other != station_id:
        return FOREIGN, f"signed with station {other[:24]}'s key"
    if manifest.recording_id != recording_id:
        return FOREIGN, f"from recording {manifest.recording_id[:40]}"
    if key is None:
        return NOT_OK, f"no public key for station {station_id[:24]}"
    if not manifest.signed_by(key):
        return NOT_OK, f"signature does not verify with {station_id[:24]}'s key"
    if manifest.seq != seq:
        return NOT_OK, f"manifest of segment {manifest.seq} in place of {seq}"
    return None


def _forks(trusted: dict[int, Manifest]) -> list[int]:
    """Manifests linked to a manifest another (lower) one is already linked to. Each
    manifest names the one signed before it, so the links form one line; a fork means the box
    signed two histories (e.g. an index restored from a backup)."""
    first: dict[str, int] = {}
    forks = []
    for seq in sorted(trusted):
        prev = trusted[seq].prev_sha256
        if prev in first:
            forks.append(seq)
        else:
            first[prev] = seq
    return forks


def _signing_began(trusted: dict[int, Manifest]) -> int:
    """The seq where the box began signing a recording it had started without a key (its
    first manifest's start note says so); 0 when it signed from the start."""
    for seq in sorted(trusted):
        manifest = trusted[seq]
        if manifest.prev_sha256 == GENESIS_SHA256:
            starts = [n for n in manifest.notes if n.get("kind") == NOTE_START]
            if any(n.get("previous_stop") == "unknown" for n in starts):
                return seq
            return 0
    return 0


def _reported_losses(manifests: Iterable[Manifest]) -> dict[int, str]:
    """seq -> the agent's reason, from the `lost` notes of signed manifests."""
    lost: dict[int, str] = {}
    for manifest in manifests:
        for note in manifest.notes:
            if note.get("kind") != NOTE_LOST:
                continue
            first, last = note.get("first_seq"), note.get("last_seq")
            if not (isinstance(first, int) and isinstance(last, int)):
                continue
            reason = str(note.get("reason", "reported lost"))
            for seq in range(max(first, 0), min(last, manifest.seq) + 1):  # only earlier ones
                lost.setdefault(seq, reason)
    return lost


def _verdict(
    seq: int,
    files: RecordingFiles,
    problems: dict[int, tuple[str, str]],
    trusted: dict[int, Manifest],
    lost: dict[int, str],
    unsigned_before: int,
) -> tuple[str, str]:
    segment = files.segments.get(seq)
    if seq in problems:
        return problems[seq]
    manifest = trusted.get(seq)
    if manifest is not None:
        if segment is None:
            if seq in lost:
                return LOST, f"lost: {lost[seq]}"
            return MISSING, "segment absent (its manifest is here)"
        if segment.nbytes != manifest.nbytes:
            return NOT_OK, f"segment has {segment.nbytes} bytes, signed {manifest.nbytes}"
        if segment.sha256 != manifest.segment_sha256:
            return NOT_OK, "segment's SHA-256 differs from the signed one"
        return OK, ""
    if seq in lost:
        return LOST, f"lost: {lost[seq]}"
    if seq < unsigned_before:
        if segment is not None:
            return UNSIGNED, "recorded without a station key: no manifest"
        return MISSING, "listed in the playlist, absent"
    if segment is not None:
        return MISSING, "manifest absent"
    return MISSING, "segment and manifest absent"


# --- a station -------------------------------------------------------------------------------


def station_of(recordings: list[RecordingFiles], keys: KeyRing) -> str | None:
    """With an anonymous key: the station named by the first manifest signed with it."""
    if keys.anonymous is None:
        return None
    for files in recordings:
        for seq in sorted(files.manifests):
            try:
                manifest = read_manifest(files.manifests[seq])
            except ManifestError:
                continue
            if manifest.signed_by(keys.anonymous):
                return manifest.station_id
    return None


def verify_station(
    station_id: str,
    recordings: list[RecordingFiles],
    keys: KeyRing,
    window: tuple[float, float] | None = None,
) -> StationResult:
    """Every recording of one station, and the station's coverage over its span: from the
    first to the last signed segment, or `window` (Unix seconds) when given."""
    results = [verify_recording(station_id, files, keys) for files in recordings]
    key = keys.key_for(station_id)
    pieces = _pieces(results)
    first_s: float | None
    last_s: float | None
    if window is not None:
        first_s, last_s = window
    elif pieces:
        first_s, last_s = min(p.start_s for p in pieces), max(p.end_s for p in pieces)
    else:
        first_s = last_s = None
    covered_s, gaps = _coverage(pieces, first_s, last_s, {r.recording_id: r for r in results})
    return StationResult(
        station_id, None if key is None else fingerprint(key), results, first_s, last_s,
        covered_s, gaps,
    )  # fmt: skip


@dataclass(frozen=True)
class _Piece:
    """A signed segment on the timeline: OK ones cover time; the others (segment gone or
    altered) still mark the span's ends."""

    recording_id: str
    seq: int
    start_s: float
    end_s: float
    ok: bool


def _pieces(results: list[RecordingResult]) -> list[_Piece]:
    pieces = []
    for result in results:
        ok = {v.seq for v in result.verdicts if v.verdict == OK}
        for seq, manifest in result.trusted.items():
            try:
                start_s = parse_utc(manifest.started_utc)
            except ValueError:
                continue
            end_s = start_s + manifest.duration_s
            pieces.append(_Piece(result.recording_id, seq, start_s, end_s, seq in ok))
    return sorted(pieces, key=lambda p: (p.start_s, p.recording_id, p.seq))


def _coverage(
    pieces: list[_Piece],
    first_s: float | None,
    last_s: float | None,
    results: dict[str, RecordingResult],
) -> tuple[float, list[Gap]]:
    """Seconds covered by OK segments inside [first_s, last_s], and the holes in it."""
    if first_s is None or last_s is None or last_s <= first_s:
        return 0.0, []
    gaps: list[Gap] = []
    reached_s, previous = first_s, None  # covered up to here, by `previous`
    for piece in (p for p in pieces if p.ok):
        if piece.start_s - reached_s > GAP_TOLERANCE_S and piece.start_s > first_s:
            end_s = min(piece.start_s, last_s)
            if end_s > reached_s:
                gaps.append(_gap(reached_s, end_s, previous, piece, results))
        if piece.end_s > reached_s:
            reached_s, previous = piece.end_s, piece
    if last_s - reached_s > GAP_TOLERANCE_S:
        gaps.append(_gap(reached_s, last_s, previous, None, results))
    covered_s = (last_s - first_s) - sum(g.seconds for g in gaps)
    return max(0.0, covered_s), gaps


def _gap(
    start_s: float,
    end_s: float,
    before: _Piece | None,
    after: _Piece | None,
    results: dict[str, RecordingResult],
) -> Gap:
    """A hole between two OK segments. Its reasons: the agent's notes in the signed manifests
    after `before` up to and including `after`; its detail: the verdicts in between."""
    spans: list[tuple[str, int, int]] = []  # (recording, first seq, last seq) looked into
    if before is not None and after is not None and before.recording_id == after.recording_id:
        spans.append((after.recording_id, before.seq + 1, after.seq))
    else:
        if before is not None:
            spans.append((before.recording_id, before.seq + 1, 2**62))
        if after is not None:
            spans.append((after.recording_id, -1, after.seq))
    notes: list[str] = []
    seen: dict[str, int] = {}
    for recording_id, low, high in spans:
        result = results[recording_id]
        for seq in result.signed_seqs[bisect_left(result.signed_seqs, low) :]:
            if seq > high:
                break
            notes += [describe_note(n) for n in result.trusted[seq].notes]
        seqs = result.verdict_seqs
        for verdict in result.verdicts[bisect_left(seqs, low) : bisect_left(seqs, high)]:
            seen[verdict.verdict] = seen.get(verdict.verdict, 0) + 1
    if before is None:
        where = "before the first verified segment"
    elif after is None:
        where = "after the last verified segment"
    elif before.recording_id != after.recording_id:
        where = "between two recordings"
    else:
        where = ""
    counted = ", ".join(f"{n} {v}" for v, n in seen.items() if v != OK)
    detail = "; ".join(part for part in (where, counted) if part)
    return Gap(start_s, end_s, tuple(_dedupe(notes)), detail)


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


def describe_note(note: Mapping[str, Any]) -> str:
    """One line for a person from a signed note."""
    kind = note.get("kind")
    if kind == NOTE_START:
        return PREVIOUS_STOP.get(str(note.get("previous_stop")), "the agent started")
    if kind == NOTE_LOST:
        first, last = note.get("first_seq"), note.get("last_seq")
        which = f"segment {first}" if first == last else f"segments {first}-{last}"
        return f"{which} lost: {note.get('reason', '')}"
    if kind == NOTE_EVENT:
        return f"{note.get('event', 'event')}: {note.get('message', '')}"
    if kind == NOTE_DROPPED:
        return f"{note.get('count', '?')} more note(s) did not fit in the chain"
    return ""
