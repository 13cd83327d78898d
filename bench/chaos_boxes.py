"""The chaos bench's boxes, and what it reads and breaks in their spools.

A `Box` is one station box: a folder holding its spool/ and telemetry/ (the event outbox lives
beside the spool), a config, and its agent run as a real process (tests/peers/agent.py
AgentProcess), restarted after each kill like systemd would. A small-disk box runs the agent in
a private mount namespace with the folder on a small tmpfs:

    unshare -m sh -c 'mount -t tmpfs -o size=NNm tmpfs DIR && python -m agent run --config ...'

and when the agent exits the shell copies the folder out (DIR.kept), since the tmpfs goes with
the namespace. Spools are read read-only while an agent runs; index copies are read from copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.core.durable import TEMP_SUFFIX
from bench.chaos_reconcile import IndexCopy, Lost, Row, RunEnd, ServerState, archive_entries
from tests.peers.agent import AGENT_RUN, KILL_TIMEOUT_S, AgentProcess
from tests.peers.config import write_toml

INDEX_FILES = ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm")
UPLINK = "http"  # the output's name in the spool (agent.uplink.output_names)
PID_WAIT_S = 10.0
SMALL_DISK_SCRIPT = r"""
mount -t tmpfs -o "size=${1}m" tmpfs "$2" || exit 97
box=$2 kept=$3 pidfile=$4
shift 4
"$@" &
child=$!
echo "$child" > "$pidfile"
wait "$child"
rc=$?
mkdir -p "$kept" && cp -a "$box/." "$kept/"
exit "$rc"
"""


class SmallDiskAgent(AgentProcess):
    """The agent with its box folder on a `size_mb` tmpfs in a private mount namespace. Signals
    go to the agent itself; the shell around it copies the folder to `kept` when it exits."""

    def __init__(
        self, config_path: Path, mount: Path, kept: Path, size_mb: int, env: dict[str, str]
    ) -> None:
        super().__init__(config_path, env)
        self.mount, self.kept, self.size_mb = mount, kept, size_mb
        self.pid_file = config_path.with_suffix(".pid")

    def start(self, ready: str | None = None) -> AgentProcess:
        self.pid_file.unlink(missing_ok=True)
        command = ["unshare", "-m", "sh", "-c", SMALL_DISK_SCRIPT, "sh", str(self.size_mb),
                   str(self.mount), str(self.kept), str(self.pid_file), sys.executable,
                   *AGENT_RUN, str(self.config_path)]  # fmt: skip
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=out, stderr=err, env=self._env
            )
        return self

    def agent_pid(self) -> int | None:
        deadline_s = time.monotonic() + PID_WAIT_S
        while time.monotonic() < deadline_s:
            if self.pid_file.exists() and (text := self.pid_file.read_text().strip()):
                return int(text)
            if self.proc is None or self.proc.poll() is not None:
                return None
            time.sleep(0.02)
        return None

    def signal(self, signum: signal.Signals) -> None:
        pid = self.agent_pid()
        if pid is not None:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                return  # it has exited already

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(KILL_TIMEOUT_S)  # the shell copies the folder out first


class Box:
    """One station box; `config` is the agent's config without [spool] path (set here)."""

    def __init__(
        self,
        label: str,
        base: Path,
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        small_disk_mb: int | None = None,
    ) -> None:
        self.label = label
        self.folder = base / label
        self.folder.mkdir(parents=True)
        self.kept = base / f"{label}.kept"
        self.small_disk_mb = small_disk_mb
        config = {**config, "spool": {**config["spool"], "path": self.folder / "spool"}}
        self.config_path = write_toml(base / f"{label}.toml", config)
        self.agent: AgentProcess
        if small_disk_mb is None:
            self.agent = AgentProcess(self.config_path, env)
        else:
            self.agent = SmallDiskAgent(
                self.config_path, self.folder, self.kept, small_disk_mb, env or {}
            )
        self.runs: list[RunEnd] = []
        self.seq_at_start = -1  # the highest segment number when the current run started
        self.exit_codes: list[int | None] = []
        self.unexpected_exits = 0

    @property
    def running(self) -> bool:
        proc = self.agent.proc
        return proc is not None and proc.poll() is None

    @property
    def spool(self) -> Path:
        """The spool as the agent sees it now (a small disk: through the agent's namespace)."""
        if isinstance(self.agent, SmallDiskAgent):
            pid = self.agent.agent_pid()
            if pid is not None and self.running:
                return Path(f"/proc/{pid}/root") / self.folder.relative_to("/") / "spool"
            return self.kept / "spool"
        return self.folder / "spool"

    def start(self) -> None:
        self.seq_at_start = highest_seq(self.spool)
        self.agent.start()

    def ended(self, how: str) -> None:
        """After a run ended (killed, stopped, or exited on its own)."""
        proc = self.agent.proc
        self.exit_codes.append(None if proc is None else proc.poll())
        self.runs.append(RunEnd(self.label, highest_seq(self.spool), how))

    def stderr_tracebacks(self) -> int:
        return self.agent.stderr().count("Traceback (most recent call last)")


