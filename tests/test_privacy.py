"""Privacy masks: masked pixels never reach the encoder, the segments or a snapshot."""

from __future__ import annotations

import argparse
import io
import logging
import tomllib
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.capture.frames import planes, to_bgr, to_i420
from agent.capture.privacy import (
    SOLID_FILL_LEVEL,
    MaskRegion,
    PrivacyConfig,
    PrivacyMasker,
    coverage_share,
    pixelate_block_px,
)
from agent.core.config import ConfigError
from agent.tools import mask_cli

CAPTURE_W, CAPTURE_H = 640, 360
RUNGS = [(640, 360), (480, 270), (320, 180)]  # capture size and two smaller rungs
SQUARE_PX = 8  # checkerboard square at capture size: far above what the masks may leave
BOOTHS = {
    "masks": [
        {"rect": [0.05, 0.15, 0.35, 0.75]},
        {"polygon": [[0.55, 0.2], [0.95, 0.25], [0.9, 0.9], [0.6, 0.8]]},
    ]
}
# Codec noise allowed inside a solid mask, and the band along its edge left out of the check
# (4:2:0 chroma, 8x8 transform blocks and INTER_AREA scaling blur the mask edge).
SOLID_TOLERANCE = 12
EDGE_MARGIN_PX = 6


def checkerboard(width: int, height: int, square_px: int = SQUARE_PX) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    board = (((xs // square_px) + (ys // square_px)) % 2 * 255).astype(np.uint8)
    frame = np.dstack([board, board, board]).copy()
    frame[..., 2] = 255 - board  # colour too, so chroma carries the pattern as well
    return frame


def encode_decode(frames: list[np.ndarray], width: int, height: int) -> list[np.ndarray]:
    """As the pipeline does: scale to the rung, I420, libx264 into MPEG-TS; then decode."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 2_000_000
        stream.options = {"preset": "veryfast", "tune": "zerolatency"}
        for pts, image in enumerate(frames):
            if image.shape[:2] != (height, width):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            i420 = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
            frame.pts, frame.time_base = pts, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    buffer.seek(0)
    with av.open(buffer, "r", format="mpegts") as inp:
        decoded = [f.to_ndarray(format="bgr24") for f in inp.decode(video=0)]
    assert len(decoded) == len(frames)
    return decoded


def booth_pixels(width: int, height: int, cfg: dict[str, Any] = BOOTHS) -> np.ndarray:
    """Pixels whose centre lies in a mask, computed here (convex masks only), not by the masker."""
    ys, xs = np.mgrid[0:height, 0:width]
    px, py = (xs + 0.5) / width, (ys + 0.5) / height
    union = np.zeros((height, width), bool)
    for raw in cfg["masks"]:
        points = MaskRegion.model_validate(raw).points()
        crosses = np.stack(
            [
                (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
                for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True)
            ]
        )
        union |= (crosses >= 0).all(axis=0) | (crosses <= 0).all(axis=0)
    return union


def inside(mask: np.ndarray, margin_px: int) -> np.ndarray:
    kernel = np.ones((2 * margin_px + 1, 2 * margin_px + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)


def outside(mask: np.ndarray, margin_px: int) -> np.ndarray:
    kernel = np.ones((2 * margin_px + 1, 2 * margin_px + 1), np.uint8)
    return ~cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def assert_solid_where_masked(image: np.ndarray) -> None:
    h, w = image.shape[:2]
    mask = booth_pixels(w, h)
    core = inside(mask, EDGE_MARGIN_PX)
    assert core.sum() > 0.1 * mask.sum()
    error = np.abs(image[core].astype(int) - SOLID_FILL_LEVEL)
    assert np.percentile(error, 99.5) <= SOLID_TOLERANCE, f"masked pixels differ by {error.max()}"
    assert error.mean() < 3
    rest = image[outside(mask, EDGE_MARGIN_PX)]
    assert rest.std() > 80, "the unmasked checkerboard did not survive: the test proves nothing"


def high_frequency(image: np.ndarray, where: np.ndarray) -> float:
    """Mean distance of each pixel from the mean of a checkerboard square's surroundings:
    about 27 on the test pattern at any rung, near 0 on blocks larger than a square."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    k = SQUARE_PX * image.shape[1] // CAPTURE_W + 1
    return float(np.abs(grey - cv2.blur(grey, (k, k)))[where].mean())


# -- the picture ---------------------------------------------------------------------------


@pytest.mark.parametrize("width,height", RUNGS)
def test_solid_masks_survive_encoding_at_every_rung(width: int, height: int) -> None:
    masker = PrivacyMasker(PrivacyConfig.model_validate(BOOTHS))
    frames = []
    for shift in range(6):  # a moving pattern, so the encoder has real work to do
        frame = np.roll(checkerboard(CAPTURE_W, CAPTURE_H), shift * 2, axis=1)
        masker.apply(frame)  # at capture resolution, before scaling, as the pipeline does
        frames.append(frame)
    for decoded in encode_decode(frames, width, height):
        assert_solid_where_masked(decoded)


def test_unmasked_frames_fail_the_same_check() -> None:
    decoded = encode_decode([checkerboard(CAPTURE_W, CAPTURE_H)], 320, 180)[0]
    with pytest.raises(AssertionError):
        assert_solid_where_masked(decoded)


def test_masks_hold_across_rung_changes_and_capture_sizes() -> None:
    """One masker, frames of two capture sizes, segments at alternating rungs."""
    masker = PrivacyMasker(PrivacyConfig.model_validate(BOOTHS))
    for capture_w, capture_h, rung in [(1280, 720, (640, 360)), (640, 360, (320, 180))] * 2:
        frame = checkerboard(capture_w, capture_h, SQUARE_PX * capture_w // CAPTURE_W)
        masker.apply(frame)
        assert_solid_where_masked(frame)
        for decoded in encode_decode([frame, frame.copy()], *rung):
            assert_solid_where_masked(decoded)


def test_snapshot_jpeg_shows_the_fill() -> None:
    masker = PrivacyMasker(PrivacyConfig.model_validate(BOOTHS))
    frame = checkerboard(CAPTURE_W, CAPTURE_H)
    masker.apply(frame)
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    assert decoded is not None
    assert_solid_where_masked(np.asarray(decoded))


def test_pixelate_leaves_no_fine_detail_but_keeps_coarse_light() -> None:
    cfg = PrivacyConfig.model_validate(BOOTHS | {"fill": "pixelate"})
    masker = PrivacyMasker(cfg)
    ramp = np.linspace(0, 1, CAPTURE_W, dtype=np.float32)[None, :, None]
    frame = (checkerboard(CAPTURE_W, CAPTURE_H) * (0.3 + 0.7 * ramp)).astype(np.uint8)
    original = frame.copy()
    masker.apply(frame)
    booths = booth_pixels(CAPTURE_W, CAPTURE_H)
    core = inside(booths, 2)
    assert high_frequency(original, core) > 15  # the pattern is there before
    block_px = pixelate_block_px(CAPTURE_H)
    per_row_changes = (np.diff(frame.astype(int), axis=1) != 0).any(axis=2) & core[:, 1:]
    assert per_row_changes.sum(axis=1).max() <= CAPTURE_W // block_px + 2  # blocks, not detail
    untouched = outside(booths, 1)
    assert np.array_equal(frame[untouched], original[untouched])  # nothing else changed
    assert frame[core].std() > 5, "pixelate must keep coarse light, else it is a solid fill"
    for width, height in RUNGS:
        decoded = encode_decode([frame], width, height)[0]
        rung_core = inside(booth_pixels(width, height), EDGE_MARGIN_PX)
        # Block edges remain (a small step every block); the checkerboard scores about 27.
        assert high_frequency(decoded, rung_core) < 3
        assert high_frequency(decoded, outside(booth_pixels(width, height), 6)) > 15


@pytest.mark.parametrize("fill", ["solid", "pixelate"])
def test_i420_frames_are_masked_in_every_plane(fill: str) -> None:
    """The pipeline's frames are I420: luma and both chroma planes hide the booths, as the
    BGR frames do, and nothing outside a mask (and its 2x2 chroma rim) changes."""
    masker = PrivacyMasker(PrivacyConfig.model_validate(BOOTHS | {"fill": fill}))
    bgr = checkerboard(CAPTURE_W, CAPTURE_H)
    i420 = to_i420(bgr)
    original = i420.copy()
    masker.apply(i420)
    shown = to_bgr(i420)
    booths = booth_pixels(CAPTURE_W, CAPTURE_H)
    if fill == "solid":
        assert_solid_where_masked(shown)
    else:
        assert high_frequency(shown, inside(booths, 2)) < 3  # blocks, not the pattern
    rim = ~outside(booths, 2)  # a chroma sample covers 2x2 luma pixels
    y, y0 = i420[:CAPTURE_H], original[:CAPTURE_H]
    assert np.array_equal(y[~rim], y0[~rim])
    chroma_rim = rim.reshape(CAPTURE_H // 2, 2, CAPTURE_W // 2, 2).any(axis=(1, 3))
    for plane, before in zip(planes(i420)[1:], planes(original)[1:], strict=True):
        assert np.array_equal(plane[~chroma_rim], before[~chroma_rim])
        assert not np.array_equal(plane[chroma_rim], before[chroma_rim])


# -- the masker ----------------------------------------------------------------------------


def test_no_masks_changes_nothing() -> None:
    masker = PrivacyMasker(PrivacyConfig())
    frame = checkerboard(64, 48)
    masker.apply(frame)
    assert np.array_equal(frame, checkerboard(64, 48))
    assert masker.snapshot() == {"active_count": 0, "area_share": 0.0}
    assert not masker.mask_for(64, 48).any()


def test_snapshot_reports_count_and_share() -> None:
    cfg = PrivacyConfig.model_validate(
        {"masks": [{"rect": [0, 0, 0.5, 0.5]}, {"rect": [0, 0, 0.5, 0.25]}]}
    )
    snap = PrivacyMasker(cfg).snapshot()
    assert snap["active_count"] == 2
    assert snap["area_share"] == pytest.approx(0.25, abs=0.003)  # the union, not the sum


@pytest.mark.parametrize("width,height", [(640, 360), (333, 187), (1920, 1080)])
def test_mask_for_covers_the_booths(width: int, height: int) -> None:
    mask = PrivacyMasker(PrivacyConfig.model_validate(BOOTHS)).mask_for(width, height)
    expected = booth_pixels(width, height)
    assert mask.shape == (height, width)
    assert not (expected & ~mask).any()  # every pixel whose centre is inside is masked
    assert not (mask & ~cv2.dilate(expected.astype(np.uint8), np.ones((3, 3))).astype(bool)).any()


@pytest.mark.parametrize("fill", ["solid", "pixelate"])
def test_frames_that_are_views_are_masked_too(fill: str) -> None:
    """A crop of a larger image or a flipped view: OpenCV cannot write into those in place."""
    masker = PrivacyMasker(PrivacyConfig.model_validate(BOOTHS | {"fill": fill}))
    big = checkerboard(CAPTURE_W + 40, CAPTURE_H)
    for view in (big[:, 20 : 20 + CAPTURE_W], checkerboard(CAPTURE_W, CAPTURE_H)[::-1]):
        expected = np.ascontiguousarray(view)
        masker.apply(expected)
        masker.apply(view)
        assert np.array_equal(view, expected)
        assert high_frequency(view, inside(booth_pixels(CAPTURE_W, CAPTURE_H), 2)) < 3


def test_mask_is_read_only_and_rejects_other_frames() -> None:
    masker = PrivacyMasker(PrivacyConfig.model_validate(BOOTHS))
    with pytest.raises(ValueError):
        masker.mask_for(64, 48)[0, 0] = True
    for frame in (np.zeros((47, 64), np.uint8), np.zeros((48, 64, 4), np.uint8)):
        with pytest.raises(ValueError, match="BGR or I420"):  # neither BGR nor I420
            masker.apply(frame)
    with pytest.raises(ValueError, match="uint8"):
        masker.apply(np.zeros((48, 64, 3), np.float32))


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0, 0.9), st.floats(0, 0.9), st.floats(0.01, 1), st.floats(0.01, 1),
    st.integers(16, 400), st.integers(16, 400),
)  # fmt: skip
def test_rect_masks_cover_every_touched_pixel(
    x0: float, y0: float, dx: float, dy: float, width: int, height: int
) -> None:
    x1, y1 = min(1.0, x0 + dx), min(1.0, y0 + dy)
    region = MaskRegion(rect=(x0, y0, x1, y1))
    mask = PrivacyMasker(PrivacyConfig(masks=(region,), confirm_large_masks=True)).mask_for(
        width, height
    )
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    # Every pixel the rect overlaps (by more than the 1/256 px fixed-point step of the
    # rasteriser) is masked; at most one more on each side.
    slack = 0.01
    touched_x = (int(np.floor(x0 * width + slack)), int(np.ceil(x1 * width - slack)) - 1)
    touched_y = (int(np.floor(y0 * height + slack)), int(np.ceil(y1 * height - slack)) - 1)
    block = mask[touched_y[0] : touched_y[1] + 1, touched_x[0] : touched_x[1] + 1]
    assert block.all()
    assert cols[0] >= touched_x[0] - 1 and cols[-1] <= touched_x[1] + 1
    assert rows[0] >= touched_y[0] - 1 and rows[-1] <= touched_y[1] + 1


# -- validation ----------------------------------------------------------------------------

GOOD = {"rect": [0.1, 0.1, 0.2, 0.2]}


@pytest.mark.parametrize(
    "bad,words",
    [
        ({"rect": [0.1, 0.1, 1.2, 0.5]}, ["x1", "outside 0..1"]),
        ({"rect": [-0.1, 0.1, 0.2, 0.5]}, ["x0", "outside 0..1"]),
        ({"rect": [0.3, 0.1, 0.3, 0.5]}, ["zero area"]),
        ({"polygon": [[0.1, 0.1], [0.5, 1.5], [0.2, 0.3]]}, ["point 1", "outside 0..1"]),
        ({"polygon": [[0.1, 0.1], [0.5, 0.5]]}, ["2 point(s)", "at least 3"]),
        ({"polygon": [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]}, ["no area"]),
        ({"polygon": [[0.1, 0.1], [0.1, 0.1], [0.1, 0.1], [0.1, 0.1]]}, ["no area"]),
        ({}, ["exactly one of rect", "polygon"]),
        ({"rect": [0, 0, 0.1, 0.1], "polygon": [[0, 0], [0.1, 0], [0, 0.1]]}, ["exactly one"]),
    ],
)
def test_bad_masks_are_refused_naming_the_mask(bad: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        PrivacyConfig.model_validate({"masks": [GOOD, bad]})
    first = info.value.errors()[0]
    assert first["loc"][:2] == ("masks", 1)
    for word in words:
        assert word in first["msg"]


def test_config_file_errors_name_section_and_index(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    text = (
        'station_id = "T-1"\n[privacy]\n'
        "masks = [{ rect = [0.1, 0.1, 0.2, 0.2] }, { polygon = [[0, 0], [1, 1]] }]\n"
    )
    with pytest.raises(ConfigError, match=r"privacy\.masks\.1': polygon has 2 point"):
        mask_cli.load_sections(path, text)


def test_large_masks_refused_unless_confirmed(caplog: pytest.LogCaptureFixture) -> None:
    big = {
        "masks": [{"rect": [0, 0, 1, 0.6]}, {"polygon": [[0, 0.5], [1, 0.5], [1, 0.95], [0, 1]]}]
    }
    with pytest.raises(ValidationError, match=r"cover 9\d\.\d% .*confirm_large_masks"):
        PrivacyConfig.model_validate(big)
    with caplog.at_level(logging.WARNING, logger="agent.capture.privacy"):
        cfg = PrivacyConfig.model_validate(big | {"confirm_large_masks": True})
    assert coverage_share(cfg) > 0.9
    assert "confirm_large_masks" in caplog.text
    assert (
        0.89
        < coverage_share(PrivacyConfig.model_validate({"masks": [{"rect": [0, 0, 1, 0.89]}]}))
        < 0.9
    )


# -- the CLI -------------------------------------------------------------------------------

CONFIG = '''station_id = "AZ-0001"  # the station

[capture]
source = "test:"
width = 640
height = 360

[health]
reference_image = """
[privacy]
this is not a table header
"""

[adapt]
ladder = [
  { width = 640, height = 360, fps = 30, bitrate_bps = 600000 },
  { width = 320, height = 180, fps = 15, bitrate_bps = 200000 },
]

# The booths by the window.
[privacy]
fill = "solid"
masks = [{ rect = [0.05, 0.15, 0.35, 0.75] }]

# encoder settings
[encode]
preset = "veryfast"
'''


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    mask_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["mask", *argv])
    return int(args.func(args))


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_cli("--help")
    assert "--add-polygon" in capsys.readouterr().out


@pytest.fixture
def station(tmp_path: Path) -> tuple[Path, Path]:
    config, image = tmp_path / "config.toml", tmp_path / "snap.png"
    config.write_text(CONFIG, encoding="utf-8")
    assert cv2.imwrite(str(image), checkerboard(CAPTURE_W, CAPTURE_H))
    return config, image


def test_cli_preview_and_write_round_trip(
    station: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, image = station
    preview = tmp_path / "preview.png"
    polygon = "0.55,0.2 0.95,0.25 0.9,0.9 0.6,0.8"
    rc = run_cli(
        "--config", str(config), "--image", str(image), "--add-polygon", polygon,
        "--fill", "pixelate", "--preview", str(preview), "--write",
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "masked share of the frame: " in out and "saved" in out
    text = config.read_text(encoding="utf-8")
    before, after = tomllib.loads(CONFIG), tomllib.loads(text)
    assert after["privacy"]["masks"] == [
        {"rect": [0.05, 0.15, 0.35, 0.75]},
        {"polygon": [[0.55, 0.2], [0.95, 0.25], [0.9, 0.9], [0.6, 0.8]], "fill": "pixelate"},
    ]
    assert {k: v for k, v in after.items() if k != "privacy"} == {
        k: v for k, v in before.items() if k != "privacy"
    }
    assert (
        "# The booths by the window.\n[privacy]" in text and "# encoder settings\n[encode]" in text
    )
    shown = cv2.imread(str(preview))
    assert shown is not None and shown.shape == (CAPTURE_H, CAPTURE_W, 3)
    first = PrivacyMasker(PrivacyConfig.model_validate({"masks": [after["privacy"]["masks"][0]]}))
    core = inside(first.mask_for(CAPTURE_W, CAPTURE_H), 4)
    filled = (shown[core] == SOLID_FILL_LEVEL).all(axis=1)
    assert filled.mean() > 0.9  # the rest is the mask's outline label
    for colour in [(255, 255, 0), (0, 0, 255)]:  # the checkerboard's two colours
        assert not (shown[core] == colour).all(axis=1).any()
    mask_cli.load_sections(config, text)  # and the file still loads


def test_cli_without_write_leaves_the_file(station: tuple[Path, Path], tmp_path: Path) -> None:
    config, image = station
    rc = run_cli(
        "--config", str(config), "--image", str(image), "--clear", "--add-rect", "0,0,0.5,0.5",
        "--preview", str(tmp_path / "p.png"),
    )  # fmt: skip
    assert rc == 0
    assert config.read_text(encoding="utf-8") == CONFIG
    assert (tmp_path / "p.png").is_file()


TECHNICIAN_CONFIG = """station_id = "AZ-0001"
[capture]
source = "test:"

[privacy]  # agreed with the presiding officer on 2026-11-20
fill = "pixelate"  # the officer asked for pixelate, not solid
masks = [
    # booth 1, by the window
    { rect = [0.05, 0.15, 0.35, 0.75] },
]

# encoder settings
[encode]
preset = "veryfast"  # the box is slow
"""


def test_cli_write_keeps_the_technicians_comments(tmp_path: Path) -> None:
    config, image = tmp_path / "config.toml", tmp_path / "snap.png"
    config.write_text(TECHNICIAN_CONFIG, encoding="utf-8")
    assert cv2.imwrite(str(image), checkerboard(160, 90))
    rc = run_cli(
        "--config", str(config), "--image", str(image), "--add-rect", "0.6,0.1,0.9,0.5",
        "--fill", "solid", "--confirm-large-masks", "--write", "--preview", str(tmp_path / "p.png"),
    )  # fmt: skip
    assert rc == 0
    text = config.read_text(encoding="utf-8")
    for line in TECHNICIAN_CONFIG.splitlines():
        if "#" in line:
            assert line in text.splitlines(), line  # every comment, on its own line as written
    assert text.index("# booth 1, by the window") < text.index("0.05, 0.15, 0.35, 0.75")
    assert "# encoder settings\n[encode]" in text
    data = tomllib.loads(text)
    assert data["privacy"] == {
        "fill": "pixelate",
        "confirm_large_masks": True,
        "masks": [
            {"rect": [0.05, 0.15, 0.35, 0.75]},
            {"rect": [0.6, 0.1, 0.9, 0.5], "fill": "solid"},
        ],
    }
    untouched = tomllib.loads(TECHNICIAN_CONFIG)
    assert {k: v for k, v in data.items() if k != "privacy"} == {
        k: v for k, v in untouched.items() if k != "privacy"
    }


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--add-rect", "0,0,1.5,1"], "x1 = 1.5 is outside 0..1"),
        (["--add-rect", "0,0,1"], "expected 4 numbers"),
        (["--add-polygon", "0,0 1,1"], "at least 3"),
        (["--clear", "--add-rect", "0,0,1,0.95"], "confirm_large_masks"),
    ],
)
def test_cli_refuses_bad_masks(
    station: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    config, image = station
    rc = run_cli("--config", str(config), "--image", str(image), "--write", *argv)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert config.read_text(encoding="utf-8") == CONFIG


def test_cli_confirmed_large_mask_and_new_section(tmp_path: Path) -> None:
    config, image = tmp_path / "c.toml", tmp_path / "s.png"
    config.write_text('station_id = "X"\n[capture]\nsource = "test:"', encoding="utf-8")
    assert cv2.imwrite(str(image), checkerboard(160, 90))
    rc = run_cli(
        "--config", str(config), "--image", str(image), "--add-rect", "0,0,1,0.95",
        "--confirm-large-masks", "--write", "--preview", str(tmp_path / "p.png"),
    )  # fmt: skip
    assert rc == 0
    data = tomllib.loads(config.read_text(encoding="utf-8"))
    assert data["privacy"]["confirm_large_masks"] is True
    assert data["capture"] == {"source": "test:"} and data["station_id"] == "X"
