"""Video files and IP cameras (RTSP, HTTP) through PyAV, decoded straight to I420.

The decoder's YUV is what the encoder takes: the capture copies a 4:2:0 frame once into a buffer
of its own (the decoder keeps its buffers as references); any other format (4:2:2 MJPEG, full
range) goes through one swscale pass (agent/capture/frames.py). Frames keep the stream's size, as
OpenCV's did: the encode loop scales to the rung. No BGR on the way (OpenCV decoded to BGR and the
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

from agent.capture.sources import SourceError, V4l2Source
from agent.core.redact import redact_url

log = logging.getLogger(__name__)

# An IP camera that sends nothing for this long is reconnected (FFmpeg's interrupt timeout);
# the capture's stall_timeout_s only applies between frames that do arrive.
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
# RTSP over TCP: a lost UDP packet is a broken picture; TCP only delays it (cameras on a LAN)
RTSP_OPTIONS = {"rtsp_transport": "tcp"}
JPEG_START = b"\xff\xd8"
BAD_FRAME_LOG_EVERY = 100  # a camera sending damaged frames is logged once, then every Nth


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

    def read(self) -> av.VideoFrame | None:
        """The next decoded frame, as the decoder made it (the capture copies it once into
        its own I420 buffer: agent/capture/frames.py i420_from_av)."""
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
        return frame

    def _rewind(self, container: av.container.InputContainer) -> av.VideoFrame | None:
        """A file loops: back to its start."""
        if not Path(self._spec.removeprefix("file:")).is_file():
            raise SourceError("video file disappeared")
        stream = container.streams.video[0]
        container.seek(0, stream=stream)
        self._frames = container.decode(stream)
        return next(self._frames, None)

    def close(self) -> None:
        if self._container is not None:
            self._frames = None
            self._container.close()
            self._container = None


class V4l2RawSource(V4l2Source):
    """A V4L2 camera's own frames, not OpenCV's BGR: OpenCV opens the device (MJPG asked for)
    but hands over the camera's buffer as it came, and PyAV decodes it to YUV. MJPEG decoded by
    FFmpeg to 4:2:2 and scaled to I420 once cost 3.4 ms per 720p frame here against 4.4 ms for
    OpenCV's decode to BGR and the conversion back. A YUYV camera's frame is converted to I420
    directly. Should OpenCV convert after all (a backend that ignores CONVERT_RGB), its BGR
    frame is taken as it is."""

    convert_rgb = False

    def __init__(self, spec: str, width: int, height: int, fps: int) -> None:
        super().__init__(spec, width, height, fps)
        decoder = av.CodecContext.create("mjpeg", "r")
        if not isinstance(decoder, av.VideoCodecContext):
            raise TypeError("PyAV's mjpeg is not a video decoder")
        self._decoder = decoder
        self._bad_frames = 0

    def read(self) -> np.ndarray | av.VideoFrame | None:  # type: ignore[override]
        raw = super().read()
        if raw is None:
            return None
        try:
            return camera_frame(raw, self._decoder)
        except (av.FFmpegError, ValueError) as exc:  # a damaged JPEG: this frame is lost
            if self._bad_frames % BAD_FRAME_LOG_EVERY == 0:
                count = self._bad_frames + 1
                log.warning("%s: undecodable frame (%d so far): %s", self._spec, count, exc)
            self._bad_frames += 1
            return None


def camera_frame(
    raw: np.ndarray, decoder: av.VideoCodecContext
) -> np.ndarray | av.VideoFrame | None:
    """A V4L2 buffer as OpenCV returns it without conversion: MJPEG bytes (one row), YUYV
    (h, w, 2), or already BGR (h, w, 3). Decoded frames go to the capture as PyAV frames."""
    if raw.ndim == 3 and raw.shape[2] == 3:
        return raw
    if raw.ndim == 3 and raw.shape[2] == 2:
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(raw), format="yuyv422")
    data = raw.reshape(-1).tobytes()
    if data[:2] != JPEG_START:
        raise ValueError(f"neither JPEG nor YUYV: {raw.shape} {data[:4].hex()}")
    frames = decoder.decode(av.Packet(data))
    return frames[-1] if frames else None
