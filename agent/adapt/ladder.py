"""Rungs: what the encoder produces (size, frame rate, bitrate), the ladder and `[adapt]` config.

A ladder is a list of rungs ascending by bitrate (index 0 is the lowest). `build_ladder` fits the
configured or default ladder to the camera; `RungController` (agent/adapt/controller.py) moves
along it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field, field_validator, model_validator

from agent.core.config import Section

# Rung labels: height "p" fps, e.g. "720p30". Written by `picture_label` and read by
# `parse_label` only; every label in the config, the commands and the messages goes through them.
LABEL_PATTERN = r"^([0-9]{2,4})p([0-9]{1,2})$"


def picture_label(height: int, fps: int) -> str:
    """(720, 30) -> '720p30'."""
    return f"{height}p{fps}"


def parse_label(label: str) -> tuple[int, int]:
    """'720p30' -> (720, 30)."""
    match = re.fullmatch(LABEL_PATTERN, label.strip())
    if not match:
        raise ValueError(f"{label!r} is not a rung label; write e.g. '720p30' (height p fps)")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class Rung:
    """One encoding setting. Width and height are even (H.264 4:2:0 needs it)."""

    width: int
    height: int
    fps: int
    bitrate_bps: int

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(f"rung size {self.width}x{self.height} must be even and >= 16")
        if not 1 <= self.fps <= 60:
            raise ValueError(f"rung fps {self.fps} must be within 1..60")
        if self.bitrate_bps < 32_000:
            raise ValueError(f"rung bitrate {self.bitrate_bps} bit/s is below 32 kbit/s")

    @property
    def label(self) -> str:
        """'720p30': the picture, as the `[adapt]` keys and the `set_rung` command name it."""
        return picture_label(self.height, self.fps)

    @property
    def name(self) -> str:
        """'720p30 1.5M': the picture and the bitrate, for people."""
        return f"{self.label} {format_bps(self.bitrate_bps)}"

    def same_picture(self, other: Rung) -> bool:
        """True when only the bitrate differs (no new encoder context needed)."""
        return (self.width, self.height, self.fps) == (other.width, other.height, other.fps)

    def as_dict(self) -> dict[str, int]:
        return {
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "bitrate_bps": self.bitrate_bps,
        }


def format_bps(bps: float) -> str:
    if bps >= 1_000_000:
        return f"{bps / 1_000_000:.1f}M"
    return f"{bps / 1000:.0f}k"


# --- default ladders ---------------------------------------------------------------------------
# Ascending by bitrate: index 0 is the lowest rung, the last one the top.
#
# The upper half follows Apple's HLS Authoring Specification for Apple Devices (2023 ladder:
# 960x540 2.0M, 1280x720 3.0-4.5M, 1920x1080 6.0-7.8M), scaled down by about 1/3 because a fixed
# webcam filming a polling station is a mostly static scene encoded by x264 with zerolatency, not
# film content. The lower half follows the 2012 national polling-station webcam deployments, which
# ran 4:3 VGA-class pictures at ~215-265 kbit/s and were watchable; 240p10 at 150 kbit/s is the
# floor (Apple's own lowest rung is 416x234 at 145 kbit/s).
LADDER_16_9: tuple[Rung, ...] = (
    Rung(426, 240, 10, 150_000),
    Rung(480, 270, 15, 250_000),
    Rung(640, 360, 15, 400_000),
    Rung(640, 360, 30, 600_000),
    Rung(768, 432, 30, 900_000),
    Rung(960, 540, 30, 1_400_000),
    Rung(1280, 720, 30, 2_500_000),
    Rung(1920, 1080, 30, 4_500_000),
)
LADDER_4_3: tuple[Rung, ...] = (
    Rung(320, 240, 10, 150_000),
    Rung(384, 288, 15, 250_000),
    Rung(480, 360, 15, 400_000),
    Rung(640, 480, 15, 600_000),
    Rung(640, 480, 30, 900_000),
    Rung(800, 600, 30, 1_400_000),
    Rung(1024, 768, 30, 2_200_000),
    Rung(1280, 960, 30, 3_200_000),
    Rung(1440, 1080, 30, 4_500_000),
)
ASPECT_4_3 = 4 / 3
ASPECT_16_9 = 16 / 9


def highest_at_or_below(ladder: Sequence[Rung], label: str) -> int:
    """Index of the highest rung with height <= and fps <= the label's (0 when none is)."""
    height, fps = parse_label(label)
    fitting = [i for i, r in enumerate(ladder) if r.height <= height and r.fps <= fps]
    return fitting[-1] if fitting else 0


def lowest_at_or_above(ladder: Sequence[Rung], label: str) -> int:
    """Index of the lowest rung with height >= and fps >= the label's (the top when none is)."""
    height, fps = parse_label(label)
    fitting = [i for i, r in enumerate(ladder) if r.height >= height and r.fps >= fps]
    return fitting[0] if fitting else len(ladder) - 1


class LadderRung(Section):
    """One rung as written in the `[adapt]` section: {width, height, fps, bitrate_bps}."""

    width: int = Field(ge=16, le=7680)
    height: int = Field(ge=16, le=4320)
    fps: int = Field(ge=1, le=60)
    bitrate_bps: int = Field(ge=32_000, le=50_000_000)

    @field_validator("width", "height")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"{value} must be even (H.264 4:2:0)")
        return value

    def rung(self) -> Rung:
        return Rung(self.width, self.height, self.fps, self.bitrate_bps)


