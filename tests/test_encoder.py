"""Encoder selection: hardware H.264 when it opens, libx264 when it does not."""

from __future__ import annotations

import av
import numpy as np
import pytest

from agent.adapt.ladder import Rung
from agent.encode.encoder import EncoderError, open_video_encoder
from agent.encode.overlay import Overlay

RUNG = Rung(320, 240, 15, 300_000)


@pytest.mark.parametrize("preference", ["auto", "h264_nvenc", "h264_qsv", "h264_vaapi"])
def test_unavailable_hardware_falls_back_to_libx264(preference: str) -> None:
    # this machine (and CI) has no GPU, VA-API device or V4L2 M2M encoder
    encoder = open_video_encoder(preference, RUNG, "ultrafast", 0, 15)
    assert encoder.name == "libx264"
    frame = np.full((240 * 3 // 2, 320), 100, np.uint8)
    packets = encoder.encode(frame, 0, keyframe=True)
    packets += encoder.flush()
    assert packets and packets[0].is_keyframe


def test_no_encoder_at_all_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(av, "codecs_available", set())
    with pytest.raises(EncoderError, match="libx264: not in this PyAV build"):
        open_video_encoder("auto", RUNG, "ultrafast", 0, 15)


def decode(packets: list[av.Packet]) -> list[np.ndarray]:
    codec = av.CodecContext.create("h264", "r")
    frames = [f for p in packets for f in codec.decode(p)] + list(codec.decode(None))
    return [f.to_ndarray(format="yuv420p") for f in frames]


def test_libx264_takes_its_copy_before_encode_returns() -> None:
    """The encoder wraps the pipeline's array without copying it; the loop draws the overlay
    into the captured frame and restores it right after encode(): libx264 must have read the
    picture by then."""
    encoder = open_video_encoder("libx264", RUNG, "ultrafast", 0, 15)
    assert not encoder.keeps_frames
    packets: list[av.Packet] = []
    bright, dark = 200, 40
    frame = np.full((240 * 3 // 2, 320), 128, np.uint8)
    for k in range(6):
        frame[:240] = bright if k % 2 == 0 else dark
        packets += encoder.encode(frame, k * 6000, keyframe=k == 0)
        frame[:240] = 0  # what a later writer does to the array: must not reach the video
    packets += encoder.flush()
    lumas = [float(f[:240].mean()) for f in decode(packets)]
    assert len(lumas) == 6
    for k, value in enumerate(lumas):
        assert abs(value - (bright if k % 2 == 0 else dark)) < 8, lumas


def test_overlay_stamp_can_be_undone() -> None:
    overlay = Overlay("ST-1")
    frame = np.random.default_rng(0).integers(0, 255, (240 * 3 // 2, 320), dtype=np.uint8)
    original = frame.copy()
    overlay.stamp(frame, 1_700_000_000.5, keep_original=True)
    stamped = frame.copy()
    assert not np.array_equal(stamped, original)
    overlay.undo()
    assert np.array_equal(frame, original)
    overlay.undo()  # nothing kept: nothing changes
    assert np.array_equal(frame, original)
    overlay.stamp(frame, 1_700_000_000.9)  # the same second: the same stamp
    assert np.array_equal(frame, stamped)
