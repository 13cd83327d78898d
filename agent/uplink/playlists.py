"""HLS media playlists from the spool's records: pure functions, no I/O.

Media sequence numbers are the spool's sequence numbers: every seq in a playlist's range has an
entry, so a segment keeps its number from one reload to the next. A segment the upstream does
not have (not yet backfilled, or lost) is listed with EXT-X-GAP so players skip it (HLS
version 8); when backfill brings it, the next rewrite lists it normally. EXT-X-DISCONTINUITY
marks a new run of the agent or a change of picture size/frame rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

HLS_VERSION = 8  # EXT-X-GAP
ARCHIVE_DATE_EVERY = 30  # archive: PROGRAM-DATE-TIME every 30 segments (and at every break)
PAGE_LINES = 2_000  # render_archive joins its lines this many at a time


@dataclass(frozen=True)
class Entry:
    seq: int
    uri: str  # relative to the playlist: "00000012.ts" in the archive, "<recording>/..." live
    duration_s: float
    started_utc: str
    discontinuity: bool
    available: bool  # the upstream has it


def _header(target_s: int, first_seq: int, discontinuity_seq: int) -> list[str]:
    return [
        "#EXTM3U",
        f"#EXT-X-VERSION:{HLS_VERSION}",
        f"#EXT-X-TARGETDURATION:{max(1, target_s)}",
        f"#EXT-X-MEDIA-SEQUENCE:{first_seq}",
        f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_seq}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]


def _entry_lines(entry: Entry, with_date: bool, tag_discontinuity: bool) -> list[str]:
    lines = []
    if tag_discontinuity:
        lines.append("#EXT-X-DISCONTINUITY")
    if with_date:
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{entry.started_utc}")
    if not entry.available:
        lines.append("#EXT-X-GAP")
    lines.append(f"#EXTINF:{entry.duration_s:.3f},")
    lines.append(entry.uri)
    return lines


def render_live(entries: Sequence[Entry], discontinuity_seq: int) -> str:
    """The sliding window at the live edge: `entries` are consecutive seqs, oldest first,
    ending at the newest segment the upstream has. PROGRAM-DATE-TIME on the first segment and
    wherever the timeline breaks (a new run, a gap); players date the others by their
    durations (RFC 8216 4.3.2.6). Rewritten for every segment, so every line counts: one date
    per segment was ~40 % of the playlist, 0.6 % of the video at the lowest rung (issue 15).

    Every segment after seq 0 that starts a new run or picture format carries its
    DISCONTINUITY tag, also as the first of the window, so `discontinuity_seq` is the number of
    such segments with 0 < seq < the window's first seq (`Spool.discontinuities_before`)."""
    if not entries:
        raise ValueError("a live playlist needs at least one segment")
    target_s = max(math.ceil(e.duration_s) for e in entries)
    lines = _header(target_s, entries[0].seq, discontinuity_seq)
    previous: Entry | None = None
    for entry in entries:
        tag = entry.discontinuity and entry.seq > 0
        broke = previous is None or entry.discontinuity or not previous.available
        with_date = broke or not entry.available
        lines += _entry_lines(entry, with_date=with_date, tag_discontinuity=tag)
        previous = entry
    return "\n".join(lines) + "\n"  # never ENDLIST: a restarted agent goes on with it


def render_archive(entries: Iterable[Entry], ended: bool) -> str:
    """Every segment from the first, in order; gaps marked; ENDLIST after a clean stop.

    `entries` may be a generator (Spool.iter_segments): the text is made a page of lines at a
    time, so a day's archive (~27,000 segments) never holds all its entries and lines as
    objects at once. Rendered whole every time, the list of them raised the heap's high-water
    mark as the recording grew: +4 to 5 MB an hour, kept (issue 15)."""
    pages: list[str] = []
    lines: list[str] = []
    first_seq: int | None = None
    target_s = 1
    previous: Entry | None = None
    for k, entry in enumerate(entries):
        if first_seq is None:
            first_seq = entry.seq
        target_s = max(target_s, math.ceil(entry.duration_s))
        broke = previous is None or entry.discontinuity or not previous.available
        with_date = broke or not entry.available or k % ARCHIVE_DATE_EVERY == 0
        tag = entry.discontinuity and k > 0
        lines += _entry_lines(entry, with_date=with_date, tag_discontinuity=tag)
        previous = entry
        if len(lines) >= PAGE_LINES:
            pages.append("\n".join(lines))
            lines = []
    if first_seq is None:
        raise ValueError("an archive playlist needs at least one segment")
    if lines:
        pages.append("\n".join(lines))
    if ended:
        pages.append("#EXT-X-ENDLIST")
    return "\n".join([*_header(target_s, first_seq, 0), *pages]) + "\n"
