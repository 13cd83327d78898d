"""Video files and IP cameras (RTSP, HTTP) through PyAV, decoded straight to I420.

The decoder's YUV is what the encoder takes: a 4:2:0 stream is copied once into the frame the
pipeline owns (the decoder keeps its own buffers as references); any other format (4:2:2 MJPEG,
full range) goes through one swscale pass. Frames keep the stream's size, as OpenCV's did: the
encode loop scales to the rung. No BGR on the way (OpenCV decoded to BGR and the
encoder converted back: ~1.1 ms per 720p frame and two more 720p buffers).

Decoding uses slice threads, not frame threads: frame threading delays every picture by one
frame per thread (latency the live edge pays) and cost ~10 % more CPU on a 720p H.264 camera
stream here (bench/encode_overhead.py's inputs; 4.1 vs 4.5 ms per frame).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np

from agent.capture.frames import i420_shape
from agent.capture.sources import SourceError
from agent.core.redact import redact_url

log = logging.getLogger(__name__)

# An IP camera that sends nothing for this long is reconnected (FFmpeg's interrupt timeout);
# the capture's stall_timeout_s only applies between frames that do arrive.
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
# RTSP over TCP: a lost UDP packet is a broken picture; TCP only delays it (cameras on a LAN)
RTSP_OPTIONS = {"rtsp_transport": "tcp"}
I420 = "yuv420p"  # passed through as decoded, unless full range (MJPEG, some cameras)
FULL_RANGE = 2  # AVCOL_RANGE_JPEG: mapped to video range (16-235), what the encoder signals


class AvSource:
    """A `file:` path (looped, paced to its own frame rate) or a network URL (live)."""

    def __init__(
        self,
        spec: str,
        width: int,
        height: int,
        fps: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._spec, self._width, self._height, self._fps = spec, width, height, fps
        self.description = redact_url(spec)  # an IP camera's password never shows
        self._is_file = spec.startswith("file:")
        self._clock, self._sleep = clock, sleep
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._interval_s = 1.0 / fps
        self._next_s = 0.0

    def open(self) -> None:
        if self._is_file:
            path = Path(self._spec.removeprefix("file:"))
            if not path.is_file():
                raise SourceError(f"video file {path} does not exist")
            target, options = str(path), {}
        else:
            target = self._spec
            options = RTSP_OPTIONS if self._spec.startswith("rtsp") else {}
        try:
            container = av.open(target, options=options, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S))
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open {self.description}: {exc}") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.description} has no video")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        if self._is_file:
            rate = stream.average_rate or stream.guessed_rate
            file_fps = float(rate) if rate else 0.0
            self._interval_s = 1.0 / (file_fps if 1 <= file_fps <= 120 else self._fps)
        self._container = container
        self._frames = container.decode(stream)
        self._next_s = self._clock()

    def read(self) -> np.ndarray | None:
        if self._container is None or self._frames is None:
            raise SourceError("source is not open")
        if self._is_file:
            delay_s = self._next_s - self._clock()
            if delay_s > 0:
                self._sleep(delay_s)
            self._next_s = max(self._next_s + self._interval_s, self._clock() - 1.0)
        try:
            frame = next(self._frames, None)
            if frame is None and self._is_file:
                frame = self._rewind(self._container)
        except av.FFmpegError as exc:
            raise SourceError(f"{self.description}: {exc}") from None
        if frame is None:
            raise SourceError(f"{self.description} stopped delivering frames")
        return self._to_i420(frame)

    def _rewind(self, container: av.container.InputContainer) -> av.VideoFrame | None:
        """A file loops: back to its start."""
        if not Path(self._spec.removeprefix("file:")).is_file():
            raise SourceError("video file disappeared")
        stream = container.streams.video[0]
        container.seek(0, stream=stream)
        self._frames = container.decode(stream)
        return next(self._frames, None)

    def _to_i420(self, frame: av.VideoFrame) -> np.ndarray:
        """The frame as the pipeline's own I420 array at the stream's size (the encoder scales
        to the rung): one copy, plus a swscale pass when the decoder's format is another."""
        w, h = frame.width & ~1, frame.height & ~1  # (I420 needs even sizes)
        full_range = frame.color_range == FULL_RANGE
        if frame.format.name != I420 or full_range or frame.width != w or frame.height != h:
            frame = frame.reformat(w, h, I420, dst_color_range="MPEG")
        out = np.empty(i420_shape(w, h), np.uint8)
        flat = out.reshape(-1)
        offset = 0
        for index, (plane_w, plane_h) in enumerate(((w, h), (w // 2, h // 2), (w // 2, h // 2))):
            plane = frame.planes[index]
            rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane_h, plane.line_size)
            dst = flat[offset : offset + plane_w * plane_h].reshape(plane_h, plane_w)
            np.copyto(dst, rows[:, :plane_w])
            offset += plane_w * plane_h
        return out

    def close(self) -> None:
        if self._container is not None:
            self._frames = None
            self._container.close()
            self._container = None