class AdaptConfig(Section):
    """The `[adapt]` section: ladder, bounds and the controller's tuning.

    Rungs are named by picture labels such as "720p30" (height p fps), which work for 16:9 and
    4:3 cameras alike: `max_rung`, `start_rung` and `offline_rung` pick the highest rung whose
    height and fps are both <= the label's; `min_rung` picks the lowest rung whose height and fps
    are both >= the label's.
    """

    # False: always encode the top rung (what a fixed-bitrate encoder would do).
    enabled: bool = True
    # Explicit ladder (any order; sorted by bitrate). Default: LADDER_16_9 or LADDER_4_3.
    ladder: tuple[LadderRung, ...] | None = Field(None, min_length=1, max_length=32)
    max_rung: str | None = None
    min_rung: str | None = None
    start_rung: str = "360p30"
    # Recorded while the uplink is offline: small enough that the backlog stays backfillable.
    offline_rung: str = "360p15"
    # Encode at most this share of the throughput estimate (headroom for bursts and keyframes).
    margin: float = Field(0.85, ge=0.3, le=1.0)
    # Step up only when the next rung's bitrate fits in this share of the estimate (hysteresis).
    up_margin: float = Field(0.75, ge=0.2, le=1.0)
    # Sustained headroom needed before each single step up.
    up_after_s: float = Field(6.0, ge=0.0, le=600.0)
    # No step up this long after a step down.
    hold_after_down_s: float = Field(12.0, ge=0.0, le=3600.0)
    # The backlog should be backfilled within this time (while live keeps its share).
    backfill_target_s: float = Field(600.0, ge=10.0, le=86_400.0)
    # Live never gets less than this share of the usable throughput because of backfill.
    live_min_share: float = Field(0.5, ge=0.1, le=1.0)
    # Fine-tune the bitrate between a rung and the next one (same picture, no encoder rebuild).
    bitrate_trim: bool = True
    # Encoder load (encode time per frame / frame interval) above which the picture steps down.
    cpu_high_load: float = Field(0.85, ge=0.2, le=2.0)
    # Sustained low load needed before a CPU-capped picture may step up again.
    cpu_up_after_s: float = Field(60.0, ge=0.0, le=3600.0)

    @field_validator("max_rung", "min_rung", "start_rung", "offline_rung")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        if value is not None:
            parse_label(value)
        return value

    @field_validator("ladder")
    @classmethod
    def _sorted_unique(cls, value: tuple[LadderRung, ...] | None) -> tuple[LadderRung, ...] | None:
        if value is None:
            return None
        ordered = tuple(sorted(value, key=lambda r: r.bitrate_bps))
        for low, high in itertools.pairwise(ordered):
            if low.bitrate_bps == high.bitrate_bps:
                raise ValueError(f"two rungs have the same bitrate {low.bitrate_bps}")
        return ordered

    @model_validator(mode="after")
    def _bounds(self) -> AdaptConfig:
        if self.max_rung is not None and self.min_rung is not None:
            (max_h, max_fps), (min_h, min_fps) = (
                parse_label(self.max_rung),
                parse_label(self.min_rung),
            )
            if min_h > max_h or min_fps > max_fps:
                raise ValueError(f"min_rung {self.min_rung} is above max_rung {self.max_rung}")
        if self.up_margin > self.margin:
            raise ValueError(f"up_margin {self.up_margin} must be <= margin {self.margin}")
        return self


def build_ladder(
    cfg: AdaptConfig, camera_width: int, camera_height: int, camera_fps: int
) -> list[Rung]:
    """The rungs this station may use, ascending by bitrate (index 0 = lowest).

    Starts from `cfg.ladder` or the default ladder whose aspect is nearest the camera's; keeps
    only pictures the camera delivers (width/height <= the camera's; fps capped to the camera's),
    then cuts to `min_rung`..`max_rung`. Never empty: a camera smaller than every rung gets one
    rung at its own size and the lowest bitrate.
    """
    if cfg.ladder is not None:
        source: Sequence[Rung] = [r.rung() for r in cfg.ladder]
    else:
        aspect = camera_width / camera_height
        nearer_4_3 = abs(aspect - ASPECT_4_3) < abs(aspect - ASPECT_16_9)
        source = LADDER_4_3 if nearer_4_3 else LADDER_16_9
    ladder: list[Rung] = []
    for r in source:
        if r.width > camera_width or r.height > camera_height:
            continue
        fitted = Rung(r.width, r.height, min(r.fps, camera_fps), r.bitrate_bps)
        if fitted not in ladder:
            ladder.append(fitted)
    if not ladder:
        width, height = max(16, camera_width // 2 * 2), max(16, camera_height // 2 * 2)
        return [Rung(width, height, min(source[0].fps, camera_fps), source[0].bitrate_bps)]
    top = highest_at_or_below(ladder, cfg.max_rung) if cfg.max_rung else len(ladder) - 1
    bottom = lowest_at_or_above(ladder, cfg.min_rung) if cfg.min_rung else 0
    return ladder[min(bottom, top) : top + 1]
