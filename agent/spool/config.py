"""`[spool]`: where the segments are kept and how much of the disk they may use."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agent.core.config import ByteSize, Section


class SpoolConfig(Section):
    path: Path = Path("/var/lib/station-agent/spool")
    max_bytes: ByteSize = Field(20 * 10**9, ge=1_000_000)
    min_free_bytes: ByteSize = Field(500 * 10**6, ge=0)
    # The station's Ed25519 key (a secret file `provision` writes: one line, 0600): every
    # segment gets a signed manifest that observers check with `station-agent verify`.
    # None: nothing is signed (the verifier calls the segments UNSIGNED; `check` warns).
    signing_key_file: Path | None = None
