"""Camera-health cost and detection latency.

1. CPU cost of `CameraHealth.observe` over a 720p30 stream, as a fraction of the CPU that
   libx264 (preset veryfast, PyAV) spends encoding the same frames in the same run. Target of
   issue 6: <= 2 %.
2. Detection latency per fault kind (simulated time): from the moment the fault is at full
   strength to the `health_raised` event, and from its end to `health_cleared`.

    .venv/bin/python -m bench.health_cost [--seconds 20]

Footage: a real photograph (skimage.data) with sensor noise, changing light and people walking
(tests/peers/video.py). CPU is process time (all threads), so x264's worker threads count.
"""

from __future__ import annotations

import argparse
import statistics
import time
from fractions import Fraction

import av
import numpy as np

from agent.health.camera import CameraHealth
from agent.health.config import HealthConfig
from tests.peers.video import CONDITION_OF, FAULT_KINDS, RAMP_S, Fault, SceneVideo, TimedSink

WIDTH, HEIGHT, FPS = 1280, 720, 30
DISTINCT_FRAMES = 60  # frames generated and cycled (memory); each call gets a distinct object
BITRATE_BPS = 2_500_000  # the agent's default [encode] bitrate


def frames_720p() -> list[np.ndarray]:
    video = SceneVideo("astronaut", WIDTH, HEIGHT, seed=11)
    return [video.frame(i / FPS) for i in range(DISTINCT_FRAMES)]


def encode_cpu_s(frames: list[np.ndarray], count: int) -> tuple[float, float]:
    """(CPU s of x264 encode alone, CPU s of BGR->I420 conversion) for `count` frames."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    ctx.framerate = Fraction(FPS)
    ctx.bit_rate = BITRATE_BPS
    ctx.options = {"preset": "veryfast", "tune": "zerolatency"}
    t0 = time.process_time()
    yuv = [av.VideoFrame.from_ndarray(f, format="bgr24").reformat(format="yuv420p") for f in frames]
    convert_s = (time.process_time() - t0) * count / len(frames)
    t0 = time.process_time()
    for i in range(count):
        frame = yuv[i % len(yuv)]
        frame.pts = i
        ctx.encode(frame)
    ctx.encode(None)
    return time.process_time() - t0, convert_s


def health_cpu_s(frames: list[np.ndarray], count: int) -> tuple[float, list[float], list[float]]:
    """(CPU s of observe over `count` frames, wall ms of analysing calls, of the others)."""
    cfg = HealthConfig()
    health = CameraHealth(cfg, TimedSink(), expected_fps=FPS)
    took_ms: list[float] = []
    t0 = time.process_time()
    for i in range(count):  # consecutive frames are distinct objects, as from the capture
        start = time.perf_counter()
        health.observe(i / FPS, frames[i % len(frames)])
        took_ms.append((time.perf_counter() - start) * 1e3)
    cpu_s = time.process_time() - t0
    analyses = max(1, round(count / FPS * cfg.analysis_hz))
    took_ms.sort()
    return cpu_s, took_ms[-analyses:], took_ms[:-analyses]


def latency(kind: str, fps: float) -> tuple[float, float | None, float | None]:
    cfg = HealthConfig()
    condition = CONDITION_OF[kind]
    section = getattr(cfg, condition)
    start_s, ramp_s = 14.0, RAMP_S.get(kind, 0.0)
    end_s = start_s + ramp_s + section.raise_after_s + 8.0
    video = SceneVideo("astronaut", WIDTH, HEIGHT, [Fault(kind, start_s, end_s, ramp_s)], seed=12)
    sink = TimedSink()
    health = CameraHealth(cfg, sink, expected_fps=fps)
    for i in range(round((end_s + section.clear_after_s + 6.0) * fps)):
        sink.now_s = i / fps
        health.observe(sink.now_s, video.frame(sink.now_s))
    raised = sink.first("health_raised", condition)
    cleared = sink.first("health_cleared", condition)
    return (
        section.raise_after_s,
        None if raised is None else raised - (start_s + ramp_s),
        None if cleared is None else cleared - end_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="720p30 video to measure")
    args = parser.parse_args()
    count = int(args.seconds * FPS)
    frames = frames_720p()

    encode_s, convert_s = encode_cpu_s(frames, count)
    runs = [health_cpu_s(frames, count) for _ in range(3)]
    health_s = min(r[0] for r in runs)
    analysing, skipping = runs[0][1], runs[0][2]
    print(f"720p30, {args.seconds:.0f} s ({count} frames), CPU seconds (process time):")
    print(f"  libx264 veryfast encode          {encode_s:8.3f} s  (baseline)")
    print(f"  BGR->I420 conversion             {convert_s:8.3f} s")
    print(f"  CameraHealth.observe, all frames {health_s:8.3f} s")
    print(f"  health / encode                  {health_s / encode_s:8.2%}   (target <= 2 %)")
    print(f"  health / (convert + encode)      {health_s / (encode_s + convert_s):8.2%}")
    if analysing:
        print(
            f"  per analysis (2 Hz): median {statistics.median(analysing):.2f} ms, "
            f"max {max(analysing):.2f} ms; other frames: median "
            f"{statistics.median(skipping) * 1e3:.1f} us"
        )

    print("\ndetection latency, 720p at 10 fps simulated (seconds after the fault is full):")
    print(f"  {'fault':<11} {'condition':<11} {'debounce':>8} {'raised':>8} {'cleared':>8}")
    for kind in FAULT_KINDS:
        debounce_s, raised_s, cleared_s = latency(kind, 10.0)
        raised = "missed" if raised_s is None else f"{raised_s:.1f}"
        cleared = "never" if cleared_s is None else f"{cleared_s:.1f}"
        print(f"  {kind:<11} {CONDITION_OF[kind]:<11} {debounce_s:>8.1f} {raised:>8} {cleared:>8}")


if __name__ == "__main__":
    main()
