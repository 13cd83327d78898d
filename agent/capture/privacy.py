"""Privacy masks: the voting booths never leave the box.

Masks are polygons or rectangles in normalised coordinates (0..1 of the frame width and height),
so one configuration holds at every capture and rung resolution. `PrivacyMasker.apply()` runs on
every frame right after capture, before overlay, health, encoding, snapshots or anything else, and
overwrites the masked pixels in place: solid (one opaque colour) or pixelated (blocks so coarse
that a ballot mark cannot be read). Frames are BGR or I420 (agent/capture/frames.py); in I420 each
plane is masked on its own, the chroma planes where any of their 2x2 luma pixels is masked.

Rasterisation is conservative: a pixel that the mask outline touches is masked. The per-resolution
work (rasterise, bounding boxes, crops) is done once and cached, so a frame costs one slice
assignment or one small resize pair per mask.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from agent.capture.frames import planes
from agent.core.config import Section

log = logging.getLogger(__name__)

Fill = Literal["solid", "pixelate"]
Layout = Literal["bgr", "luma", "chroma"]  # what a plan is for: a BGR frame or an I420 plane

# The raster `coverage_share` measures on: 1000x1000 resolves 0.1 % of the frame per axis.
COVERAGE_RASTER_PX = 1000
# A union of masks over this share of the frame leaves a stream that shows almost nothing of the
# room (the count, the boxes): refused unless confirmed (issue 8).
MAX_COVERAGE_SHARE = 0.90
# Polygons enclosing less than this share of the frame (about 20 pixels at 1080p) are degenerate:
# points on a line or repeated, almost certainly a typo.
MIN_MASK_AREA_SHARE = 1e-5
MAX_MASKS = 32  # a station has a handful of booths; more is a config error
# Solid fill: dark grey (all three channels), so a mask reads as deliberate and not as a dead
# camera (black) or a covered lens; uniform, so it costs the encoder almost nothing.
SOLID_FILL_LEVEL = 64
# Pixelation block: 1/20 of the frame height (54 px at 1080p, 18 px at 360p) is coarser than a
# hand or a ballot box's slot; never below 8 px, the H.264 chroma block size.
PIXELATE_BLOCKS_PER_HEIGHT = 20
PIXELATE_MIN_BLOCK_PX = 8
# A block's colour is the mean of a 6x6 grid of samples spread over it: as unreadable as the full
# mean and about 20 times cheaper at 1080p (INTER_AREA over every pixel costs ~1 ms per booth).
PIXELATE_SAMPLES_PER_BLOCK = 6
# Solid fill in I420: the luma OpenCV's BGR->I420 gives SOLID_FILL_LEVEL grey, neutral chroma.
SOLID_FILL_Y, SOLID_FILL_UV = 71, 128
# Rasterised masks kept: capture size and a few rung sizes, each as BGR or as I420 luma + chroma.
MAX_CACHED_PLANS = 8
# Sub-pixel precision for cv2.fillPoly / cv2.polylines (fixed point with this many bits).
_SHIFT_BITS = 8


class MaskRegion(Section):
    """One mask: exactly one of `rect` or `polygon`, and optionally its own fill."""

    rect: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    polygon: tuple[tuple[float, float], ...] | None = None  # [[x, y], ...]
    fill: Fill | None = None  # None: the section's `fill`

    @model_validator(mode="after")
    def _check_shape(self) -> MaskRegion:
        problem = self.problem()
        if problem:
            raise ValueError(problem)
        return self

    def problem(self) -> str | None:
        """What is wrong with this mask in plain words, or None."""
        if (self.rect is None) == (self.polygon is None):
            return "a mask needs exactly one of rect = [x0, y0, x1, y1] or polygon = [[x, y], ...]"
        if self.rect is not None:
            names = ("x0", "y0", "x1", "y1")
            for name, value in zip(names, self.rect, strict=True):
                if not 0.0 <= value <= 1.0:
                    return (
                        f"rect {name} = {value} is outside 0..1 "
                        "(coordinates are fractions of the frame width and height)"
                    )
            x0, y0, x1, y1 = self.rect
            if not (x0 < x1 and y0 < y1):
                return f"rect {list(self.rect)} has zero area: it needs x0 < x1 and y0 < y1"
            return None
        polygon = self.polygon or ()
        if len(polygon) < 3:
            return f"polygon has {len(polygon)} point(s); it needs at least 3"
        for k, (x, y) in enumerate(polygon):
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                return (
                    f"polygon point {k} [{x}, {y}] is outside 0..1 "
                    "(coordinates are fractions of the frame width and height)"
                )
        if polygon_area(self.points()) < MIN_MASK_AREA_SHARE:
            return "polygon encloses (almost) no area: its points are on a line or repeated"
        return None

    def points(self) -> list[tuple[float, float]]:
        """The outline as normalised (x, y) points, a rect as its four corners."""
        if self.rect is not None:
            x0, y0, x1, y1 = self.rect
            return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        return list(self.polygon or ())


class PrivacyConfig(Section):
    """The `[privacy]` section."""

    masks: tuple[MaskRegion, ...] = Field((), max_length=MAX_MASKS)
    fill: Fill = "solid"  # for masks that do not name their own
    confirm_large_masks: bool = False  # allow masks covering over 90 % of the frame

    @model_validator(mode="after")
    def _check_coverage(self) -> PrivacyConfig:
        if not self.masks:
            return self
        share = coverage_share(self)
        if share > MAX_COVERAGE_SHARE:
            if not self.confirm_large_masks:
                raise ValueError(
                    f"the masks cover {share:.1%} of the frame (more than "
                    f"{MAX_COVERAGE_SHARE:.0%}): the stream would show almost nothing; "
                    "set confirm_large_masks = true if that is intended"
                )
            log.warning(
                "privacy masks cover %.1f%% of the frame (confirmed by confirm_large_masks)",
                share * 100,
            )
        return self

    def fill_of(self, region: MaskRegion) -> Fill:
        return region.fill or self.fill


def polygon_area(points: list[tuple[float, float]]) -> float:
    """Shoelace area of a closed polygon (in the units of its coordinates squared)."""
    total = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True):
        total += x0 * y1 - x1 * y0
    return abs(total) / 2.0


def rasterise(region: MaskRegion, width: int, height: int) -> np.ndarray:
    """The region as a (height, width) uint8 image, 1 inside; every touched pixel counts.

    Normalised x maps to pixel-centre coordinates x * width - 0.5, so 0 and 1 are the outer
    edges of the first and last pixel.
    """
    scale = 1 << _SHIFT_BITS
    pts = np.array(
        [[(x * width - 0.5) * scale, (y * height - 0.5) * scale] for x, y in region.points()],
        dtype=np.float64,
    )
    pts_i = np.round(pts).astype(np.int32).reshape(-1, 1, 2)
    image = np.zeros((height, width), np.uint8)
    cv2.fillPoly(image, [pts_i], 1, lineType=cv2.LINE_8, shift=_SHIFT_BITS)
    cv2.polylines(image, [pts_i], True, 1, thickness=1, lineType=cv2.LINE_8, shift=_SHIFT_BITS)
    return image


def union_mask(cfg: PrivacyConfig, width: int, height: int) -> np.ndarray:
    """Every masked pixel at this resolution, as a (height, width) bool array."""
    union = np.zeros((height, width), np.uint8)
    for region in cfg.masks:
        union |= rasterise(region, width, height)
    return union.astype(bool)


def coverage_share(cfg: PrivacyConfig) -> float:
    """Share of the frame (0..1) under the union of the masks, measured on a fixed raster."""
    if not cfg.masks:
        return 0.0
    return float(union_mask(cfg, COVERAGE_RASTER_PX, COVERAGE_RASTER_PX).mean())


def pixelate_block_px(height: int) -> int:
    return max(PIXELATE_MIN_BLOCK_PX, round(height / PIXELATE_BLOCKS_PER_HEIGHT))


@dataclass(frozen=True)
class _Patch:
    """One mask at one resolution: its bounding box and, unless it fills the box, its shape."""

    ys: slice
    xs: slice
    where: np.ndarray | None  # (bh, bw) uint8, 1 = masked; None when the whole box is masked
    fill: Fill
    cells: tuple[int, int]  # pixelate: the box shrinks to (cols, rows) blocks
    row_spans: tuple[tuple[int, int], ...]  # pixelate: the box rows each block row covers
    scratch: np.ndarray  # (bh, bw[, 3]): the solid fill, or the buffer for the pixelated box


@dataclass(frozen=True)
class _Plan:
    patches: tuple[_Patch, ...]
    mask: np.ndarray  # (h, w) bool, read-only


class PrivacyMasker:
    """Applies the configured masks to frames in place; costs nothing with no masks.

    `apply()` serialises its callers (it reuses per-resolution buffers); `mask_for()` and
    `snapshot()` may be called from any thread.
    """

    def __init__(self, cfg: PrivacyConfig) -> None:
        self._cfg = cfg
        # Pixelated masks first: where masks overlap, a solid mask stays solid.
        self._regions = sorted(cfg.masks, key=lambda r: cfg.fill_of(r) == "solid")
        self._plans: dict[tuple[int, int, Layout], _Plan] = {}
        self._cache_lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self.active_count = len(cfg.masks)
        self.area_share = coverage_share(cfg)

    def apply(self, frame: np.ndarray) -> None:
        """Overwrite the masked pixels of an (h, w, 3) uint8 BGR frame or an (h*3/2, w) uint8
        I420 frame."""
        if not self._regions:
            return
        bgr = frame.ndim == 3 and frame.shape[2] == 3
        i420 = frame.ndim == 2 and frame.shape[0] % 3 == 0 and frame.shape[1] % 2 == 0
        if not (bgr or i420) or frame.dtype != np.uint8:
            raise ValueError(f"expected a BGR or I420 uint8 frame, got {frame.shape}")
        if not frame.flags.c_contiguous:  # OpenCV would write into a copy of such a view
            work = np.ascontiguousarray(frame)
            self.apply(work)
            frame[...] = work
            return
        if bgr:
            self._apply_plan(frame, self._plan(frame.shape[0], frame.shape[1], "bgr"))
            return
        y, u, v = planes(frame)
        self._apply_plan(y, self._plan(y.shape[0], y.shape[1], "luma"))
        chroma = self._plan(u.shape[0], u.shape[1], "chroma")
        self._apply_plan(u, chroma)
        self._apply_plan(v, chroma)

    def _apply_plan(self, image: np.ndarray, plan: _Plan) -> None:
        with self._apply_lock:
            for patch in plan.patches:
                box = image[patch.ys, patch.xs]
                if patch.fill == "solid":
                    if patch.where is None:
                        box[:] = patch.scratch.flat[0]  # a scalar fill is a memset
                    else:
                        _into(box, cv2.copyTo(patch.scratch, patch.where, box))
                else:
                    _pixelate(box, patch)

    def mask_for(self, width: int, height: int) -> np.ndarray:
        """The masked pixels at this resolution: (height, width) bool, read-only (health)."""
        return self._plan(height, width, "luma").mask

    def snapshot(self) -> dict[str, object]:
        """For the heartbeat and status: are masks on, and how much of the picture they hide."""
        return {"active_count": self.active_count, "area_share": round(self.area_share, 4)}

    def _plan(self, height: int, width: int, layout: Layout) -> _Plan:
        key = (height, width, layout)
        with self._cache_lock:
            plan = self._plans.pop(key, None)
            if plan is not None:
                self._plans[key] = plan  # most recently used last
                return plan
        plan = self._build(height, width, layout)
        with self._cache_lock:
            while len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.pop(next(iter(self._plans)))  # least recently used first
            self._plans[key] = plan
        log.debug("privacy masks rasterised at %dx%d (%s)", width, height, layout)
        return plan

    def _build(self, height: int, width: int, layout: Layout) -> _Plan:
        """Patches for a BGR frame, an I420 luma plane, or its (half-size) chroma planes."""
        union = np.zeros((height, width), np.uint8)
        patches: list[_Patch] = []
        # the picture's height sets the block size: chroma blocks cover the luma blocks
        if layout == "chroma":
            block_px = max(1, pixelate_block_px(height * 2) // 2)
        else:
            block_px = pixelate_block_px(height)
        fill_level = {"bgr": SOLID_FILL_LEVEL, "luma": SOLID_FILL_Y, "chroma": SOLID_FILL_UV}
        channels = (3,) if layout == "bgr" else ()
        for region in self._regions:
            if layout == "chroma":  # every chroma sample any of whose 2x2 luma pixels is masked
                full = rasterise(region, width * 2, height * 2)
                image = full.reshape(height, 2, width, 2).max(axis=(1, 3))
            else:
                image = rasterise(region, width, height)
            union |= image
            x, y, bw, bh = cv2.boundingRect(image)
            if bw == 0 or bh == 0:
                continue  # cannot happen for a valid mask: its outline always touches pixels
            crop = image[y : y + bh, x : x + bw]
            where = None if crop.all() else np.ascontiguousarray(crop)
            fill = self._cfg.fill_of(region)
            if fill == "solid":
                scratch = np.full((bh, bw, *channels), fill_level[layout], np.uint8)
            else:
                scratch = np.empty((bh, bw, *channels), np.uint8)
            cols, rows = max(1, math.ceil(bw / block_px)), max(1, math.ceil(bh / block_px))
            spans = tuple((r * bh // rows, (r + 1) * bh // rows) for r in range(rows))
            patches.append(
                _Patch(
                    slice(y, y + bh), slice(x, x + bw), where, fill, (cols, rows), spans, scratch
                )
            )
        mask = union.astype(bool)
        mask.setflags(write=False)
        return _Plan(tuple(patches), mask)


def _pixelate(box: np.ndarray, patch: _Patch) -> None:
    """Replace the box by blocks of its mean colour (mean of an even grid of samples)."""
    cols, rows = patch.cells
    samples = cv2.resize(
        box,
        (cols * PIXELATE_SAMPLES_PER_BLOCK, rows * PIXELATE_SAMPLES_PER_BLOCK),
        interpolation=cv2.INTER_NEAREST,
    )
    means = cv2.resize(samples, (cols, rows), interpolation=cv2.INTER_AREA)
    block_rows = cv2.resize(means, (box.shape[1], rows), interpolation=cv2.INTER_NEAREST)
    target = box if patch.where is None else patch.scratch
    # One broadcast row copy per block row: ~7x cheaper than an INTER_NEAREST upscale of the box.
    for row, (start, stop) in zip(block_rows, patch.row_spans, strict=True):
        target[start:stop] = row
    if patch.where is not None:
        _into(box, cv2.copyTo(patch.scratch, patch.where, box))


def _into(box: np.ndarray, written: np.ndarray) -> None:
    """OpenCV writes into a frame's ROI in place and returns it; should it ever have written
    into a copy instead, copy the result back rather than let masked pixels through."""
    if written is not box:
        box[...] = written
