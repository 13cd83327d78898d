"""ffprobe, the judge of every file the agent produces."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def ffprobe_json(
    target: Path | str, show_frames: bool = False, timeout_s: float = 60.0
) -> dict[str, Any]:
    """ffprobe's JSON description (format + streams, optionally frames) of a file or URL."""
    cmd = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams"]
    if show_frames:
        cmd.append("-show_frames")
    cmd.append(str(target))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffprobe failed on {target} (rc={proc.returncode}): {proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result
