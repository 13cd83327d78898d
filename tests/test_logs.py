"""Logs fit journald (issue 16): `<N>` priorities and no own timestamp when stderr is the
journal stream, the usual lines otherwise; chatty libraries and OpenCV stay quiet."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from agent.core import logs
from tests.peers.agent import spool_seqs, wait_until
from tests.peers.config import agent_config, write_toml

PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")
JOURNAL_LINE = re.compile(r"^<[2-7]>[\w.]+: ")
TIMESTAMP = re.compile(r"\d\d:\d\d:\d\d")


def _log_through(handler: logging.Handler) -> None:
    logger = logging.getLogger("agent.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("debug line")
        logger.info("info line")
        logger.warning("warning line")
        logger.error("error line")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("with a traceback")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    handler.flush()


def _stream_id(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_stream_gets_priorities_and_no_timestamp(tmp_path: Path) -> None:
    out = tmp_path / "stderr"
    with out.open("w") as stream:
        handler = logs.make_handler({"JOURNAL_STREAM": _stream_id(out)}, stream)
        _log_through(handler)
    lines = out.read_text().splitlines()
    assert lines[:4] == [
        "<7>agent.test_logs: debug line",
        "<6>agent.test_logs: info line",
        "<4>agent.test_logs: warning line",
        "<3>agent.test_logs: error line",
    ]
    # every traceback line is an entry of its own in the journal: each keeps the priority
    assert len(lines) > 6 and all(line.startswith("<3>") for line in lines[4:]), lines
    assert not any(TIMESTAMP.search(line) for line in lines)


def test_elsewhere_the_lines_stay_as_they_were(tmp_path: Path) -> None:
    out = tmp_path / "stderr"
    other = tmp_path / "other"
    other.write_text("")
    for environ in ({}, {"JOURNAL_STREAM": _stream_id(other)}, {"JOURNAL_STREAM": "junk"}):
        out.write_text("")
        with out.open("w") as stream:  # a redirected stderr inherits JOURNAL_STREAM: no match
            _log_through(logs.make_handler(environ, stream))
        lines = out.read_text().splitlines()
        assert PLAIN_LINE.match(lines[0]) and lines[0].endswith("DEBUG agent.test_logs: debug line")
        assert not any(line.startswith("<") for line in lines)


def test_priorities_follow_sd_daemon() -> None:
    assert [logs.priority(level) for level in (50, 40, 30, 20, 10, 5)] == [2, 3, 4, 6, 7, 7]


def _agent(argv: list[str], stderr_path: Path, env: dict[str, str]) -> int:
    with stderr_path.open("w") as err:
        done = subprocess.run(
            [sys.executable, "-m", "agent", *argv],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=os.environ | env,
            timeout=60,
            check=False,
        )
    return done.returncode


def _run_service(tmp_path: Path, stderr_path: Path, env: dict[str, str]) -> list[str]:
    """`station-agent run` until it stored a segment, then SIGTERM: its stderr lines."""
    tmp_path.mkdir()
    config = write_toml(tmp_path / "station.toml", agent_config(tmp_path))
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=os.environ | env,
        )
        try:
            assert wait_until(lambda: len(spool_seqs(tmp_path / "spool")) >= 1, timeout_s=30)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            proc.kill()
            proc.wait(10)
    return stderr_path.read_text().splitlines()


def test_the_service_logs_for_journald_under_systemd(tmp_path: Path) -> None:
    """`station-agent run` as systemd starts it: stderr is the journal stream."""
    err = tmp_path / "journal"
    err.write_text("")
    lines = _run_service(tmp_path / "a", err, {"JOURNAL_STREAM": _stream_id(err)})
    assert any("spool" in line and "opened" in line for line in lines), lines
    assert all(JOURNAL_LINE.match(line) for line in lines), lines
    assert not any(TIMESTAMP.search(line) for line in lines)
    lines = _run_service(tmp_path / "b", tmp_path / "stderr", {})
    assert any("spool" in line and "opened" in line for line in lines), lines
    assert all(PLAIN_LINE.match(line) for line in lines), lines


def test_request_lines_of_http_libraries_only_with_verbose() -> None:
    logs.configure_logging(verbose=False)
    try:
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert not logging.getLogger("httpcore").isEnabledFor(logging.INFO)
        assert logging.getLogger("httpx").isEnabledFor(logging.WARNING)
        assert logging.getLogger("agent").isEnabledFor(logging.INFO)
        logs.configure_logging(verbose=True)
        assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
    finally:
        logs.configure_logging(verbose=False)


def test_opencv_keeps_its_warnings_to_itself(tmp_path: Path) -> None:
    """OpenCV prints `[ WARN:0@0.5] global cap.cpp:212 ...` for a camera it cannot open,
    straight to stderr; the technician gets our line and the next step instead."""
    err = tmp_path / "stderr"
    code = _agent(["health", "v4l2:/dev/video-missing", "--duration-s", "1"], err, {})
    text = err.read_text()
    assert code == 2
    assert "WARN" not in text and "cap.cpp" not in text and "global" not in text, text
    assert "cannot open v4l2:/dev/video-missing" in text
    assert "ls /dev/video*" in text and "sudo systemctl stop station-agent" in text
