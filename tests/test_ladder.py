"""Ladder defaults, `[adapt]` validation and fitting the ladder to the camera."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.adapt.ladder import (
    LADDER_4_3,
    LADDER_16_9,
    AdaptConfig,
    Rung,
    build_ladder,
)


@pytest.mark.parametrize("ladder", [LADDER_16_9, LADDER_4_3])
def test_default_ladders_span_240p10_to_1080p30_ascending(ladder: tuple[Rung, ...]) -> None:
    assert ladder[0].label == "240p10" and ladder[0].bitrate_bps <= 150_000
    assert ladder[-1].label == "1080p30" and ladder[-1].bitrate_bps <= 5_000_000
    rates = [r.bitrate_bps for r in ladder]
    assert rates == sorted(set(rates))


def test_aspect_follows_the_camera() -> None:
    wide = build_ladder(AdaptConfig(), 1920, 1080, 30)
    square = build_ladder(AdaptConfig(), 1280, 960, 30)
    assert all(abs(r.width / r.height - 16 / 9) < 0.02 for r in wide)
    assert all(abs(r.width / r.height - 4 / 3) < 0.02 for r in square)


def test_never_above_the_camera() -> None:
    ladder = build_ladder(AdaptConfig(), 1280, 720, 25)
    assert ladder[-1].height == 720
    assert all(r.width <= 1280 and r.height <= 720 and r.fps <= 25 for r in ladder)
    assert len(set(ladder)) == len(ladder)


def test_tiny_camera_gets_one_rung_of_its_own_size() -> None:
    assert build_ladder(AdaptConfig(), 160, 120, 5) == [Rung(160, 120, 5, 150_000)]


def test_min_and_max_rung_cut_the_ladder() -> None:
    cfg = AdaptConfig(min_rung="360p15", max_rung="720p30")
    ladder = build_ladder(cfg, 1920, 1080, 30)
    assert ladder[0].label == "360p15"
    assert ladder[-1].label == "720p30"


def test_explicit_ladder_is_sorted_and_fitted() -> None:
    cfg = AdaptConfig.model_validate(
        {
            "ladder": [
                {"width": 1280, "height": 720, "fps": 30, "bitrate_bps": 2_000_000},
                {"width": 640, "height": 360, "fps": 30, "bitrate_bps": 500_000},
                {"width": 1920, "height": 1080, "fps": 30, "bitrate_bps": 4_000_000},
            ]
        }
    )
    assert [r.height for r in build_ladder(cfg, 1280, 720, 30)] == [360, 720]


@pytest.mark.parametrize(
    "data",
    [
        {"min_rung": "720p30", "max_rung": "360p30"},
        {"max_rung": "720"},
        {"margin": 0.7, "up_margin": 0.8},
        {"margin": 1.5},
        {"ladder": [{"width": 641, "height": 360, "fps": 30, "bitrate_bps": 500_000}]},
        {
            "ladder": [
                {"width": 640, "height": 360, "fps": 30, "bitrate_bps": 500_000},
                {"width": 854, "height": 480, "fps": 30, "bitrate_bps": 500_000},
            ]
        },
        {"unknown_key": 1},
    ],
)
def test_bad_adapt_sections_are_rejected(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AdaptConfig.model_validate(data)
