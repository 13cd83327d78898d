"""Which segments to delete when the spool is over its quota: a pure policy.

Uploaded segments go first, oldest first. A segment that some uplink still needs is deleted only
when no uploaded segment is left, oldest first, and the caller records each such loss. The
segment being written now is never chosen (`protect_seq`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoredSegment:
    seq: int
    nbytes: int
    uploaded: bool  # every configured uplink has it (or there is no uplink)


def choose_evictions(
    segments: list[StoredSegment],
    max_bytes: int,
    free_bytes: int,
    min_free_bytes: int,
    protect_seq: int | None = None,
) -> list[StoredSegment]:
    """The segments to delete, in order, so the spool fits `max_bytes` and the disk keeps
    `min_free_bytes` free. Deleting a file frees its bytes on the disk too."""
    total = sum(s.nbytes for s in segments)
    excess = max(total - max_bytes, min_free_bytes - free_bytes, 0)
    if excess <= 0:
        return []
    candidates = sorted(
        (s for s in segments if s.seq != protect_seq), key=lambda s: (not s.uploaded, s.seq)
    )
    chosen: list[StoredSegment] = []
    freed = 0
    for segment in candidates:
        if freed >= excess:
            break
        chosen.append(segment)
        freed += segment.nbytes
    return chosen
