"""`[capture]`: which camera, at what size and rate, and how patiently to reopen it."""

from __future__ import annotations

from pydantic import Field, field_validator

from agent.core.config import Section

SOURCE_SCHEMES = ("v4l2:", "rtsp://", "rtsps://", "http://", "https://", "file:", "test:")


class CaptureConfig(Section):
    source: str = "test:"
    width: int = Field(1280, ge=160, le=3840)
    height: int = Field(720, ge=120, le=2160)
    fps: int = Field(30, ge=1, le=60)
    stall_timeout_s: float = Field(5.0, gt=0, le=120)
    reconnect_max_s: float = Field(30.0, ge=1, le=600)

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(SOURCE_SCHEMES):
            raise ValueError(f"{value!r} must start with one of {', '.join(SOURCE_SCHEMES)}")
        return value

    @field_validator("width", "height")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"{value} must be even (H.264 4:2:0)")
        return value
