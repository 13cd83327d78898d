"""Run the agent in tests: as a real OS process (`AgentProcess`) or in-process (`Running`).

    agent = AgentProcess(write_toml(tmp_path / "station.toml", data)).start()
    ... agent.json_lines(), agent.stderr(); agent.terminate() == 0 or agent.kill()

    agent = AgentProcess.for_telemetry(spec, tmp_path / "agent-0.json").start(ready="started")
    agent.emit("camera_lost"); agent.signal(signal.SIGTERM); agent.wait() == 0

An `AgentProcess` runs `python PROGRAM CONFIG`: `-m agent run --config` by default, or
tests/peers/telemetry_runner.py (Telemetry with a fake pipeline status) for telemetry tests.
Its stdout and stderr go to CONFIG.stdout and CONFIG.stderr (appended across restarts of the
same config); `expect()` reads stdout line by line from where the current run began. Its stdin
is a pipe for line commands (`emit KIND` to the telemetry runner).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.core.events import EventFanout, RecordingSink
from agent.service.config import AgentConfig, load_secrets
from agent.service.pipeline import Pipeline
from agent.spool.store import Spool

AGENT_RUN = ("-m", "agent", "run", "--config")
# -P: the script's folder stays off sys.path, or this module would shadow the agent package.
TELEMETRY_RUNNER = ("-P", str(Path(__file__).with_name("telemetry_runner.py")))
PROCESS_TIMEOUT_S = 15.0  # a python process importing the agent starts in ~0.5 s here
KILL_TIMEOUT_S = 10.0
TERMINATE_TIMEOUT_S = 30.0  # a clean stop drains the encoder and the uploader
POLL_S = 0.02


class AgentProcess:
    """The agent as a real OS process; see the module doc."""

    def __init__(
        self,
        config_path: Path,
        env: dict[str, str] | None = None,
        *,
        program: Sequence[str] = AGENT_RUN,
    ) -> None:
        self.config_path = config_path
        self.stdout_path = config_path.with_suffix(".stdout")
        self.stderr_path = config_path.with_suffix(".stderr")
        self.program = tuple(program)
        self._env = os.environ | (env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._read_pos = 0  # stdout bytes already returned by expect()

    @classmethod
    def for_telemetry(cls, spec: dict[str, Any], spec_path: Path) -> AgentProcess:
        """The telemetry runner on `spec` (written to spec_path; it may hold a password)."""
        spec_path.write_text(json.dumps(spec, default=str))
        return cls(spec_path, program=TELEMETRY_RUNNER)

    def start(self, ready: str | None = None) -> AgentProcess:
        """Starts the process; with `ready`, returns once it printed a line starting so."""
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self._read_pos = out.tell()
            self.proc = subprocess.Popen(
                [sys.executable, *self.program, str(self.config_path)],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                env=self._env,
            )
        if ready is not None:
            self.expect(ready)
        return self

    def expect(self, prefix: str, timeout_s: float = PROCESS_TIMEOUT_S) -> str:
        """The next line of stdout, which must start with `prefix`."""
        proc = self._started()
        deadline_s = time.monotonic() + timeout_s
        while (line := self._next_line()) is None:
            if proc.poll() is not None or time.monotonic() > deadline_s:
                line = self._next_line()  # printed just before it exited
                if line is not None:
                    break
                raise AssertionError(
                    f"agent process did not print {prefix!r}\n{self.stderr()[-2000:]}"
                )
            time.sleep(POLL_S)
        assert line.startswith(prefix), line
        return line

    def emit(self, kind: str) -> None:
        """Telemetry runner: emits an event; returns once it is committed to the outbox."""
        stdin = self._started().stdin
        assert stdin is not None
        stdin.write(f"emit {kind}\n".encode())
        stdin.flush()
        self.expect("emitted")

    def signal(self, signum: signal.Signals) -> None:
        self._started().send_signal(signum)

    def wait(self, timeout_s: float = PROCESS_TIMEOUT_S) -> int:
        """The exit code, once the process has exited."""
        code = self._started().wait(timeout_s)
        self._close_stdin()
        return code

    def terminate(self, timeout_s: float = TERMINATE_TIMEOUT_S) -> int:
        """SIGTERM (a clean stop), then the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL if it still runs; nothing if it never started or has exited."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(KILL_TIMEOUT_S)
        self._close_stdin()

    close = kill

    def json_lines(self) -> list[dict[str, Any]]:
        """Every stdout line of every run of this config, parsed (the agent's JSON lines)."""
        if not self.stdout_path.exists():
            return []
        lines = []
        for raw in self.stdout_path.read_text().splitlines():
            if raw.strip():
                lines.append(json.loads(raw))
        return lines

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def _started(self) -> subprocess.Popen[bytes]:
        assert self.proc is not None, "AgentProcess.start() was not called"
        return self.proc

    def _next_line(self) -> str | None:
        """The next complete stdout line of this run, or None if there is none yet."""
        with self.stdout_path.open("rb") as out:
            out.seek(self._read_pos)
            raw = out.readline()
        if not raw.endswith(b"\n"):
            return None
        self._read_pos += len(raw)
        return raw.decode().strip()

    def _close_stdin(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()


AgentFactory = Callable[[dict[str, Any]], AgentProcess]


def spool_seqs(spool: Path) -> list[int]:
    """Segment numbers in a spool's index, read-only (the agent may be writing it)."""
    index = spool / "index.sqlite"
    if not index.exists():
        return []
    try:
        with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as db:
            return [row[0] for row in db.execute("SELECT seq FROM segments ORDER BY seq")]
    except sqlite3.OperationalError:
        return []  # the agent is creating it right now


def wait_until(
    predicate: Callable[..., object], timeout_s: float, interval_s: float = 0.05
) -> bool:
    """Whether `predicate()` became true within timeout_s (checked every interval_s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


class Running:
    """A whole agent pipeline in this process, its events recorded."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.events = EventFanout()
        self.sink = RecordingSink()
        self.events.subscribe(self.sink.emit)
        self.pipeline = Pipeline(cfg, load_secrets(cfg), self.events)

    @property
    def spool(self) -> Spool:
        return self.pipeline.spool

    def pending(self) -> int:
        return len(self.spool.pending("http"))

    def stop(self) -> Spool:
        if self.pipeline.encode.alive:
            self.pipeline.stop()
        return Spool.open_read_only(self.cfg.spool.path)


def assert_all_on_server(spool: Spool, upstream: Path) -> None:
    """Every segment recorded, none lost, each in the station folder `upstream` under its
    recording's folder and its name, with its checksum."""
    records = spool.segments()
    assert records, "nothing was recorded"
    assert spool.lost() == []
    for record in records:
        path = upstream / record.object_name
        assert path.exists(), f"segment {record.seq} missing upstream"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record.sha256, record.seq
        assert "http" in record.uploaded_to
    names = {p.name for p in (upstream / spool.recording_id).glob("*.ts")}
    assert names == {r.file_name for r in records}, "an upload landed under another name"
    assert not list(upstream.glob("*.ts")), "a segment outside its recording's folder"
