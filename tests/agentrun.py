"""Run the real agent in tests: write configs, start `python -m agent run` as a process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.core.events import EventFanout, RecordingSink
from agent.service.config import AgentConfig, load_secrets
from agent.service.pipeline import Pipeline
from agent.spool.store import Spool

STATION = "TEST-0001"
SMALL_CAPTURE = {"source": "test:", "width": 320, "height": 240, "fps": 15}
SMALL_RUNG = {"width": 320, "height": 240, "fps": 15, "bitrate_bps": 300_000}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """A tiny TOML writer for test configs: top-level keys, then [section] and [a.b] tables."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []

    def walk(prefix: str, table: dict[str, Any]) -> None:
        plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if prefix:
            tables.append((prefix, plain))
        else:
            lines.extend(f"{k} = {toml_value(v)}" for k, v in plain.items())
        for k, v in table.items():
            if isinstance(v, dict):
                walk(f"{prefix}.{k}" if prefix else k, v)

    walk("", data)
    for name, plain in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in plain.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def agent_config(tmp: Path, **sections: Any) -> dict[str, Any]:
    """A small, fast config: 320x240@15 test source, 1 s segments, spool under tmp."""
    data: dict[str, Any] = {
        "station_id": STATION,
        "capture": dict(SMALL_CAPTURE),
        "encode": {"segment_s": 1.0, "preset": "ultrafast"},
        "adapt": {"ladder": [SMALL_RUNG]},
        "spool": {"path": str(tmp / "spool"), "max_bytes": "1GB", "min_free_bytes": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = data[key] | value
        else:
            data[key] = value
    return data


class AgentProcess:
    """`python -m agent run --config FILE` as a real OS process (stdout = JSON lines)."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.stdout_path = config_path.with_suffix(".stdout")
        self.stderr_path = config_path.with_suffix(".stderr")
        self._env = os.environ | (env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
                stdout=out,
                stderr=err,
                env=self._env,
            )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def json_lines(self) -> list[dict[str, Any]]:
        if not self.stdout_path.exists():
            return []
        lines = []
        for raw in self.stdout_path.read_text().splitlines():
            if raw.strip():
                lines.append(json.loads(raw))
        return lines

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""


def spool_seqs(spool: Path) -> list[int]:
    index = spool / "index.sqlite"
    if not index.exists():
        return []
    try:
        with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as db:
            return [row[0] for row in db.execute("SELECT seq FROM segments ORDER BY seq")]
    except sqlite3.OperationalError:
        return []  # the agent is creating it right now


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


class Running:
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
            self.pipeline.stop("test over")
        return Spool.open_read_only(self.cfg.spool.path)


def assert_all_on_server(spool: Spool, upstream: Path) -> None:
    records = spool.segments()
    assert records, "nothing was recorded"
    assert spool.lost() == []
    for record in records:
        path = upstream / record.file_name
        assert path.exists(), f"segment {record.seq} missing upstream"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record.sha256, record.seq
        assert "http" in record.uploaded_to
    names = {p.name for p in upstream.glob("*.ts")}
    assert names == {r.file_name for r in records}, "an upload landed under another name"
