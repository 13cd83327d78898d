"""Where things are in a spool folder.

index.sqlite (-wal, -shm)        the index (agent/spool/index.py)
index.damaged-<UTC>.sqlite       a damaged index, moved aside and kept for forensics
segments/00000042.ts             a segment, named by its sequence number
quarantine/<recording>-….ts      files that were not whole segments, kept for a person
telemetry/                       the event outbox (agent/telemetry)
.reserve                         room held back for a full disk (agent/spool/room.py)
"""

from __future__ import annotations

SEGMENT_DIR = "segments"
QUARANTINE_DIR = "quarantine"


def segment_file_name(seq: int) -> str:
    return f"{seq:08d}.ts"
