"""The agent against the ffmpeg command line doing the same job, whole processes, paired runs.

Both decode the same input file in real time, burn in the station id and the clock, encode
libx264 veryfast zerolatency 4:2:0 at the same bitrate, VBV and GOP, and cut 2-second MPEG-TS
segments (the agent into its spool, the CLI as HLS). Measured per run, from the kernel's rusage
of each child: CPU seconds (user + system) and peak RSS. Each job runs `--pairs` pairs, agent and
CLI in turn (the order alternates); the table gives the ratio of the medians of CPU seconds per
second of video and of peak RSS. Every output segment is judged with ffprobe (H.264, the size,
yuv420p, starts with a keyframe); the frames the agent skipped come from gaps in its timestamps,
the CLI's lateness from its wall time against the input's length (it falls behind instead).

Jobs: 720p30 and 1080p30 from a raw input (rawvideo yuv420p in NUT, made once by ffmpeg from
its `testsrc2` pattern with temporal sensor-like noise, `noise=alls=8:allf=t`, so the encoder
works as on a camera: what a raw 4:2:0 camera or a capture card delivers), and 720p30 from an
H.264 input (that footage encoded at 8 Mbit/s, what an IP camera or an H.264 webcam sends).
Inputs are kept in --inputs for the next run. (A lossless FFV1 input was tried first: its
decoder took ~75 % of both programs at 720p and 1.8 CPU-s per second at 1080p, more than this
2-core box has, so the figures measured the decoder.)

    .venv/bin/python -m bench.encode_overhead [--quick] [--seconds 60] [--pairs 3]
        [--jobs 720p-raw,1080p-raw,720p-h264]

--quick: 20 s inputs, 2 pairs, the 720p jobs only. The steady ratio leaves out each process's
start-up (CPU from the first segment on, per second of video after it: what a day-long run
pays); the targets are judged on the whole processes. The floor column is the least these libraries
allow: PyAV decoding and libx264 encoding the same file in one bare process, as a share of the
CLI (below the 0.9 target it cannot be met by removing the agent's own work alone). The
libx264 column compares the libraries themselves on the raw jobs: the wheel's libx264 (PyAV
bundles its own build) against the system's that the CLI uses, the same frames and settings,
single-threaded, flat out (1.00 at 720p when it was added: the builds cost the same). Last
line: the RSS of a process that has only imported what `run` imports (the part of the peak the
agent's work cannot remove). Exits 1
when a target is missed: agent CPU <= 0.9x the CLI, peak RSS <= 1.3x, first segment on disk
within segment_s + 1 s of the start, every output valid. (The previous version of this bench
ran each tool once, unpaired, on a test pattern encoded as H.264; it answered nothing this one
does not.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.config import write_toml

FPS = 30
SEGMENT_S = 2
GOP = FPS * SEGMENT_S
STATION = "BENCH-0001"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
# job -> (width, height, bitrate, input kind)
JOBS = {
    "720p-raw": (1280, 720, 2_500_000, "raw"),
    "1080p-raw": (1920, 1080, 4_500_000, "raw"),
    "720p-h264": (1280, 720, 2_500_000, "h264"),
}
QUICK_JOBS = "720p-raw,720p-h264"
CPU_TARGET = 0.9  # agent CPU / CLI CPU (issue 15)
RSS_TARGET = 1.3  # agent peak RSS / CLI peak RSS (issue 15)
FIRST_SEGMENT_SLACK_S = 1.0  # first segment on disk within segment_s + this of the start
SOURCE_FILTER = "noise=alls=8:allf=t"  # temporal noise, like a sensor in a lit room
H264_INPUT_BPS = 8_000_000
BITRATE_TOLERANCE = 0.25  # each output's bitrate within +-25 % of the target (VBV-capped CBR)
DEFAULT_INPUTS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bench-encode"


@dataclass
class Run:
    tool: str
    cpu_s: float
    rss_mb: float
    wall_s: float
    anon_mb: float = 0.0  # peak anonymous memory (RSS less the mapped files: libraries)
    cpu_at_first_s: float = 0.0  # CPU seconds spent when the first segment appeared
    video_s: float = 0.0
    frames: int = 0
    skipped: int = 0  # agent: timestamps it left out; CLI: 0 (it falls behind instead)
    late_s: float = 0.0  # wall time beyond the input's length (CLI) / beyond video + start
    first_segment_s: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def cpu_per_video_s(self) -> float:
        return self.cpu_s / self.video_s if self.video_s else float("nan")

    @property
    def steady_cpu_per_video_s(self) -> float:
        """After the first segment: start-up (imports, opening) left out."""
        later_s = self.video_s - SEGMENT_S
        return (self.cpu_s - self.cpu_at_first_s) / later_s if later_s > 0 else float("nan")


# -- inputs ------------------------------------------------------------------------------------


def make_inputs(folder: Path, width: int, height: int, seconds: int) -> dict[str, Path]:
    """The lossless input and its H.264 version (made once; kept for the next run)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / f"testsrc2-noise-{width}x{height}-{seconds}s.nut"
    h264 = folder / f"testsrc2-noise-{width}x{height}-{seconds}s-h264.mp4"
    if not raw.exists():
        print(f"making {raw.name} (ffmpeg testsrc2 + {SOURCE_FILTER}, rawvideo)", flush=True)
        pattern = f"testsrc2=size={width}x{height}:rate={FPS},{SOURCE_FILTER},format=yuv420p"
        _ffmpeg_to(raw, ["-f", "lavfi", "-i", pattern, "-t", str(seconds),
                         "-c:v", "rawvideo"])  # fmt: skip
    if not h264.exists():
        print(f"making {h264.name} (libx264 {H264_INPUT_BPS // 1_000_000} Mbit/s)", flush=True)
        _ffmpeg_to(h264, ["-i", str(raw), "-c:v", "libx264", "-preset", "veryfast", "-b:v",
                          str(H264_INPUT_BPS), "-g", str(GOP), "-pix_fmt", "yuv420p"])  # fmt: skip
    return {"raw": raw, "h264": h264}


