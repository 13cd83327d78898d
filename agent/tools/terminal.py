"""What the technicians' commands print, for an 80-column terminal.

    print(wrap(line, indent=18))                     # a report line, continued under column 18
    with Waiting("opening the camera", limit_s=15):  # says so when it takes more than 2 s
        frame = grab_frame(...)
    fail("cannot open v4l2:/dev/video0", camera_hints("v4l2:/dev/video0"))

Reports (check, provision, mask, health) wrap at 80 columns always: they are read in small
terminals and pasted into chats. Error lines on stderr wrap only on a terminal: piped into a
file or a script, one problem stays one line. Colour only on a terminal, never with NO_COLOR
(https://no-color.org) or TERM=dumb. Progress goes to stderr, so stdout stays one JSON object
with --json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TextIO

from agent.core.redact import redact_url

WIDTH = 80  # what every line the commands print fits in
PROGRESS_AFTER_S = 2.0  # a wait longer than this is announced
PROGRESS_EVERY_S = 5.0  # then how often it says it is still waiting
SERVICE = "station-agent"
# SGR colours for the result words
COLOURS = {"PASS": "32", "WARN": "33", "FAIL": "31;1", "SKIP": "2", "error": "31;1"}


def wrap(text: str, indent: int = 0, first_indent: int = 0, width: int = WIDTH) -> str:
    """`text` wrapped at `width` columns, the first line indented by `first_indent` spaces and
    the rest by `indent`. Words are never broken: a word too long for its indented line (a
    path) gets a line of its own, indented less, and only a word longer than `width` itself
    goes past it."""
    lines: list[str] = []
    for k, paragraph in enumerate(text.split("\n")):
        lines += textwrap.wrap(
            paragraph,
            width=width,
            initial_indent=" " * (first_indent if k == 0 else indent),
            subsequent_indent=" " * indent,
            break_long_words=False,
            break_on_hyphens=False,
        ) or [""]
    return "\n".join(_outdent(line, width) for line in lines)


def _outdent(line: str, width: int) -> str:
    if len(line) <= width:
        return line
    word = line.lstrip()  # textwrap leaves a too-long word alone on its line
    return " " * max(0, width - len(word)) + word


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def use_colour(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    return is_terminal(stream)


def paint(word: str, colour: bool) -> str:
    """`word` in its colour (COLOURS) when `colour`; the width on screen stays len(word)."""
    code = COLOURS.get(word.strip())
    return f"\x1b[{code}m{word}\x1b[0m" if colour and code else word


def fail(message: str, hints: list[str] | None = None, stream: TextIO | None = None) -> None:
    """`error: message` on stderr, then each hint (the next step) indented, wrapped at 80
    columns. The error line itself wraps only on a terminal: in a file or a pipe one problem
    stays one line (for grep and scripts)."""
    stream = sys.stderr if stream is None else stream
    line = f"error: {message}"
    if is_terminal(stream):
        line = wrap(line, indent=7)
    print(paint("error", use_colour(stream)) + line[len("error") :], file=stream, flush=True)
    for hint in hints or []:
        print(wrap(hint, indent=4, first_indent=2), file=stream, flush=True)


# -- the next step for the usual failures -------------------------------------------------------


def camera_hints(source: str) -> list[str]:
    """What to try when a camera cannot be opened or gives no picture."""
    if source.startswith("v4l2:"):
        device = source.removeprefix("v4l2:")
        return [
            f"Is the camera plugged in? `ls /dev/video*` must list {device}; try another USB port.",
            "Only one program can use the camera: if the service runs, stop it first with "
            f"`sudo systemctl stop {SERVICE}` (and start it again afterwards).",
        ]
    if source.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return [
            f"Check the camera's address, user and password in {redact_url(source)}, and that "
            "the box reaches it (`ping` its address).",
        ]
    if source.startswith("file:"):
        return [f"Check that the file {source.removeprefix('file:')} exists."]
    return []


def permission_hint(command: str) -> str | None:
    """The next step after 'Permission denied' when not running as root."""
    if os.geteuid() == 0:
        return None
    return f"Run it with sudo: `sudo station-agent {command} ...` (the same options)."


# -- argparse ------------------------------------------------------------------------------------


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help at most 80 columns wide (less on a narrower terminal); descriptions keep their
    own line breaks (they hold command examples)."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        columns = shutil.get_terminal_size((WIDTH, 24)).columns
        kwargs["width"] = min(columns, WIDTH) - 2
        super().__init__(prog, **kwargs)


def narrow_help(parser: argparse.ArgumentParser) -> None:
    """Give `parser` and all its subcommands' parsers the 80-column HelpFormatter."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                narrow_help(sub)


# -- progress ------------------------------------------------------------------------------------


class Waiting:
    """Says what the command waits for once the wait passes PROGRESS_AFTER_S, then every
    PROGRESS_EVERY_S how long it has waited (on stderr; on a terminal one line, rewritten and
    erased at the end). Quiet for short waits."""

    def __init__(
        self,
        what: str,
        limit_s: float | None = None,
        stream: TextIO | None = None,
        *,
        after_s: float = PROGRESS_AFTER_S,
        every_s: float = PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what = what
        self._limit_s = limit_s
        self._stream = sys.stderr if stream is None else stream
        self._after_s = after_s
        self._every_s = every_s
        self._clock = clock
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._tty = is_terminal(self._stream)
        self._shown = False

    def __enter__(self) -> Waiting:
        self._started_s = self._clock()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if self._shown and self._tty:
            self._write("\r\x1b[K")  # erase the progress line: the result is printed next

    def _run(self) -> None:
        if self._done.wait(self._after_s):
            return
        limit = f" (up to {self._limit_s:.0f} s)" if self._limit_s else ""
        self._say(f"{self._what}...{limit}")
        while not self._done.wait(self._every_s):
            elapsed_s = self._clock() - self._started_s
            self._say(f"{self._what}... {elapsed_s:.0f} s{limit}")

    def _say(self, text: str) -> None:
        text = text if len(text) < WIDTH else text[: WIDTH - 4] + "..."
        self._shown = True
        self._write(f"\r\x1b[K{text}" if self._tty else f"{text}\n")

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # the terminal went away: nothing to tell
            self._done.set()
