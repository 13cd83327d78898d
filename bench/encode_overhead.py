"""Whole-process CPU seconds per second of video: the agent against the ffmpeg command line.

Same job for both, measured in the same run: decode the same H.264 file in real time, draw the
same text (station id + local time), libx264 with the same preset, bitrate, VBV and GOP, cut
2-second MPEG-TS segments. CPU time and peak RSS come from the kernel's rusage of each child.

    .venv/bin/python -m bench.encode_overhead [--seconds 20] [--sizes 720p,1080p]

Targets (issue 2): ratio <= 1.0, agent peak RSS <= 200 MB at 720p30.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.peers.config import write_toml

SIZES = {"720p": (1280, 720, 2_500_000), "1080p": (1920, 1080, 4_500_000)}
FPS = 30
SEGMENT_S = 2
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def make_input(path: Path, width: int, height: int, seconds: int) -> None:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size={width}x{height}:rate={FPS}", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "veryfast", "-b:v", "6M", "-pix_fmt", "yuv420p",
         str(path)],
        check=True,
    )  # fmt: skip


def run_measured(cmd: list[str], seconds: float, stop_signal: int) -> tuple[float, float]:
    """Run `cmd` for `seconds` of wall time; returns (cpu_s, peak_rss_mb) of the child."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(seconds)
    if proc.poll() is not None:
        raise RuntimeError(f"{cmd[0]} exited early: {proc.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
    proc.send_signal(stop_signal)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) not in (0, 255, -signal.SIGINT):
        raise RuntimeError(f"{cmd[0]} exited with {os.waitstatus_to_exitcode(status)}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def video_seconds(directory: Path) -> float:
    total = 0.0
    for ts in sorted(directory.rglob("*.ts")):
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
             str(ts)],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        total += float(out or 0)
    return total


def bench_agent(work: Path, video: Path, width: int, height: int, bps: int, secs: float) -> dict:
    config = write_toml(
        work / "agent.toml",
        {
            "station_id": "BENCH-0001",
            "capture": {"source": f"file:{video}", "width": width, "height": height, "fps": FPS},
            "encode": {"preset": "veryfast", "segment_s": SEGMENT_S},
            "spool": {"path": str(work / "agent-spool"), "max_bytes": "10GB", "min_free_bytes": 0},
            "adapt": {  # the same fixed rung as ffmpeg: no adaptation (no uplink either)
                "enabled": False,
                "ladder": [{"width": width, "height": height, "fps": FPS, "bitrate_bps": bps}],
            },
        },
    )
    cmd = [sys.executable, "-m", "agent", "run", "--config", str(config)]
    cpu_s, rss_mb = run_measured(cmd, secs, signal.SIGTERM)
    return {"cpu_s": cpu_s, "rss_mb": rss_mb, "video_s": video_seconds(work / "agent-spool")}


def bench_ffmpeg(work: Path, video: Path, bps: int, secs: float) -> dict:
    out = work / "ffmpeg-out"
    out.mkdir()
    gop = FPS * SEGMENT_S
    clock = r"%{localtime\:%Y-%m-%d %H\\\:%M\\\:%S}"
    text = f"drawtext=fontfile={FONT}:text='BENCH-0001  {clock}'"
    text += ":x=12:y=12:fontsize=32:fontcolor=white:box=1:boxcolor=black"
    cmd = [
        "ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(video), "-vf", text,
        "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
        "-b:v", str(bps), "-maxrate", str(bps), "-bufsize", str(bps),
        "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
        "-f", "segment", "-segment_time", str(SEGMENT_S), "-segment_format", "mpegts",
        str(out / "%08d.ts"),
    ]  # fmt: skip
    cpu_s, rss_mb = run_measured(cmd, secs, signal.SIGINT)
    return {"cpu_s": cpu_s, "rss_mb": rss_mb, "video_s": video_seconds(out)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sizes", default="720p,1080p")
    args = parser.parse_args()
    if not shutil.which("ffmpeg"):
        print("ffmpeg is needed (apt-get install ffmpeg)", file=sys.stderr)
        return 2
    print(f"{'size':6} {'tool':7} {'cpu s':>7} {'video s':>8} {'cpu/video s':>12} "
          f"{'peak RSS MB':>12}")  # fmt: skip
    for size in args.sizes.split(","):
        width, height, bps = SIZES[size]
        with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
            work = Path(tmp)
            video = work / "input.mp4"
            make_input(video, width, height, seconds=10)
            results = {
                "ffmpeg": bench_ffmpeg(work, video, bps, args.seconds),
                "agent": bench_agent(work, video, width, height, bps, args.seconds),
            }
        for tool, r in results.items():
            r["per_s"] = r["cpu_s"] / r["video_s"] if r["video_s"] else float("nan")
            print(f"{size:6} {tool:7} {r['cpu_s']:7.2f} {r['video_s']:8.1f} "
                  f"{r['per_s']:12.3f} {r['rss_mb']:12.0f}")  # fmt: skip
        ratio = results["agent"]["per_s"] / results["ffmpeg"]["per_s"]
        print(f"{size:6} ratio agent/ffmpeg CPU per video second = {ratio:.2f} (target <= 1.0); "
              f"agent peak RSS {results['agent']['rss_mb']:.0f} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