def _ffmpeg_to(out: Path, args: list[str]) -> None:
    partial = out.with_name(out.stem + ".part" + out.suffix)
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args, str(partial)], check=True)
    partial.rename(out)


# -- running a whole process -------------------------------------------------------------------


def _segments(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("[0-9]*.ts") if p.is_file())


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _anon_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass  # exited between two looks: its peak was seen before
    return 0.0


def run_process(
    cmd: list[str], out_dir: Path, stop_after_segments: int | None, limit_s: float, sig: int
) -> tuple[float, float, float, float | None, float, float]:
    """Run `cmd` until it exits (or, with `stop_after_segments`, until that many segments are
    in `out_dir`, then send `sig`). Returns (cpu_s, peak_rss_mb, wall_s, first_segment_s,
    peak_anon_mb, cpu_s when the first segment appeared)."""
    started_s = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_segment_s = None
    signalled = False
    anon_mb, polls, cpu_at_first_s = 0.0, 0, 0.0
    while True:  # wait4, not poll(): poll() would reap the child and lose its rusage
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        polls += 1
        if polls % 10 == 0:
            anon_mb = max(anon_mb, _anon_mb(proc.pid))
        now_s = time.monotonic()
        if now_s - started_s > limit_s:
            proc.kill()
        count = len(_segments(out_dir)) if out_dir.exists() else 0
        if count and first_segment_s is None:
            first_segment_s = now_s - started_s
            cpu_at_first_s = _cpu_s(proc.pid)
        if stop_after_segments is not None and count >= stop_after_segments and not signalled:
            proc.send_signal(sig)
            signalled = True
        time.sleep(0.02)
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    wall_s = time.monotonic() - started_s
    err = proc.stderr.read().decode(errors="replace")[-800:] if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... exited with {code}: {err}")
    cpu_s = usage.ru_utime + usage.ru_stime
    return cpu_s, usage.ru_maxrss / 1024, wall_s, first_segment_s, anon_mb, cpu_at_first_s


