"""Rungs: what the encoder produces (size, frame rate, bitrate)."""

from __future__ import annotations

from dataclasses import dataclass


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
    def name(self) -> str:
        """Short label for people: '720p30 1.5M'."""
        return f"{self.height}p{self.fps} {format_bps(self.bitrate_bps)}"

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
