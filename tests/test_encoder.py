"""Encoder selection: hardware H.264 when it opens, libx264 when it does not."""

from __future__ import annotations

import numpy as np
import pytest

from agent.adapt.ladder import Rung
from agent.encode.encoder import EncoderError, open_video_encoder

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
    import av

    monkeypatch.setattr(av, "codecs_available", set())
    with pytest.raises(EncoderError, match="libx264: not in this PyAV build"):
        open_video_encoder("auto", RUNG, "ultrafast", 0, 15)