def run_agent(work: Path, video: Path, width: int, height: int, bps: int, input_s: float) -> Run:
    spool = work / "agent-spool"
    config = write_toml(
        work / "agent.toml",
        {
            "station_id": STATION,
            "capture": {"source": f"file:{video}", "width": width, "height": height, "fps": FPS},
            "encode": {"preset": "veryfast", "segment_s": SEGMENT_S},
            "spool": {"path": str(spool), "max_bytes": "20GB", "min_free_bytes": 0},
            "adapt": {  # the CLI's fixed rung: no adaptation (no uplink either)
                "enabled": False,
                "ladder": [{"width": width, "height": height, "fps": FPS, "bitrate_bps": bps}],
            },
        },
    )
    cmd = [sys.executable, "-m", "agent", "run", "--config", str(config)]
    wanted = round(input_s / SEGMENT_S)
    cpu_s, rss_mb, wall_s, first_s, anon_mb, cpu_first_s = run_process(
        cmd, spool, wanted, input_s * 3 + 60, signal.SIGTERM
    )
    run = Run("agent", cpu_s, rss_mb, wall_s, anon_mb, cpu_first_s, first_segment_s=first_s)
    judge(run, _segments(spool), width, height, bps)
    return run


def run_cli(work: Path, video: Path, width: int, height: int, bps: int, input_s: float) -> Run:
    out = work / "cli-out"
    out.mkdir()
    clock = r"%{localtime\:%Y-%m-%d %H\\\:%M\\\:%S}"
    text = f"drawtext=fontfile={FONT}:text='{STATION}  {clock}'"
    text += f":x=12:y=12:fontsize={round(height * 0.045)}:fontcolor=white:box=1:boxcolor=black"
    cmd = [
        "ffmpeg", "-v", "error", "-nostdin", "-re", "-i", str(video), "-vf", text,
        "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
        "-b:v", str(bps), "-maxrate", str(bps), "-bufsize", str(bps),
        "-g", str(GOP), "-keyint_min", str(GOP), "-sc_threshold", "0",
        "-force_key_frames", f"expr:gte(t,n_forced*{SEGMENT_S})",
        "-f", "hls", "-hls_time", str(SEGMENT_S), "-hls_list_size", "0",
        "-hls_segment_type", "mpegts", "-hls_segment_filename", str(out / "%08d.ts"),
        str(out / "index.m3u8"),
    ]  # fmt: skip
    cpu_s, rss_mb, wall_s, first_s, anon_mb, cpu_first_s = run_process(
        cmd, out, None, input_s * 3 + 60, signal.SIGINT
    )
    run = Run("ffmpeg", cpu_s, rss_mb, wall_s, anon_mb, cpu_first_s, first_segment_s=first_s)
    judge(run, _segments(out), width, height, bps)
    run.late_s = max(0.0, wall_s - input_s)
    return run


