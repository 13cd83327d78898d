"""The station index, `{station_id}/recordings.json`: every recording of the station, as the
agents that made them last described them. Pure: parsing, merging, rendering, and telling whether
another box records the same station right now; the I/O is in agent/uplink/publisher.py.

    {"format": 1, "station_id": "AZ-0001", "updated_utc": "2026-11-23T10:15:02.000Z",
     "recordings": [{"recording_id": "20261123T061502Z-3fa9c2", "box_id": "5d41402abc4b",
                     "started_utc": ..., "updated_utc": ..., "ended": false, "revision": 41,
                     "first_seq": 0, "last_seq": 1529, "segments": 1530, "lost_segments": 0,
                     "archive": "20261123T061502Z-3fa9c2/archive.m3u8"}, ...]}

Several writers share the file with a plain GET, merge, PUT (no locking on a WebDAV server), so
no writer ever drops an entry: each keeps every entry it has ever seen and writes their union
back with its own entry brought up to date. A concurrent PUT can hide another writer's latest
update until that writer's next rewrite, never remove an entry for good. `revision` grows with
each rewrite of an entry by its agent: the higher one wins, whatever the boxes' clocks say.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from agent.core.clock import parse_utc

INDEX_NAME = "recordings.json"
INDEX_FORMAT = 1
# Another recording counts as live while its entry keeps changing: an agent rewrites it every
# index interval, so three intervals without a change mean that agent is gone (crashed, or
# stopped without a last word).
LIVE_INTERVALS = 3


class IndexFormatError(ValueError):
    """The bytes are not a station index this agent can read."""


@dataclass(frozen=True)
class RecordingEntry:
    recording_id: str
    box_id: str
    started_utc: str | None  # the first segment's start; None before the first segment
    updated_utc: str  # when its agent last rewrote it (that box's clock)
    ended: bool  # stopped cleanly: the archive has ENDLIST
    revision: int
    first_seq: int | None
    last_seq: int | None
    segments: int
    lost_segments: int
    archive: str  # the archive playlist, relative to the station folder

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: object) -> RecordingEntry:
        if not isinstance(raw, dict):
            raise IndexFormatError(f"a recording is not an object: {raw!r:.80}")
        types: dict[str, tuple[type, ...]] = {
            "recording_id": (str,), "box_id": (str,), "started_utc": (str, type(None)),
            "updated_utc": (str,), "ended": (bool,), "revision": (int,),
            "first_seq": (int, type(None)), "last_seq": (int, type(None)), "segments": (int,),
            "lost_segments": (int,), "archive": (str,),
        }  # fmt: skip
        values: dict[str, Any] = {}
        for field in fields(cls):
            value = raw.get(field.name)
            wanted = types[field.name]
            # bool is an int in Python: a count or a seq must not be true/false
            if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
                raise IndexFormatError(
                    f"recording {raw.get('recording_id')!r:.40}: {field.name} is {value!r:.40}"
                )
            values[field.name] = value
        if not values["recording_id"]:
            raise IndexFormatError("a recording without a recording_id")
        return cls(**values)


def parse_index(data: bytes) -> tuple[dict[str, RecordingEntry], list[str]]:
    """The recordings in an index, and what could not be read (empty when all is well).
    Unreadable entries are left out: the caller keeps the original bytes aside."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, [f"not JSON: {exc}"]
    if not isinstance(document, dict) or not isinstance(document.get("recordings"), list):
        return {}, ["not a station index (no 'recordings' list)"]
    if document.get("format") != INDEX_FORMAT:
        return {}, [f"format {document.get('format')!r}, this agent reads {INDEX_FORMAT}"]
    entries: dict[str, RecordingEntry] = {}
    problems = []
    for raw in document["recordings"]:
        try:
            entry = RecordingEntry.from_dict(raw)
        except IndexFormatError as exc:
            problems.append(str(exc))
            continue
        entries[entry.recording_id] = newer(entries.get(entry.recording_id), entry)
    return entries, problems


def render_index(station_id: str, updated_utc: str, entries: Iterable[RecordingEntry]) -> bytes:
    """The index document, recordings oldest first (recording ids start with their UTC time)."""
    document = {
        "format": INDEX_FORMAT,
        "station_id": station_id,
        "updated_utc": updated_utc,
        "recordings": [e.as_dict() for e in sorted(entries, key=lambda e: e.recording_id)],
    }
    return (json.dumps(document, indent=1) + "\n").encode()


def newer(known: RecordingEntry | None, seen: RecordingEntry) -> RecordingEntry:
    """Of two versions of one recording's entry, the later one its agent wrote."""
    if known is None or seen.revision > known.revision:
        return seen
    return known


class StationRecordings:
    """What one agent knows of its station's recordings: every entry it has ever seen (the
    union it writes back), and since when each other recording has been seen changing."""

    def __init__(self, recording_id: str, box_id: str, interval_s: float) -> None:
        self.recording_id = recording_id
        self.box_id = box_id
        self.live_window_s = LIVE_INTERVALS * interval_s
        self.entries: dict[str, RecordingEntry] = {}  # the others' entries (ours is built anew)
        self.own_revision = 0
        self._changed_at_s: dict[str, float] = {}  # monotonic time we saw it change
        self._reported: set[str] = set()  # recordings reported as duplicates, this episode

    def merge(self, fetched: dict[str, RecordingEntry], now_s: float, now_wall_s: float) -> None:
        """Take in the entries just read from the server. A change of an entry's revision
        since the last look means its agent is writing it. At first sight, an entry written
        within the live window by our wall clock counts as changing now (boxes' clocks may
        disagree: then the next change seen decides)."""
        for recording_id, entry in fetched.items():
            if recording_id == self.recording_id:
                self.own_revision = max(self.own_revision, entry.revision)
                continue
            known = self.entries.get(recording_id)
            best = newer(known, entry)
            if known is None and _age_s(entry, now_wall_s) <= self.live_window_s:
                self._changed_at_s[recording_id] = now_s
            elif known is not None and best.revision > known.revision:
                self._changed_at_s[recording_id] = now_s
            self.entries[recording_id] = best

    def next_revision(self) -> int:
        self.own_revision += 1
        return self.own_revision

    def document(self, own: RecordingEntry) -> list[RecordingEntry]:
        """Every recording to write: all seen, ours as it is now."""
        return [*self.entries.values(), own]

    def live_others(self, now_s: float) -> list[RecordingEntry]:
        """Other recordings of this station that are not ended and still being written."""
        return [
            entry
            for recording_id, entry in self.entries.items()
            if not entry.ended
            and entry.box_id != self.box_id  # our own earlier recording (a replaced spool)
            and now_s - self._changed_at_s.get(recording_id, -1e18) <= self.live_window_s
        ]

    def new_duplicates(self, now_s: float) -> list[RecordingEntry]:
        """Live other recordings not reported yet in this episode. An episode ends when the
        other recording stops being live; if it comes back, it is reported again."""
        live = {e.recording_id: e for e in self.live_others(now_s)}
        self._reported &= set(live)
        new = [entry for recording_id, entry in live.items() if recording_id not in self._reported]
        self._reported |= {e.recording_id for e in new}
        return new


def _age_s(entry: RecordingEntry, now_wall_s: float) -> float:
    """How long ago its agent wrote the entry, by our wall clock (inf if unreadable)."""
    try:
        return abs(now_wall_s - parse_utc(entry.updated_utc))
    except ValueError:
        return float("inf")
