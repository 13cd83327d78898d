"""Frames as the pipeline passes them: I420 (planar YUV 4:2:0), the encoder's own format.

An I420 frame of width w and height h (both even) is one C-contiguous uint8 array of shape
(h * 3 // 2, w): the luma plane's h rows, then the U plane and the V plane, each (h/2 x w/2)
packed row after row (so one array row holds two chroma rows). Sources that decode video (files,
IP cameras) deliver it as the decoder made it, with no BGR round trip; sources that only give BGR
(the test pattern, OpenCV's V4L2) are converted once, in the capture thread.
"""

from __future__ import annotations

import cv2
import numpy as np


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


def to_i420(image: np.ndarray) -> np.ndarray:
    """A BGR frame converted (once); an I420 frame as it is."""
    if image.ndim == 2:
        return image
    height, width = image.shape[:2]
    if width % 2 or height % 2:  # I420 needs even sizes: drop the odd last column/row
        image = image[: height & ~1, : width & ~1]
    return cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)


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
