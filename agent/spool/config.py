"""`[spool]`: where the segments are kept and how much of the disk they may use."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agent.core.config import ByteSize, Section


class SpoolConfig(Section):
    path: Path = Path("/var/lib/station-agent/spool")
    max_bytes: ByteSize = Field(20 * 10**9, ge=1_000_000)
    min_free_bytes: ByteSize = Field(500 * 10**6, ge=0)
