"""Picture measurements for camera health: pure functions over small grey images.

Everything here works on a downscaled grey copy of a frame (`ANALYSIS_WIDTH` wide; sharpness on a
copy twice that size) plus a boolean `valid` array of the same shape (False = privacy-masked, not
looked at). No state, no clock: `CameraHealth` decides when to measure and what a value means.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ANALYSIS_WIDTH = 160  # px: enough for exposure, coverage and view comparison; ~0.1 ms per metric
SHARPNESS_WIDTH = 320  # px: blur is measured at twice the size, so a 1080p defocus still shows
FREEZE_SAMPLES_WIDTH = 160  # raw pixels per row sampled (no averaging: keeps the sensor noise)
GRID_COLS, GRID_ROWS = 8, 6  # cells for coverage and view comparison (people are ~1-2 cells wide)
LOCAL_WINDOW = 7  # px at analysis size: the neighbourhood whose spread tells detail from blank
MIN_VALID_FRACTION = 0.05  # below this share of unmasked pixels the picture is not judged
CELL_MIN_VALID = 0.9  # a cell is compared only when nearly all of it is unmasked
TEXTURE_MIN_STD = 4.0  # grey levels: reference cells flatter than this carry no structure
CELL_MATCH_NCC = 0.5  # correlation with the reference cell below this = that part changed
MIN_COMPARED_CELLS = 6  # fewer comparable cells than this: the view comparison says nothing


@dataclass(frozen=True)
class Picture:
    """One frame reduced for analysis."""

    grey: np.ndarray  # uint8, ANALYSIS_WIDTH wide
    sharp_grey: np.ndarray  # uint8, SHARPNESS_WIDTH wide (for sharpness only)
    freeze_sample: np.ndarray  # uint8, strided raw grey pixels


def analysis_size(width: int, height: int, target_width: int = ANALYSIS_WIDTH) -> tuple[int, int]:
    """(w, h) of the reduced copy: `target_width` wide (never upscaled), same aspect."""
    w = min(target_width, width)
    return w, max(1, round(height * w / width))


def reduce_frame(frame_bgr: np.ndarray) -> Picture:
    """Grey at full size (cvtColor is SIMD-fast), then area-averaged down; the freeze sample is
    taken before averaging so it keeps the raw pixel noise."""
    height, width = frame_bgr.shape[:2]
    grey_full = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if frame_bgr.ndim == 3 else frame_bgr
    sharp_grey = cv2.resize(
        grey_full, analysis_size(width, height, SHARPNESS_WIDTH), interpolation=cv2.INTER_AREA
    )
    grey = cv2.resize(
        sharp_grey, analysis_size(width, height, ANALYSIS_WIDTH), interpolation=cv2.INTER_AREA
    )
    return Picture(grey, sharp_grey, freeze_sample(grey_full))


def freeze_sample(grey: np.ndarray) -> np.ndarray:
    """Every k-th raw pixel: sensor noise survives, unlike in an averaged copy."""
    step = max(1, grey.shape[1] // FREEZE_SAMPLES_WIDTH)
    return np.ascontiguousarray(grey[::step, ::step])


def reduce_mask(ignore: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Ignore mask of any size -> `valid` array of `shape` (h, w). A reduced pixel that is even
    partly masked is ignored: mask edges must not read as picture detail."""
    covered = cv2.resize(
        ignore.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA
    )
    return np.asarray(covered < 0.01)


def sample_mask(ignore: np.ndarray, sample_shape: tuple[int, int]) -> np.ndarray:
    """Ignore mask -> `valid` for the strided freeze sample (nearest pixel)."""
    nearest = cv2.resize(
        ignore.astype(np.uint8),
        (sample_shape[1], sample_shape[0]),
        interpolation=cv2.INTER_NEAREST,
    )
    return np.asarray(nearest == 0)


def enough_valid(valid: np.ndarray | None) -> bool:
    return valid is None or float(valid.mean()) >= MIN_VALID_FRACTION


