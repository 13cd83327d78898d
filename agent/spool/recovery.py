"""What the spool needs to recover at start without deleting video: a look inside a segment file
(PyAV), the quarantine folder, and moving a damaged index aside.

No SQLite here: `Spool` decides what goes into its index; these helpers only look at and move
files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.core.durable import fsync_directory

log = logging.getLogger(__name__)


def quarantine_file(file: Path, quarantine_dir: Path, prefix: str = "") -> Path:
    """Move `file` into `quarantine_dir` (made if needed), never over an earlier one; returns
    where it went. `prefix` (e.g. the recording id) keeps files of different recordings with
    the same name apart."""
    quarantine_dir.mkdir(exist_ok=True)
    base = f"{prefix}-{file.name}" if prefix else file.name
    target = quarantine_dir / base
    n = 1
    while target.exists():
        target = quarantine_dir / f"{base}.{n}"
        n += 1
    file.rename(target)
    fsync_directory(quarantine_dir)
    fsync_directory(file.parent)
    log.warning("moved %s to %s", file, target)
    return target
