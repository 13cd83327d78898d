"""Does the agent grow over a day? A real agent process, 720p30, uploads and telemetry.

The agent runs as the service does (`station-agent run`) on a looped 720p30 H.264 file (what an
IP camera sends; a busy test pattern with --source test:noise), uploading to a real nginx and
reporting to a real mosquitto. Every minute this prints its RSS, anonymous memory, where the
resident memory is (glibc's main heap, anonymous mappings — other arenas, Python's arenas, large
blocks —, mapped files), open file descriptors, threads and the SQLite files' sizes (the spool
index and the telemetry outbox, with their -wal); at the end, the least-squares slope of each
after the first 5 minutes (warm-up: x264's and the decoder's buffers, the first uploads,
SQLite's page cache).

    .venv/bin/python -m bench.soak [--minutes 60] [--source file:PATH|test:noise]

Exits 1 when the RSS slope is 2 MB/hour or more, or file descriptors or threads grow (a slope
of one a day, with the last minutes above the first). SQLite files grow with the recording
(one row and one manifest per segment): their slopes are printed, not judged.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.encode_overhead import DEFAULT_INPUTS, make_inputs
from tests.peers.agent import AgentProcess
from tests.peers.config import write_toml
from tests.peers.mosquitto import Mosquitto
from tests.peers.nginx import Nginx

WIDTH, HEIGHT, FPS, BITRATE_BPS = 1280, 720, 30, 2_500_000
SAMPLE_S = 60.0
WARMUP_S = 300.0
RSS_SLOPE_MAX_MB_H = 2.0
# fds and threads: a slope of one per day is growth; noise (an upload's socket, a segment file
# open for a moment) averages out over an hour of samples
COUNT_SLOPE_MAX_PER_H = 1 / 24
MIB = 1024 * 1024


def read_status(pid: int) -> dict[str, float]:
    """RSS and anonymous memory (MB), threads, open file descriptors."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            values[key] = int(rest.split()[0]) * 1024 / 1e6
        elif key == "Threads":
            values[key] = int(rest)
    values["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return values | mapping_rss(pid)


def mapping_rss(pid: int) -> dict[str, float]:
    """Where the resident memory is (MB): glibc's main heap, anonymous mappings (other arenas,
    large blocks, Python's arenas, thread stacks) and mapped files (libraries, SQLite's -shm)."""
    totals = {"heap": 0.0, "anon maps": 0.0, "files": 0.0}
    kind = "files"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=6)
        if "-" in first[0] and ":" not in first[0]:  # a mapping's header: range perms ... [path]
            path = first[5] if len(first) > 5 else ""
            kind = "heap" if path == "[heap]" else "files" if path.startswith("/") else "anon maps"
        elif first[0] == "Rss:":
            totals[kind] += int(first[1]) * 1024 / 1e6
    return totals


def sqlite_sizes(folder: Path) -> dict[str, float]:
    """kB of each SQLite file under `folder` (with its -wal)."""
    sizes: dict[str, float] = {}
    for path in sorted(folder.rglob("*.sqlite*")):
        if path.suffix in (".sqlite", ".sqlite3") or path.name.endswith("-wal"):
            sizes[path.relative_to(folder).as_posix()] = path.stat().st_size / 1e3
    return sizes


def slope_per_hour(times_s: list[float], values: list[float]) -> float:
    """Least-squares slope, per hour."""
    n = len(times_s)
    if n < 2:
        return float("nan")
    mt, mv = sum(times_s) / n, sum(values) / n
    var = sum((t - mt) ** 2 for t in times_s)
    cov = sum((t - mt) * (v - mv) for t, v in zip(times_s, values, strict=True))
    return cov / var * 3600.0 if var else float("nan")


def agent_config(work: Path, source: str, nginx: Nginx, mosquitto: Mosquitto) -> Path:
    return write_toml(
        work / "station.toml",
        {
            "station_id": "SOAK-0001",
            "capture": {"source": source, "width": WIDTH, "height": HEIGHT, "fps": FPS},
            "encode": {"preset": "veryfast", "segment_s": 2},
            # the top rung all along: on a busy box the CPU cap would hold a lower picture for
            # part of the run (it did, for 42 minutes), and its memory is not 720p30's
            "adapt": {
                "enabled": False,
                "ladder": [
                    {"width": WIDTH, "height": HEIGHT, "fps": FPS, "bitrate_bps": BITRATE_BPS}
                ],
            },
            "spool": {"path": str(work / "spool"), "max_bytes": "4GB", "min_free_bytes": 0},
            "uplink": {"http": {"url": nginx.url}},
            "mqtt": {"url": mosquitto.url, "heartbeat_s": 10},
        },
    )


