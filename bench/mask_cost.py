"""What privacy masks add to the per-frame cost at 1080p30 (issue 8 target: under 1 %).

Baseline, measured in the same run: the pipeline's main per-frame work on the same 1080p
frames, BGR -> I420 (cv2.cvtColor) and a libx264 veryfast/zerolatency encode with PyAV.
Masks: a typical station with 2-3 booths (a quarter of the frame), solid, pixelated and mixed.
Figures are wall-clock and process CPU time per frame; CPU is the fairer comparison since
libx264 runs on several threads while apply() runs on one.

    .venv/bin/python -m bench.mask_cost [--frames 120] [--repeats 300]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
import cv2
import numpy as np

from agent.capture.privacy import PrivacyConfig, PrivacyMasker
from agent.capture.sources import TestPatternSource

WIDTH, HEIGHT, FPS = 1920, 1080, 30
BITRATE_BPS = 4_000_000  # a 1080p30 rung
SENSOR_NOISE_SIGMA = 2.0  # a webcam's noise floor: keeps x264 from coasting on a static pattern
BOOTH_LEFT = {"rect": [0.0, 0.35, 0.18, 1.0]}
BOOTH_RIGHT = {"polygon": [[0.62, 0.3], [0.85, 0.28], [0.88, 0.75], [0.6, 0.8]]}
BOOTH_BACK = {"rect": [0.4, 0.0, 0.55, 0.2]}
CASES: dict[str, dict[str, Any]] = {
    "2 masks solid": {"masks": [BOOTH_LEFT, BOOTH_RIGHT]},
    "3 masks solid": {"masks": [BOOTH_LEFT, BOOTH_RIGHT, BOOTH_BACK]},
    "2 masks pixelate": {"masks": [BOOTH_LEFT, BOOTH_RIGHT], "fill": "pixelate"},
    "3 masks pixelate": {"masks": [BOOTH_LEFT, BOOTH_RIGHT, BOOTH_BACK], "fill": "pixelate"},
    "3 masks mixed": {
        "masks": [BOOTH_LEFT, BOOTH_RIGHT | {"fill": "pixelate"}, BOOTH_BACK | {"fill": "pixelate"}]
    },
    "no masks": {"masks": []},
}


def camera_frames(count: int) -> list[np.ndarray]:
    source = TestPatternSource(WIDTH, HEIGHT, FPS, clock=lambda: 0.0, sleep=lambda _s: None)
    rng = np.random.default_rng(1)
    frames = []
    for _ in range(count):
        frame = source.read()
        assert frame is not None
        noise = rng.normal(0, SENSOR_NOISE_SIGMA, frame.shape)
        frames.append(np.clip(frame + noise, 0, 255).astype(np.uint8))
    return frames


def timed(work: Callable[[], None]) -> tuple[float, float]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall0, time.process_time() - cpu0


def encode_cost(frames: list[np.ndarray]) -> tuple[float, float]:
    """Per-frame (wall s, CPU s) of I420 conversion + libx264 veryfast encode."""
    ctx = av.CodecContext.create("libx264", "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, FPS), Fraction(FPS, 1)
    ctx.bit_rate = BITRATE_BPS
    ctx.options = {"preset": "veryfast", "tune": "zerolatency"}
    ctx.open()
    sizes: list[int] = []

    def work() -> None:
        for pts, image in enumerate(frames):
            i420 = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
            frame.pts = pts
            sizes.extend(p.size for p in ctx.encode(frame))
        sizes.extend(p.size for p in ctx.encode(None))

    wall_s, cpu_s = timed(work)
    assert sum(sizes) > 0
    return wall_s / len(frames), cpu_s / len(frames)


def mask_cost(cfg: PrivacyConfig, frames: list[np.ndarray], repeats: int) -> tuple[float, float]:
    """Per-frame (wall s, CPU s) of PrivacyMasker.apply() on the same frames."""
    masker = PrivacyMasker(cfg)
    masker.apply(frames[0])  # rasterise once, as the first captured frame does

    def work() -> None:
        for k in range(repeats):
            masker.apply(frames[k % len(frames)])

    wall_s, cpu_s = timed(work)
    return wall_s / repeats, cpu_s / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120, help="frames encoded for the baseline")
    parser.add_argument("--repeats", type=int, default=300, help="apply() calls per case")
    args = parser.parse_args()
    frames = camera_frames(args.frames)
    encode_cost(frames[:10])  # warm up the encoder and the caches
    enc_wall_s, enc_cpu_s = encode_cost(frames)
    budget_s = 1.0 / FPS
    print(f"1080p{FPS} baseline (cvtColor I420 + libx264 veryfast, {args.frames} frames):")
    print(f"  {enc_wall_s * 1e3:8.2f} ms wall/frame  {enc_cpu_s * 1e3:8.2f} ms CPU/frame")
    print()
    header = f"{'case':18} {'share':>6} {'wall ms':>9} {'CPU ms':>8} {'/enc wall':>10} "
    print(header + f"{'/enc CPU':>9} {'/33.3ms':>8}")
    for name, raw in CASES.items():
        cfg = PrivacyConfig.model_validate(raw)
        share = PrivacyMasker(cfg).area_share
        wall_s, cpu_s = mask_cost(cfg, frames, args.repeats)
        print(
            f"{name:18} {share:6.1%} {wall_s * 1e3:9.3f} {cpu_s * 1e3:8.3f} "
            f"{wall_s / enc_wall_s:10.2%} {cpu_s / enc_cpu_s:9.2%} {wall_s / budget_s:8.2%}"
        )
    print("\ntarget: apply() under 1 % of the per-frame encode cost")


if __name__ == "__main__":
    main()
