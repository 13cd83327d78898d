"""When the archive playlists are rewritten: never the whole day for every new segment.

A recording's archive upstream is two kinds of documents (docs/operations.md):

    {recording}/archive.m3u8          every segment of the recording: what players open
    {recording}/archive-0003.m3u8     part 3: segments 3*PART_SEGMENTS .. 4*PART_SEGMENTS-1

Rewriting archive.m3u8 in full every 30 s cost ~29 bytes per segment per rewrite: ~790 kB a
rewrite after 15 hours, ~210 kbit/s, more than half of a 150-400 kbit/s station's video (issue
15). Now every document pays for its rewrites from a byte budget: each byte of video uploaded
earns ARCHIVE_SHARE bytes for each document, and a changed document is rewritten once its budget
holds its size. So each costs at most ARCHIVE_SHARE of the video bytes, at any rung and any
length of day. A part is small (under ~30 kB), so the newest part follows within a few minutes
even at the lowest rung; archive.m3u8 is rewritten less and less often as it grows (after 15
hours at 150 kbit/s, about every two hours; at 2.5 Mbit/s, every ten minutes) and in full, with
ENDLIST, at a clean stop. A part is written a last time when the recording moves past it and
again only when backfill or a loss changes one of its segments.

Pure: the publisher (agent/uplink/publisher.py) and bench/uplink.py drive the same `ArchivePlan`.
"""

from __future__ import annotations

from dataclasses import dataclass

# 900 segments: 30 minutes of 2 s segments, a part of ~26 kB at ~29 bytes per segment.
PART_SEGMENTS = 900
# Each archive document's rewrites cost at most this share of the video bytes uploaded: archive
# and newest part together 0.5 %, half of the 1 % for all playlists at the lowest rung
# (the live playlist, rewritten for every segment, takes most of the other half there).
ARCHIVE_SHARE = 0.0025
# A document this small is rewritten on the timer whatever its budget (a short recording, a
# test): 2 kB every 30 s is under 0.4 % of the lowest rung's 150 kbit/s.
FREE_BYTES = 2048
WHOLE = -1  # the document key of archive.m3u8; parts are keyed by their index
# What a segment adds to an archive playlist: "#EXTINF:2.000,\n00001234.ts\n" is 27 bytes, a
# PROGRAM-DATE-TIME every 30 segments ~1.5 more; a little over, so the budget is not overdrawn.
ENTRY_BYTES = 32


def part_of(seq: int) -> int:
    return seq // PART_SEGMENTS


def part_name(part: int) -> str:
    return f"archive-{part:04d}.m3u8"


def part_range(part: int) -> tuple[int, int]:
    """(first, last) seq of a part."""
    return part * PART_SEGMENTS, (part + 1) * PART_SEGMENTS - 1


@dataclass
class _Document:
    dirty: bool = False
    saved_bytes: float = 0.0  # budget earned and not yet spent
    size: int = 0  # bytes at the last rewrite
    entries: int = 0  # segments listed at the last rewrite


class ArchivePlan:
    """Which archive documents are due. `changed(seq, video_bytes)` for every segment that went
    up (or was found lost: 0 bytes); `due(newest_seq)` on the archive timer; `written(...)`
    after each successful rewrite."""

    def __init__(self, share: float = ARCHIVE_SHARE, free_bytes: int = FREE_BYTES) -> None:
        self._share = share
        self._free_bytes = free_bytes
        self._docs: dict[int, _Document] = {WHOLE: _Document()}
        self._newest_part = -1

    def changed(self, seq: int, video_bytes: int) -> None:
        keys = [WHOLE, part_of(seq)]
        if part_of(seq) > self._newest_part >= 0:  # the recording moved past that part:
            keys.append(self._newest_part)  # written a last time, with ENDLIST
        self._newest_part = max(self._newest_part, part_of(seq))
        for key in keys:
            doc = self._docs.setdefault(key, _Document())
            doc.dirty = True
        for doc in self._docs.values():  # every document earns from every video byte
            doc.saved_bytes += self._share * video_bytes

    def due(self, newest_seq: int) -> list[int]:
        """Documents to rewrite now, parts oldest first, the whole last: changed, and their
        budget holds what they will cost (the size they had, grown with their segments)."""
        due = []
        for key in sorted(self._docs, key=lambda k: (k == WHOLE, k)):
            doc = self._docs[key]
            if doc.dirty and self._affordable(doc, self._entries(key, newest_seq)):
                due.append(key)
        return due

    def written(self, key: int, size: int, entries: int) -> None:
        doc = self._docs.setdefault(key, _Document())
        doc.saved_bytes = max(0.0, doc.saved_bytes - size)
        doc.size, doc.entries, doc.dirty = size, entries, False
        if key != WHOLE:  # finished parts are kept only while they wait for a rewrite
            self._forget_clean_parts(keep=key)

    def dirty(self) -> list[int]:
        """Everything not yet written as it is (for the last word at a clean stop)."""
        return [k for k in sorted(self._docs, key=lambda k: (k == WHOLE, k)) if self._docs[k].dirty]

    def _entries(self, key: int, newest_seq: int) -> int:
        if key == WHOLE:
            return newest_seq + 1
        first, last = part_range(key)
        return max(0, min(last, newest_seq) - first + 1)

    def _affordable(self, doc: _Document, entries: int) -> bool:
        estimate = doc.size + max(0, entries - doc.entries) * ENTRY_BYTES
        return estimate <= max(self._free_bytes, doc.saved_bytes)

    def _forget_clean_parts(self, keep: int) -> None:
        newest = max(k for k in self._docs if k != WHOLE)
        for k in [k for k, d in self._docs.items() if k not in (WHOLE, keep, newest)]:
            if not self._docs[k].dirty:
                del self._docs[k]