def floor_child(video: Path, width: int, height: int, bps: int) -> int:
    """The least these libraries allow: PyAV decodes the file (slice threads, as the agent) and
    libx264 encodes it with the agent's settings, in real time, nothing else (no overlay,
    muxing, spool or threads of its own). Run as its own process (--floor-child) and measured
    as the others."""
    import av

    from agent.adapt.ladder import Rung
    from agent.capture.frames import i420_from_av
    from agent.encode.encoder import PTS_HZ, open_video_encoder

    encoder = open_video_encoder("libx264", Rung(width, height, FPS, bps), "veryfast", 0, GOP)
    started_s = time.monotonic()
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        for k, frame in enumerate(container.decode(stream)):
            encoder.encode(i420_from_av(frame), k * PTS_HZ // FPS, keyframe=k % GOP == 0)
            # in real time, as the agent and `ffmpeg -re` (flat out costs more per frame here)
            time.sleep(max(0.0, started_s + (k + 1) / FPS - time.monotonic()))
    encoder.flush()
    return 0


def imports_rss_mb() -> tuple[float, float]:
    """RSS and anonymous memory (MiB) of a Python process that has only imported what
    `station-agent run` imports (PyAV, numpy, OpenCV, pydantic, paho-mqtt, cryptography,
    httpx, sqlite3 and the agent's own modules), before it opens anything: the part of the
    agent's peak that no change to its work can remove."""
    code = (
        "import agent.cli, agent.service.runner\n"
        "from pathlib import Path\n"
        "s = dict(l.split(':', 1) for l in Path('/proc/self/status').read_text().splitlines())\n"
        "print(int(s['VmRSS'].split()[0]) / 1024, int(s['RssAnon'].split()[0]) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rss_mb, anon_mb = map(float, out.stdout.split())
    return rss_mb, anon_mb


def run_floor(video: Path, width: int, height: int, bps: int, input_s: float) -> float:
    """CPU seconds per second of video of `floor_child` as a whole process."""
    cmd = [sys.executable, "-m", "bench.encode_overhead", "--floor-child", str(video),
           str(width), str(height), str(bps)]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        cpu_s = run_process(cmd, Path(tmp), None, input_s * 3 + 60, signal.SIGINT)[0]
    return cpu_s / input_s


X264_FRAMES = 300  # 10 s at 30 fps: the libraries' comparison


def x264_child(video: Path, width: int, height: int, bps: int) -> int:
    """PyAV's libx264 (the one bundled in its wheel, which the agent uses) on the first
    X264_FRAMES of a raw input, single-threaded and flat out, into nothing. Prints the CPU
    seconds of the loop (decoding the raw frames is ~1 % of it): Python's start-up and
    imports, ~0.35 s here, are not libx264's."""
    import resource

    import av

    from agent.adapt.ladder import Rung
    from agent.capture.frames import i420_from_av
    from agent.encode.encoder import PTS_HZ, open_video_encoder

    def cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
        return usage.ru_utime + usage.ru_stime

    encoder = open_video_encoder("libx264", Rung(width, height, FPS, bps), "veryfast", 1, GOP)
    started_s = cpu_s()
    with av.open(str(video)) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k == X264_FRAMES:
                break
            encoder.encode(i420_from_av(frame), k * PTS_HZ // FPS, keyframe=k % GOP == 0)
    encoder.flush()
    print(f"{cpu_s() - started_s:.3f}")
    return 0


def x264_libraries(video: Path, width: int, height: int, bps: int) -> tuple[float, float]:
    """CPU seconds of libx264 alone, the wheel's (PyAV) and the system's (the ffmpeg CLI), on
    the same frames with the same settings, single-threaded: the part of the gap to the CLI
    that is the library build, not the agent."""
    wheel = [sys.executable, "-m", "bench.encode_overhead", "--x264-child", str(video),
             str(width), str(height), str(bps)]  # fmt: skip
    system = [
        "ffmpeg", "-v", "error", "-nostdin", "-i", str(video), "-frames:v", str(X264_FRAMES),
        "-c:v", "libx264", "-threads", "1", "-preset", "veryfast", "-tune", "zerolatency",
        "-b:v", str(bps), "-maxrate", str(bps), "-bufsize", str(bps), "-g", str(GOP),
        "-f", "null", "-",
    ]  # fmt: skip
    wheel_s = float(subprocess.run(wheel, capture_output=True, text=True, check=True).stdout)
    with tempfile.TemporaryDirectory(prefix="bench-x264-") as tmp:  # the whole CLI process
        system_s = run_process(system, Path(tmp), None, 300, signal.SIGINT)[0]
    return wheel_s, system_s


# -- judging the output ------------------------------------------------------------------------


def judge(run: Run, segments: list[Path], width: int, height: int, bps: int) -> None:
    """Fill in video seconds, frames and skipped frames from the segments; note any problem."""
    if not segments:
        run.problems.append("no segments")
        return
    frame_ticks = 90_000 // FPS
    total_bytes = 0
    for ts in segments:
        total_bytes += ts.stat().st_size
        probe = _probe(ts)
        streams = probe["streams"]
        if len(streams) != 1:
            run.problems.append(f"{ts.name}: {len(streams)} streams")
            continue
        s = streams[0]
        if (s.get("codec_name"), s.get("width"), s.get("height"), s.get("pix_fmt")) != (
            "h264",
            width,
            height,
            "yuv420p",
        ):
            run.problems.append(
                f"{ts.name}: {s.get('codec_name')} {s.get('width')}x{s.get('height')} "
                f"{s.get('pix_fmt')}"
            )
        packets = probe["packets"]
        if not packets or "K" not in packets[0].get("flags", ""):
            run.problems.append(f"{ts.name}: does not start with a keyframe")
        pts = sorted(int(p["pts"]) for p in packets if "pts" in p)
        gaps = sum(
            max(0, round((b - a) / frame_ticks) - 1) for a, b in zip(pts, pts[1:], strict=False)
        )
        run.frames += len(pts)
        run.skipped += gaps
        run.video_s += (len(pts) + gaps) / FPS
    bitrate = total_bytes * 8 / run.video_s if run.video_s else 0.0
    if abs(bitrate / bps - 1) > BITRATE_TOLERANCE:
        run.problems.append(f"bitrate {bitrate / 1e6:.2f} Mbit/s for a {bps / 1e6:.2f} target")


def _probe(ts: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_entries",
         "stream=codec_name,width,height,pix_fmt:packet=pts,flags", str(ts)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result: dict = json.loads(out)
    result.setdefault("packets", [])
    result.setdefault("streams", [])
    return result


# -- the table ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_job(job: str, inputs: dict[str, Path], input_s: float, pairs: int) -> dict[str, list[Run]]:
    width, height, bps, kind = JOBS[job]
    video = inputs[kind]
    runs: dict[str, list[Run]] = {"agent": [], "ffmpeg": [], "floor": []}
    floor = run_floor(video, width, height, bps, input_s)
    runs["floor"].append(Run("floor", floor * input_s, 0.0, 0.0, video_s=input_s))
    print(f"  {job} floor (PyAV decode + libx264 only): {floor:.3f} CPU-s/video-s", flush=True)
    if kind == "raw":
        wheel_s, system_s = x264_libraries(video, width, height, bps)
        runs["x264"] = [Run("x264", wheel_s, 0.0, 0.0), Run("x264-system", system_s, 0.0, 0.0)]
        print(f"  {job} libx264 alone, {X264_FRAMES} frames, 1 thread: PyAV's wheel "
              f"{wheel_s:.2f} CPU-s, the system's (CLI) {system_s:.2f} CPU-s = "
              f"{wheel_s / system_s:.2f}x", flush=True)  # fmt: skip
    for k in range(pairs):
        order = [("agent", run_agent), ("ffmpeg", run_cli)]
        for tool, runner in order if k % 2 == 0 else order[::-1]:
            with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
                run = runner(Path(tmp), video, width, height, bps, input_s)
            runs[tool].append(run)
            print(
                f"  {job} pair {k + 1} {tool:6}: {run.cpu_s:6.1f} CPU-s for {run.video_s:5.1f} "
                f"video-s ({run.cpu_per_video_s:.3f}/s, "
                f"steady {run.steady_cpu_per_video_s:.3f}/s), "
                f"peak RSS {run.rss_mb:5.0f} MiB "
                f"(anon {run.anon_mb:4.0f}), "
                f"skipped {run.skipped}, late {run.late_s:.1f} s, first segment "
                f"{_s(run.first_segment_s)}"
                + (f"  PROBLEMS: {run.problems}" if run.problems else ""),
                flush=True,
            )
    return runs


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def report(results: dict[str, dict[str, list[Run]]]) -> list[str]:
    """Print the table; return the targets missed."""
    missed = []
    print()
    print(
        "| job | agent CPU-s/video-s | ffmpeg CPU-s/video-s | ratio | steady ratio | floor/ffmpeg "
        "| libx264 wheel/system | agent peak RSS (anon) | ffmpeg peak RSS (anon) | ratio "
        "| agent skipped | ffmpeg late | agent first segment |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for job, runs in results.items():
        a, f = runs["agent"], runs["ffmpeg"]
        cpu_a, cpu_f = (
            median([r.cpu_per_video_s for r in a]),
            median([r.cpu_per_video_s for r in f]),
        )
        rss_a, rss_f = median([r.rss_mb for r in a]), median([r.rss_mb for r in f])
        anon_a, anon_f = median([r.anon_mb for r in a]), median([r.anon_mb for r in f])
        first = median([r.first_segment_s for r in a if r.first_segment_s is not None])
        skipped = ",".join(str(r.skipped) for r in a)
        late = ",".join(f"{r.late_s:.1f}" for r in f)
        floor = median([r.cpu_per_video_s for r in runs["floor"]])
        x264 = runs.get("x264")
        libraries = f"{x264[0].cpu_s / x264[1].cpu_s:.2f}" if x264 else "-"
        steady_a = median([r.steady_cpu_per_video_s for r in a])
        steady_f = median([r.steady_cpu_per_video_s for r in f])
        print(f"| {job} | {cpu_a:.3f} | {cpu_f:.3f} | {cpu_a / cpu_f:.2f} "
              f"| {steady_a / steady_f:.2f} | {floor / cpu_f:.2f} | {libraries} "
              f"| {rss_a:.0f} MiB "
              f"({anon_a:.0f}) | {rss_f:.0f} MiB ({anon_f:.0f}) | {rss_a / rss_f:.2f} | {skipped} "
              f"| {late} s | {first:.2f} s |")  # fmt: skip
        if cpu_a / cpu_f > CPU_TARGET:
            missed.append(f"{job}: CPU ratio {cpu_a / cpu_f:.2f} > {CPU_TARGET}")
        if rss_a / rss_f > RSS_TARGET:
            missed.append(f"{job}: peak RSS ratio {rss_a / rss_f:.2f} > {RSS_TARGET}")
        if not first <= SEGMENT_S + FIRST_SEGMENT_SLACK_S:
            missed.append(f"{job}: first segment after {first:.2f} s > {SEGMENT_S + 1} s")
        for r in a + f:
            missed += [f"{job} {r.tool}: {p}" for p in r.problems]
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 s inputs, 2 pairs, 720p only")
    parser.add_argument("--seconds", type=int, default=60, help="input length")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--jobs", default=",".join(JOBS))
    parser.add_argument("--inputs", type=Path, default=DEFAULT_INPUTS, help="input cache")
    parser.add_argument("--floor-child", nargs=4, metavar=("VIDEO", "W", "H", "BPS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--x264-child", nargs=4, metavar=("VIDEO", "W", "H", "BPS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.floor_child:
        video, width, height, bps = args.floor_child
        return floor_child(Path(video), int(width), int(height), int(bps))
    if args.x264_child:
        video, width, height, bps = args.x264_child
        return x264_child(Path(video), int(width), int(height), int(bps))
    if args.quick:
        args.seconds, args.pairs, args.jobs = 20, 2, QUICK_JOBS
    if not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        print("ffmpeg and ffprobe are needed (apt-get install ffmpeg)", file=sys.stderr)
        return 2
    results = {}
    for job in args.jobs.split(","):
        width, height, _, _ = JOBS[job]
        inputs = make_inputs(args.inputs, width, height, args.seconds)
        results[job] = run_job(job, inputs, args.seconds, args.pairs)
    missed = report(results)
    rss_mb, anon_mb = imports_rss_mb()
    print(f"\nthe agent's imports alone (what `run` imports, before any work): RSS "
          f"{rss_mb:.0f} MiB (anon {anon_mb:.0f})")  # fmt: skip
    print(f"\ntargets: CPU <= {CPU_TARGET}x, peak RSS <= {RSS_TARGET}x the CLI, first segment "
          f"<= {SEGMENT_S + FIRST_SEGMENT_SLACK_S:.0f} s, every output valid")  # fmt: skip
    for line in missed:
        print(f"MISSED {line}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