def _pixels(grey: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    return grey.ravel() if valid is None else grey[valid]


def exposure(
    grey: np.ndarray, valid: np.ndarray | None, dark_level: int, bright_level: int
) -> tuple[float, float, float, float]:
    """(mean, std, share of dark pixels, share of bright pixels) over the unmasked pixels."""
    pixels = _pixels(grey, valid)
    dark = float(np.count_nonzero(pixels <= dark_level)) / pixels.size
    bright = float(np.count_nonzero(pixels >= bright_level)) / pixels.size
    return float(pixels.mean()), float(pixels.std()), dark, bright


def _cells(image: np.ndarray) -> np.ndarray:
    """(rows, cols, cell_pixels) float32 view of the image cropped to whole cells."""
    ch, cw = image.shape[0] // GRID_ROWS, image.shape[1] // GRID_COLS
    cropped = image[: ch * GRID_ROWS, : cw * GRID_COLS].astype(np.float32)
    return (
        cropped.reshape(GRID_ROWS, ch, GRID_COLS, cw)
        .swapaxes(1, 2)
        .reshape(GRID_ROWS, GRID_COLS, ch * cw)
    )


def _cell_valid(valid: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if valid is None:
        return np.ones((GRID_ROWS, GRID_COLS), dtype=bool)
    return np.asarray(_cells(valid[: shape[0], : shape[1]]).mean(axis=2) >= CELL_MIN_VALID)


def covered_fraction(
    grey: np.ndarray, valid: np.ndarray | None, blank_std: float, dark_level: float
) -> float:
    """Share of the (unmasked) picture that is dark and featureless (local std in a
    `LOCAL_WINDOW` square under `blank_std`): a hand, a coat or a cap close to the lens."""
    img = grey.astype(np.float32)
    size = (LOCAL_WINDOW, LOCAL_WINDOW)
    mean = cv2.blur(img, size)
    var = cv2.blur(img * img, size) - mean * mean
    blank = (var < blank_std * blank_std) & (img <= dark_level)
    return float(_pixels(blank, valid).mean())


def sharpness(sharp_grey: np.ndarray, valid: np.ndarray | None) -> float:
    """Std of the Laplacian over the std of the picture: detail per unit of contrast, so a room
    that gets darker does not read as blurred. Mask edges (eroded away) are not counted."""
    lap = cv2.Laplacian(sharp_grey, cv2.CV_32F, ksize=1)
    if valid is not None:
        inner = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if not inner.any():
            return 0.0
        lap_px, grey_px = lap[inner], sharp_grey[inner]
    else:
        lap_px, grey_px = lap.ravel(), sharp_grey.ravel()
    return float(lap_px.std()) / max(float(grey_px.std()), 1.0)


def mean_abs_diff(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None) -> float:
    """Mean absolute difference in grey levels (FFmpeg freezedetect's MAFD, unnormalised)."""
    diff = cv2.absdiff(a, b)
    return float(_pixels(diff, valid).mean())


def reference_mismatch(
    grey: np.ndarray, reference: np.ndarray, valid: np.ndarray | None
) -> float | None:
    """Share of the reference's textured cells that no longer look like it (zero-mean normalised
    correlation per cell, so lighting changes do not count). None when too few cells compare."""
    cur, ref = _cells(grey), _cells(reference)
    ref_std = ref.std(axis=2)
    compared = _cell_valid(valid, grey.shape[:2]) & (ref_std >= TEXTURE_MIN_STD)
    n = int(np.count_nonzero(compared))
    if n < MIN_COMPARED_CELLS:
        return None
    cur_c = cur - cur.mean(axis=2, keepdims=True)
    ref_c = ref - ref.mean(axis=2, keepdims=True)
    cur_std = cur.std(axis=2)
    ncc = (cur_c * ref_c).mean(axis=2) / np.maximum(cur_std * ref_std, 1e-6)
    changed = compared & ((ncc < CELL_MATCH_NCC) | (cur_std < 1.0))
    return float(np.count_nonzero(changed)) / n


def view_shift(
    grey: np.ndarray, reference: np.ndarray, valid: np.ndarray | None
) -> tuple[float, float]:
    """Translation of the view against the reference (phase correlation) as fractions of the
    width and height: +x = the scene moved right in the picture."""
    cur = grey.astype(np.float32)
    ref = reference.astype(np.float32)
    if valid is not None:  # masked areas are identical in both and would pull the peak to zero
        cur[~valid] = float(cur[valid].mean()) if valid.any() else 0.0
        ref[~valid] = float(ref[valid].mean()) if valid.any() else 0.0
    window = cv2.createHanningWindow((cur.shape[1], cur.shape[0]), cv2.CV_32F)
    (dx, dy), _response = cv2.phaseCorrelate(ref, cur, window)
    return dx / cur.shape[1], dy / cur.shape[0]
