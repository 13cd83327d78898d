"""Logging for the `station-agent` command: journald priorities, quiet libraries, quiet OpenCV.

    configure_logging(verbose=args.verbose)          # once, in the CLI, before any work

Under systemd, stderr is a stream into the journal and `JOURNAL_STREAM` names it
("device:inode"). Then each line starts with its sd-daemon priority (`<3>` error, `<4>`
warning, `<6>` info, `<7>` debug), so `journalctl -p warning` shows the warnings and errors,
and carries no timestamp of its own (the journal stamps every line). Otherwise (a terminal, a
file, a pipe) lines look as they always did: time, level, logger, message.

Libraries stay quiet unless asked (`-v`): httpx and httpcore log every request at INFO (tens
of thousands of lines a day per box), OpenCV prints its own `[ WARN:0@0.4] global cap.cpp...`
lines straight to stderr for every camera it cannot open. Importing this module sets
OPENCV_LOG_LEVEL=ERROR (unless set already) so that OpenCV reads it when it is first
imported; `configure_logging` also sets the level of an OpenCV already loaded.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

OPENCV_LOG_LEVEL = "OPENCV_LOG_LEVEL"
os.environ.setdefault(OPENCV_LOG_LEVEL, "ERROR")  # before cv2 is imported (agent/cli.py)

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"
TOOL_FORMAT = "%(levelname)s: %(message)s"  # a technician's command: "warning: ..."
# Loggers of libraries that log every request at INFO: shown only with -v.
CHATTY_LIBRARIES = ("httpx", "httpcore")
# sd-daemon(3) priorities, from syslog(3): 2 crit, 3 err, 4 warning, 6 info, 7 debug.
PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
DEBUG_PRIORITY = 7


def priority(levelno: int) -> int:
    """The sd-daemon priority of a logging level (5 'notice' is never used)."""
    for level, prio in PRIORITIES:
        if levelno >= level:
            return prio
    return DEBUG_PRIORITY


class JournalFormatter(logging.Formatter):
    """`<N>logger: message`; every line of a multi-line record (a traceback) gets the prefix,
    since the journal makes each line an entry of its own."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def journal_stream(environ: Mapping[str, str], stream: TextIO) -> bool:
    """Whether `stream` is the journal stream systemd connected (JOURNAL_STREAM names its
    device and inode: a child whose stderr was redirected elsewhere inherits the variable
    but not the stream, so both are compared, as sd_journal_stream_fd(3) advises)."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no file behind it (a test's StringIO)
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


class ToolFormatter(logging.Formatter):
    """`warning: message` for the technicians' commands, whose output is read, not filed."""

    def __init__(self) -> None:
        super().__init__(TOOL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return record.levelname.lower() + line[len(record.levelname) :]


def make_handler(environ: Mapping[str, str], stream: TextIO, tool: bool = False) -> logging.Handler:
    """A handler writing to `stream`, journald-style when it is the journal stream, short
    for a `tool` (a technician's command) otherwise."""
    handler = logging.StreamHandler(stream)
    if journal_stream(environ, stream):
        handler.setFormatter(JournalFormatter())
    elif tool:
        handler.setFormatter(ToolFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    return handler


def configure_logging(
    verbose: bool = False,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
    tool: bool = False,
) -> logging.Handler | None:
    """Logging for a command: a handler on stderr (see make_handler), the level, libraries
    quiet unless `verbose`. A `tool` (check, provision, mask...) logs warnings and errors
    only: its own lines are the output. Like logging.basicConfig it adds no handler when the
    root logger has one already (a test harness's); it returns the handler it added."""
    environ = os.environ if environ is None else environ
    root = logging.getLogger()
    handler = None
    if not root.handlers:
        handler = make_handler(environ, sys.stderr if stream is None else stream, tool)
        root.addHandler(handler)
    quiet = logging.WARNING if tool else logging.INFO
    root.setLevel(logging.DEBUG if verbose else quiet)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    quiet_opencv(verbose)
    return handler


def quiet_opencv(verbose: bool = False) -> None:
    """OpenCV's own log (not Python logging) to errors only, or warnings with `verbose`."""
    cv2 = sys.modules.get("cv2")
    if cv2 is None:
        return  # not loaded yet: it reads OPENCV_LOG_LEVEL (set above) when it is
    levels = cv2.utils.logging
    levels.setLogLevel(levels.LOG_LEVEL_WARNING if verbose else levels.LOG_LEVEL_ERROR)