def soak(work: Path, source: str, minutes: float) -> int:
    nginx = Nginx(work / "nginx")
    mosquitto = Mosquitto(work / "mosquitto")
    nginx.start()
    mosquitto.start()
    agent = AgentProcess(agent_config(work, source, nginx, mosquitto)).start()
    rows: list[tuple[float, dict[str, float]]] = []
    try:
        assert agent.proc is not None
        pid = agent.proc.pid
        started_s = time.monotonic()
        print(f"soak: pid {pid}, {source}, {minutes:g} min, a row a minute", flush=True)
        header = (f"{'min':>5} {'RSS MB':>8} {'anon MB':>8} {'heap':>6} {'maps':>6} {'files':>6} "
                  f"{'fds':>5} {'threads':>7}  sqlite kB")  # fmt: skip
        print(header, flush=True)
        while (elapsed_s := time.monotonic() - started_s) < minutes * 60:
            time.sleep(min(SAMPLE_S, minutes * 60 - elapsed_s) if rows else 5.0)
            if agent.proc.poll() is not None:
                print(f"the agent exited: {agent.stderr()[-2000:]}", file=sys.stderr)
                return 2
            now_s = time.monotonic() - started_s
            sample = read_status(pid) | sqlite_sizes(work)
            rows.append((now_s, sample))
            files = "  ".join(f"{k.split('/')[-1]} {v:.0f}" for k, v in sample.items() if "/" in k)
            print(f"{now_s / 60:5.1f} {sample['VmRSS']:8.1f} {sample['RssAnon']:8.1f} "
                  f"{sample['heap']:6.1f} {sample['anon maps']:6.1f} {sample['files']:6.1f} "
                  f"{sample['fds']:5.0f} {sample['Threads']:7.0f}  {files}",
                  flush=True)  # fmt: skip
        uploaded = len(list((nginx.root / "SOAK-0001").rglob("*.ts")))
    finally:
        code = agent.terminate()
        mosquitto.stop()
        nginx.stop()
    print(f"\nclean stop: exit {code}; {uploaded} segments on the server")
    return report(rows)


def report(rows: list[tuple[float, dict[str, float]]]) -> int:
    steady = [(t, s) for t, s in rows if t >= WARMUP_S]
    if len(steady) < 3:
        print(
            f"too short to judge: {len(steady)} samples after the {WARMUP_S / 60:.0f} min warm-up"
        )
        return 1
    times = [t for t, _ in steady]
    keys = [k for k in steady[-1][1] if all(k in s for _, s in steady)]
    print(f"slopes after the first {WARMUP_S / 60:.0f} minutes ({len(steady)} samples):")
    slopes = {}
    for key in keys:
        values = [s[key] for _, s in steady]
        slopes[key] = slope_per_hour(times, values)
        unit = {"fds": "", "Threads": ""}.get(key, "kB" if "/" in key else "MB")
        print(f"  {key:28} {slopes[key]:+9.2f} {unit}/hour  (first {values[0]:.1f}, "
              f"last {values[-1]:.1f}, min {min(values):.1f}, max {max(values):.1f})")  # fmt: skip
    missed = []
    if slopes["VmRSS"] >= RSS_SLOPE_MAX_MB_H:
        missed.append(f"RSS grows {slopes['VmRSS']:+.2f} MB/hour (target < {RSS_SLOPE_MAX_MB_H})")
    for key in ("fds", "Threads"):
        first, last = steady[0][1][key], steady[-1][1][key]
        if slopes[key] > COUNT_SLOPE_MAX_PER_H and last > first:
            missed.append(f"{key} grow: {first:.0f} -> {last:.0f} ({slopes[key]:+.2f}/hour)")
    for line in missed:
        print(f"MISSED {line}")
    return 1 if missed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--source", default=None, help="default: a 720p30 H.264 file, looped")
    parser.add_argument("--inputs", type=Path, default=DEFAULT_INPUTS, help="input cache")
    args = parser.parse_args()
    source = args.source
    if source is None:
        source = f"file:{make_inputs(args.inputs, WIDTH, HEIGHT, 20)['h264']}"
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        return soak(Path(tmp), source, args.minutes)


if __name__ == "__main__":
    # run in the background, SIGINT is ignored: SIGTERM stops it cleanly (agent and peers)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(3))
    try:
        sys.exit(main())
    except subprocess.SubprocessError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        sys.exit(2)
