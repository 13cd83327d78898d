"""Privacy masks: the voting booths never leave the box.

Masks are polygons or rectangles in normalised coordinates (0..1 of the frame width and height),
so one configuration holds at every capture and rung resolution. `PrivacyMasker.apply()` runs on
every frame right after capture, before overlay, health, encoding, snapshots or anything else, and
overwrites the masked pixels in place: solid (one opaque colour) or pixelated (blocks so coarse
that a ballot mark cannot be read).

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
from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)

Fill = Literal["solid", "pixelate"]

# The raster `coverage_share` measures on: 1000x1000 resolves 0.1 % of the frame per axis.
COVERAGE_RASTER_PX = 1000
# A union of masks over this share of the frame leaves a stream that shows almost nothing of the
# room (the count, the boxes): refused unless confirmed (issue 8).
MAX_COVERAGE_SHARE = 0.90
# Polygons enclosing less than this share of the frame (about 20 pixels at 1080p) are degenerate:
# points on a line or repeated, almost certainly a typo.
MIN_MASK_AREA_SHARE = 1e-5
MAX_MASKS = 32  # a station has a handful of booths; more is a config error
# Solid fill: dark grey, so a mask reads as deliberate and not as a dead camera (black) or a
# covered lens; uniform, so it costs the encoder almost nothing.
SOLID_FILL_BGR = (64, 64, 64)
# Pixelation block: 1/20 of the frame height (54 px at 1080p, 18 px at 360p) is coarser than a
# hand or a ballot box's slot; never below 8 px, the H.264 chroma block size.
PIXELATE_BLOCKS_PER_HEIGHT = 20
PIXELATE_MIN_BLOCK_PX = 8
# Resolutions whose rasterised masks are kept (capture size, a few rung sizes for health).
MAX_CACHED_RESOLUTIONS = 4
# Sub-pixel precision for cv2.fillPoly / cv2.polylines (fixed point with this many bits).
_SHIFT_BITS = 8


class MaskRegion(BaseModel):
    """One mask: exactly one of `rect` or `polygon`, and optionally its own fill."""

    model_config = ConfigDict(extra="forbid", frozen=True)
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


class PrivacyConfig(BaseModel):
    """The `[privacy]` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)
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
    where: np.ndarray | None  # (bh, bw, 1) bool; None when every pixel of the box is masked
    fill: Fill
    cells: tuple[int, int]  # pixelate: the box shrinks to (cols, rows) blocks


@dataclass(frozen=True)
class _Plan:
    patches: tuple[_Patch, ...]
    mask: np.ndarray  # (h, w) bool, read-only


class PrivacyMasker:
    """Applies the configured masks to frames in place. Thread-safe; cheap with no masks."""

    def __init__(self, cfg: PrivacyConfig) -> None:
        self._cfg = cfg
        # Pixelated masks first: where masks overlap, a solid mask stays solid.
        self._regions = sorted(cfg.masks, key=lambda r: cfg.fill_of(r) == "solid")
        self._plans: dict[tuple[int, int], _Plan] = {}
        self._lock = threading.Lock()
        self._solid = np.array(SOLID_FILL_BGR, np.uint8)
        self.active_count = len(cfg.masks)
        self.area_share = coverage_share(cfg)

    def apply(self, frame_bgr: np.ndarray) -> None:
        """Overwrite the masked pixels of a (h, w, 3) uint8 BGR frame."""
        if not self._regions:
            return
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected an (h, w, 3) uint8 frame, got {frame_bgr.shape}")
        for patch in self._plan(frame_bgr.shape[0], frame_bgr.shape[1]).patches:
            box = frame_bgr[patch.ys, patch.xs]
            if patch.fill == "solid":
                if patch.where is None:
                    box[:] = self._solid
                else:
                    np.copyto(box, self._solid, where=patch.where)
                continue
            small = cv2.resize(box, patch.cells, interpolation=cv2.INTER_AREA)
            blocks = cv2.resize(
                small, (box.shape[1], box.shape[0]), interpolation=cv2.INTER_NEAREST
            )
            if patch.where is None:
                box[:] = blocks
            else:
                np.copyto(box, blocks, where=patch.where)

    def mask_for(self, width: int, height: int) -> np.ndarray:
        """The masked pixels at this resolution: (height, width) bool, read-only (health)."""
        return self._plan(height, width).mask

    def snapshot(self) -> dict[str, object]:
        """For the heartbeat and status: are masks on, and how much of the picture they hide."""
        return {"active_count": self.active_count, "area_share": round(self.area_share, 4)}

    def _plan(self, height: int, width: int) -> _Plan:
        key = (height, width)
        with self._lock:
            plan = self._plans.get(key)
        if plan is not None:
            return plan
        plan = self._build(height, width)
        with self._lock:
            while len(self._plans) >= MAX_CACHED_RESOLUTIONS:
                self._plans.pop(next(iter(self._plans)))  # oldest resolution first
            self._plans[key] = plan
        log.debug("privacy masks rasterised at %dx%d", width, height)
        return plan

    def _build(self, height: int, width: int) -> _Plan:
        union = np.zeros((height, width), np.uint8)
        patches: list[_Patch] = []
        block_px = pixelate_block_px(height)
        for region in self._regions:
            image = rasterise(region, width, height)
            union |= image
            x, y, bw, bh = cv2.boundingRect(image)
            if bw == 0 or bh == 0:
                continue  # cannot happen for a valid mask: its outline always touches pixels
            crop = image[y : y + bh, x : x + bw].astype(bool)
            where = None if crop.all() else crop[:, :, None].copy()
            cells = (max(1, math.ceil(bw / block_px)), max(1, math.ceil(bh / block_px)))
            patches.append(
                _Patch(slice(y, y + bh), slice(x, x + bw), where, self._cfg.fill_of(region), cells)
            )
        mask = union.astype(bool)
        mask.setflags(write=False)
        return _Plan(tuple(patches), mask)
