"""Frame sources: V4L2 cameras, IP cameras, looped files and a synthetic test pattern.

A source is opened, read frame by frame (numpy arrays) and closed. `read()` blocks at most
about one frame interval and returns None when no frame came; raising `SourceError` means the
source is broken and the capture loop will reopen it with backoff.

`open_source()` gives the tools (check, health, mask, provision) BGR frames (h, w, 3).
`open_capture_source()` gives the capture thread what each source has: decoded frames for files,
IP cameras and V4L2 cameras (agent/capture/av_source.py), which go to the encoder as I420 with no
BGR round trip (agent/capture/frames.py), and BGR for the test pattern.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from agent.core.redact import redact_url

if TYPE_CHECKING:
    import av

    from agent.capture.av_source import AvSource

log = logging.getLogger(__name__)

NOISE_FIELDS = 7  # more than x264's reference frames, so noise never repeats within reach


class SourceError(Exception):
    """The source cannot deliver frames (not found, unplugged, stream ended badly)."""


class FrameSource(Protocol):
    """Delivers BGR frames (h, w, 3)."""

    description: str

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class CaptureSource(Protocol):
    """Delivers BGR frames or decoded ones (PyAV), which the capture turns into I420."""

    description: str

    def open(self) -> None: ...

    def read(self) -> np.ndarray | av.VideoFrame | None: ...

    def close(self) -> None: ...


class TestPatternSource:
    """Synthetic camera: colour bars, a moving disc, a sweeping bar and a running clock.

    Cheap: the static background is drawn once; each frame is one copy plus two small drawings.
    Paced by the monotonic clock to the requested frame rate, like a real camera. `test:noise`
    adds heavy sensor-like noise (from a few pre-made noise fields), so the encoder needs its
    whole bitrate: the way to load a link in tests and benchmarks.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        width: int,
        height: int,
        fps: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        noise: bool = False,
    ) -> None:
        self.description = f"test pattern {width}x{height}@{fps}" + (" with noise" if noise else "")
        self._width, self._height, self._fps = width, height, fps
        self._clock, self._sleep = clock, sleep
        self._background = _bars(width, height)
        rng = np.random.default_rng(0)
        self._noise = (
            [rng.integers(0, 96, (height, width, 3), dtype=np.uint8) for _ in range(NOISE_FIELDS)]
            if noise
            else []
        )
        self._index = 0
        self._next_s = 0.0

    def open(self) -> None:
        self._next_s = self._clock()

    def read(self) -> np.ndarray | None:
        delay_s = self._next_s - self._clock()
        if delay_s > 0:
            self._sleep(delay_s)
        self._next_s = max(self._next_s + 1.0 / self._fps, self._clock() - 1.0)
        w, h, i = self._width, self._height, self._index
        if self._noise:
            frame = cv2.add(self._background, self._noise[i % len(self._noise)])
        else:
            frame = self._background.copy()
        phase = i / (self._fps * 4.0)
        cx = int(w / 2 + w / 3 * math.cos(2 * math.pi * phase))
        cy = int(h / 2 + h / 4 * math.sin(4 * math.pi * phase))
        cv2.circle(frame, (cx, cy), max(4, h // 10), (40, 220, 240), -1, cv2.LINE_AA)
        bar_x = int((i * 4) % w)
        frame[:, bar_x : bar_x + max(2, w // 160)] = 255
        cv2.putText(
            frame, _running_clock(i / self._fps), (w // 20, h - h // 12), cv2.FONT_HERSHEY_SIMPLEX,
            h / 600, (255, 255, 255), max(1, h // 360), cv2.LINE_AA,
        )  # fmt: skip
        self._index += 1
        return frame

    def close(self) -> None:
        pass


def _running_clock(elapsed_s: float) -> str:
    minutes, seconds = divmod(elapsed_s, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:05.2f}"


def _bars(width: int, height: int) -> np.ndarray:
    colours = [
        (192, 192, 192), (0, 192, 192), (192, 192, 0), (0, 192, 0),
        (192, 0, 192), (0, 0, 192), (192, 0, 0), (16, 16, 16),
    ]  # fmt: skip
    frame = np.zeros((height, width, 3), np.uint8)
    for k, colour in enumerate(colours):
        frame[:, k * width // len(colours) : (k + 1) * width // len(colours)] = colour
    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    frame[height * 3 // 4 :, :, :] = ramp[None, :, None]
    return frame


class V4l2Source:
    """V4L2 cameras through cv2.VideoCapture, asked for MJPG at the configured size and rate."""

    convert_rgb = True  # False: the camera's buffer as it came (MJPEG bytes, YUYV)

    def __init__(self, spec: str, width: int, height: int, fps: int) -> None:
        self._spec, self._width, self._height, self._fps = spec, width, height, fps
        self.description = spec
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        target = self._spec.removeprefix("v4l2:")
        device: int | str = int(target) if target.isdigit() else target
        cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._height)
        cap.set(cv2.CAP_PROP_FPS, self._fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if not self.convert_rgb:
            cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self._spec}")
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise SourceError("source is not open")
        ok, frame = self._cap.read()
        if ok and frame is not None:
            return frame
        raise SourceError(f"{self._spec} stopped delivering frames")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class _BgrFrames:
    """A decoding source's frames as BGR, for the tools."""

    def __init__(self, inner: AvSource) -> None:
        self._inner = inner
        self.description = inner.description

    def open(self) -> None:
        self._inner.open()

    def read(self) -> np.ndarray | None:
        frame = self._inner.read()
        return None if frame is None else frame.to_ndarray(format="bgr24")

    def close(self) -> None:
        self._inner.close()


def open_source(spec: str, width: int, height: int, fps: int) -> FrameSource:
    """The source for a config `source` string (not yet opened), delivering BGR: the tools."""
    if spec.startswith("test:"):
        return TestPatternSource(width, height, fps, noise=spec == "test:noise")
    if spec.startswith("v4l2:"):
        return V4l2Source(spec, width, height, fps)
    from agent.capture.av_source import AvSource  # (it imports SourceError from here)

    return _BgrFrames(AvSource(spec, width, height, fps))


def open_capture_source(spec: str, width: int, height: int, fps: int) -> CaptureSource:
    """The source for the capture thread: files and IP cameras deliver decoded frames, which
    the capture copies once into its own I420 buffers; the others BGR."""
    if spec.startswith("test:"):
        return TestPatternSource(width, height, fps, noise=spec == "test:noise")
    from agent.capture.av_source import AvSource, V4l2RawSource  # (they import from here)

    if spec.startswith("v4l2:"):
        return V4l2RawSource(spec, width, height, fps)
    return AvSource(spec, width, height, fps)


def grab_frame(source: str, width: int, height: int, timeout_s: float = 10.0) -> np.ndarray:
    """One frame from a source (for snapshots, `mask` and `check`); raises SourceError."""
    src = open_source(source, width, height, fps=30)
    src.open()
    try:
        deadline_s = time.monotonic() + timeout_s
        frames = 0
        while time.monotonic() < deadline_s:
            frame = src.read()
            if frame is not None:
                frames += 1
                if frames >= 3 or not source.startswith("v4l2:"):  # cameras settle exposure
                    return frame
        raise SourceError(f"no frame from {redact_url(source)} within {timeout_s:.0f} s")
    finally:
        src.close()
