"""Without an [mqtt] section: the same payloads, one JSON object per line on a text stream.

This is the demo's default and what tests of other parts read. A closed or broken stream (the
reader went away) is logged once; the agent carries on.
"""

from __future__ import annotations

import logging
import threading
from typing import TextIO

log = logging.getLogger(__name__)


class JsonLinesWriter:
    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._broken = False
        self.lines = 0

    def write(self, line: str) -> None:
        """`line` is one compact JSON object (no newline in it)."""
        with self._lock:
            if self._broken:
                return
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (OSError, ValueError) as exc:  # BrokenPipeError, or write to a closed file
                self._broken = True
                log.error("telemetry output stream failed, no more JSON lines: %s", exc)
                return
            self.lines += 1
