"""`[encode]`: encoder choice, preset and segment length (the bitrate comes from the ladder)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.core.config import Section

HW_ENCODERS = ("h264_v4l2m2m", "h264_qsv", "h264_nvenc", "h264_vaapi")


class EncodeConfig(Section):
    encoder: Literal["libx264", "auto", "h264_v4l2m2m", "h264_qsv", "h264_nvenc", "h264_vaapi"] = (
        "libx264"
    )
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = (
        "veryfast"
    )
    segment_s: float = Field(2.0, ge=1.0, le=10.0)
    threads: int = Field(0, ge=0, le=16)  # 0 = libx264 decides
