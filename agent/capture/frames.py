"""Frames as the pipeline passes them: I420 (planar YUV 4:2:0), the encoder's own format.

An I420 frame of width w and height h (both even) is one C-contiguous uint8 array of shape
(h * 3 // 2, w): the luma plane's h rows, then the U plane and the V plane, each (h/2 x w/2)
packed row after row (so one array row holds two chroma rows). Sources that decode video (files,
IP cameras) deliver it as the decoder made it, with no BGR round trip; sources that only give BGR
(the test pattern, OpenCV's V4L2) are converted once, in the capture thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import av
import cv2
import numpy as np

I420 = "yuv420p"  # passed through as decoded, unless full range (MJPEG, some cameras)
FULL_RANGE = 2  # AVCOL_RANGE_JPEG: mapped to video range (16-235), what the encoder signals
Allocate = Callable[[tuple[int, int]], np.ndarray]


def i420_shape(width: int, height: int) -> tuple[int, int]:
    return height * 3 // 2, width


def frame_size(image: np.ndarray) -> tuple[int, int]:
    """(width, height) of a BGR (h, w, 3) or an I420 (h*3/2, w) frame."""
    if image.ndim == 3:
        return image.shape[1], image.shape[0]
    return image.shape[1], image.shape[0] * 2 // 3


def planes(i420: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writable views of the Y, U and V planes."""
    width, height = frame_size(i420)
    flat = i420.reshape(-1)
    luma, chroma = width * height, (width // 2) * (height // 2)
    return (
        flat[:luma].reshape(height, width),
        flat[luma : luma + chroma].reshape(height // 2, width // 2),
        flat[luma + chroma : luma + 2 * chroma].reshape(height // 2, width // 2),
    )


def luma(i420: np.ndarray) -> np.ndarray:
    """The grey picture (a view, no copy): what camera health measures."""
    return i420[: frame_size(i420)[1]]


def _new(shape: tuple[int, int]) -> np.ndarray:
    return np.empty(shape, np.uint8)


def to_i420(image: np.ndarray, allocate: Allocate = _new) -> np.ndarray:
    """A BGR frame converted (once, into `allocate(shape)`); an I420 frame as it is."""
    if image.ndim == 2:
        return image
    height, width = image.shape[:2]
    if width % 2 or height % 2:  # I420 needs even sizes: drop the odd last column/row
        image = image[: height & ~1, : width & ~1]
    out = allocate(i420_shape(width & ~1, height & ~1))
    cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420, dst=out)
    return out


def i420_from_av(frame: av.VideoFrame, allocate: Allocate = _new) -> np.ndarray:
    """A decoded frame as an I420 array of its own at the stream's size: one copy out of the
    decoder's buffers, plus a swscale pass when the decoder's format is another (4:2:2 MJPEG,
    full range)."""
    w, h = frame.width & ~1, frame.height & ~1  # (I420 needs even sizes)
    full_range = frame.color_range == FULL_RANGE
    if frame.format.name != I420 or full_range or frame.width != w or frame.height != h:
        frame = frame.reformat(w, h, I420, dst_color_range="MPEG")
    out = allocate(i420_shape(w, h))
    for plane, dst in zip(frame.planes, planes(out), strict=True):
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        np.copyto(dst, rows[: dst.shape[0], : dst.shape[1]])
    return out


def to_bgr(image: np.ndarray) -> np.ndarray:
    """For people and pictures on disk (snapshots, reference pictures)."""
    if image.ndim == 3:
        return image
    return cv2.cvtColor(image, cv2.COLOR_YUV2BGR_I420)


def resize_i420(i420: np.ndarray, width: int, height: int) -> np.ndarray:
    """Each plane area-averaged to the new size (a new frame)."""
    out = np.empty(i420_shape(width, height), np.uint8)
    for src, dst in zip(planes(i420), planes(out), strict=True):
        cv2.resize(src, (dst.shape[1], dst.shape[0]), dst=dst, interpolation=cv2.INTER_AREA)
    return out


def blank_i420(width: int, height: int, level: int) -> np.ndarray:
    """A grey frame (Y = level, neutral chroma)."""
    out = np.full(i420_shape(width, height), 128, np.uint8)
    out[:height] = level
    return out


# Free frame buffers kept for reuse, in bytes: the capture, the newest frame and the one being
# encoded are in use besides these; 8 MiB is five 720p frames or two 1080p ones.
POOL_FREE_BYTES = 8 << 20


class FramePool:
    """Frame buffers used again and again. A 720p frame (1.4 MB) is above malloc's mmap
    threshold: allocated afresh it costs ~340 page faults each time (~1 ms here), and frames
    freed on another thread than the one that made them raise the heap's high-water mark.
    Bounded by bytes; buffers of another size (a new camera mode) are let go."""

    def __init__(self, max_free_bytes: int = POOL_FREE_BYTES) -> None:
        self._max_free_bytes = max_free_bytes
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, int]) -> np.ndarray:
        with self._lock:
            while self._free:
                buffer = self._free.pop()
                if buffer.shape == shape:
                    return buffer
        return np.empty(shape, np.uint8)

    def give(self, buffer: np.ndarray) -> None:
        with self._lock:
            if self._free and self._free[0].shape != buffer.shape:
                self._free.clear()
            if (len(self._free) + 1) * buffer.nbytes <= self._max_free_bytes:
                self._free.append(buffer)

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return sum(b.nbytes for b in self._free)