# -- read-only looks into a spool -------------------------------------------------------------


def _query(spool: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query; [] while the index is missing or being created. A spool seen
    through /proc/PID/root (a small disk in the agent's mount namespace) is read from a copy:
    SQLite resolves that magic link to this namespace's "/" and would miss the tmpfs."""
    index = spool / INDEX_FILES[0]
    if not index.exists():
        return []
    if str(spool).startswith("/proc/"):
        with tempfile.TemporaryDirectory(prefix="chaos-spool-") as tmp:
            if not _copy_live_index(spool, Path(tmp)):
                return []
            return _run_query(sqlite3.connect(Path(tmp) / INDEX_FILES[0], timeout=2.0), sql, args)
    try:
        db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error:
        return []
    return _run_query(db, sql, args)


def _copy_live_index(spool: Path, dest: Path, attempts: int = 20) -> bool:
    """The index and its WAL (the WAL's -shm is rebuilt from it) as of one moment: a copy is
    kept only if no checkpoint wrote the file meanwhile (a checkpoint may be followed by a
    WAL restart, and a file older than the WAL's frames would read as an old state)."""
    index = spool / INDEX_FILES[0]
    for _ in range(attempts):
        try:
            before = index.stat()
            for name in INDEX_FILES[:2]:
                with contextlib.suppress(FileNotFoundError):
                    shutil.copyfile(spool / name, dest / name)
            after = index.stat()
        except FileNotFoundError:
            return False
        if (before.st_mtime_ns, before.st_size) == (after.st_mtime_ns, after.st_size):
            return True
        time.sleep(0.01)
    return False


def _run_query(db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    try:
        return list(db.execute(sql, args))
    except sqlite3.Error:
        return []
    finally:
        db.close()


def recording_id(spool: Path) -> str | None:
    rows = _query(spool, "SELECT value FROM meta WHERE key = 'recording_id'")
    return str(rows[0][0]) if rows else None


def highest_seq(spool: Path) -> int:
    """The highest segment number in the index or among the files (-1: none)."""
    rows = _query(spool, "SELECT MAX(seq) FROM segments")
    indexed = -1 if not rows or rows[0][0] is None else int(rows[0][0])
    files = [int(n[:8]) for n in listdir(spool / "segments") if n[:8].isdigit()]
    return max([indexed, *files])


def pending(spool: Path) -> list[int]:
    """Segments on disk the uplink does not have yet."""
    sql = ("SELECT seq FROM segments s WHERE evicted = 0 AND NOT EXISTS (SELECT 1 FROM"
           " uploads u WHERE u.seq = s.seq AND u.uplink = ?) ORDER BY seq")  # fmt: skip
    return [int(r[0]) for r in _query(spool, sql, (UPLINK,))]


def lost_seqs(spool: Path) -> set[int]:
    return {int(r[0]) for r in _query(spool, "SELECT seq FROM lost")}


def caught_writing(spool: Path) -> str | None:
    """What a kill left of a segment being stored: a temp file (killed while writing it), or
    a renamed file without its row (killed before the row's commit); None: neither."""
    names = listdir(spool / "segments")
    if any(TEMP_SUFFIX in n for n in names):
        return "a temp file (killed while writing the segment)"
    rows = {int(r[0]) for r in _query(spool, "SELECT seq FROM segments")}
    orphans = [n for n in names if n.endswith(".ts") and n[:8].isdigit() and int(n[:8]) not in rows]
    if orphans:
        return f"{orphans[0]} without its row (killed before the row's commit)"
    return None


def listdir(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


# -- what the bench breaks (between a kill and the restart) ------------------------------------


def keep_index(spool: Path, dest: Path) -> Path:
    """A copy of the index (with its WAL) in dest; returns the copy of index.sqlite."""
    dest.mkdir(parents=True)
    for name in INDEX_FILES:
        if (spool / name).exists():
            shutil.copy2(spool / name, dest / name)
    return dest / INDEX_FILES[0]


def delete_index(spool: Path) -> None:
    for name in INDEX_FILES:
        (spool / name).unlink(missing_ok=True)


def corrupt_index(spool: Path, rng: random.Random) -> None:
    """Garbage over the file's header: SQLite says "file is not a database". The WAL is
    checkpointed into the file first: a page 1 still in the WAL would hide the damage (and the
    next checkpoint would repair it)."""
    db = sqlite3.connect(spool / INDEX_FILES[0])
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    with (spool / INDEX_FILES[0]).open("r+b") as f:
        f.write(rng.randbytes(100))


def damage_pending_files(spool: Path, rng: random.Random, spare: set[int]) -> list[str]:
    """One pending segment's file deleted, another's cut to half (a disk losing data), none
    of `spare`; what was done, for the fault log."""
    seqs = [
        s for s in pending(spool)
        if s not in spare and (spool / "segments" / f"{s:08d}.ts").exists()
    ]  # fmt: skip
    if len(seqs) < 2:
        return []
    gone, cut = rng.sample(seqs, 2)
    (spool / "segments" / f"{gone:08d}.ts").unlink()
    victim = spool / "segments" / f"{cut:08d}.ts"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    return [f"deleted {gone:08d}.ts", f"truncated {cut:08d}.ts"]


# -- reading for the reconciliation ----------------------------------------------------------


def read_index(folder: Path, box: str, label: str, scratch: Path) -> IndexCopy | None:
    """The rows and losses of the index in `folder` (a spool, or a copy kept of its index),
    read from a private copy of it (its WAL replayed there, the original left alone)."""
    if not (folder / INDEX_FILES[0]).exists():
        return None
    copy = keep_index(folder, scratch / f"{box}-{label}".replace(" ", "-"))
    db = sqlite3.connect(copy)
    try:
        rec_rows = list(db.execute("SELECT value FROM meta WHERE key = 'recording_id'"))
        rec = str(rec_rows[0][0]) if rec_rows else f"{box}-unnamed"
        sql = ("SELECT seq, sha256, bytes, started_utc, duration_s, evicted, discontinuity,"
               " recovered, note, EXISTS (SELECT 1 FROM uploads u WHERE u.seq = s.seq"
               " AND u.uplink = ?) FROM segments s ORDER BY seq")  # fmt: skip
        rows = tuple(
            Row(rec, int(r[0]), str(r[1]), int(r[2]), str(r[3]), float(r[4]), bool(r[5]),
                bool(r[9]), bool(r[6]), bool(r[7]), str(r[8]))
            for r in db.execute(sql, (UPLINK,))
        )  # fmt: skip
        lost = tuple(
            Lost(rec, int(r[0]), str(r[1]), str(r[2]))
            for r in db.execute("SELECT seq, reason, cause FROM lost ORDER BY seq")
        )
    finally:
        db.close()
    return IndexCopy(box, label, rec, rows, lost)


def held_segments(copy: IndexCopy, spool: Path) -> set[tuple[str, int]]:
    """Rows of a box's final index not uploaded yet whose file is whole in its spool."""
    held = set()
    for row in copy.rows:
        if row.evicted or row.uploaded:
            continue
        path = spool / "segments" / f"{row.seq:08d}.ts"
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256:
            held.add((row.recording_id, row.seq))
    return held


def read_server(station_dir: Path) -> ServerState:
    """Every object under the station's folder on nginx, the archives' entries, the index."""
    objects = {
        str(p.relative_to(station_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(station_dir.rglob("*"))
        if p.is_file()
    }
    archives = {
        playlist.parent.name: archive_entries(playlist.read_text())[0]
        for playlist in station_dir.glob("*/archive.m3u8")
    }
    index_ids: frozenset[str] = frozenset()
    index = station_dir / "recordings.json"
    if index.exists():
        try:
            document = json.loads(index.read_text())
            index_ids = frozenset(str(e["recording_id"]) for e in document["recordings"])
        except (ValueError, KeyError, TypeError):
            index_ids = frozenset()
    return ServerState(objects, archives, index_ids)
