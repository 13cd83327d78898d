"""The `[health]` configuration section: one sub-table per condition, defaults that work.

```toml
[health]
reference_image = "reference.png"   # taken when the technician aimed the camera
[health.dark]
raise_after_s = 3
```
Every condition has `raise_after_s` (it must hold that long before it is reported) and
`clear_after_s` (it must be gone that long before it is reported cleared). See
docs/camera-health.md for what each threshold means and how to tune it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agent.core.config import Section


class Debounce(Section):
    raise_after_s: float = Field(2.0, ge=0, le=600)
    clear_after_s: float = Field(2.0, ge=0, le=600)


class NoFramesConfig(Debounce):
    # A gap of 1 s without a new frame counts as "no frames"; reported after a further 2 s.
    gap_s: float = Field(1.0, gt=0, le=60)


class LowFpsConfig(Debounce):
    # Half the asked rate: a USB 2 camera falling back from MJPG to raw YUYV typically drops
    # 720p30 to 720p10 or less; brief dips under load are not worth a call.
    ratio: float = Field(0.5, gt=0, lt=1)
    raise_after_s: float = Field(10.0, ge=0, le=600)
    clear_after_s: float = Field(10.0, ge=0, le=600)


class FrozenConfig(Debounce):
    # FFmpeg freezedetect: noise -60 dB (0.001 of full scale = 0.26 grey level), duration 2 s.
    # A live but still scene shows sensor noise of 1-3 levels on raw pixels.
    max_diff_levels: float = Field(0.26, ge=0, le=10)
    clear_after_s: float = Field(1.0, ge=0, le=600)


class DarkConfig(Debounce):
    # FFmpeg blackdetect: pixel_black_th 0.10 (~32 of 255 with limited-range luma),
    # picture_black_ratio_th 0.98.
    pixel_level: int = Field(32, ge=0, le=128)
    fraction: float = Field(0.98, gt=0.5, le=1.0)


class WashedOutConfig(Debounce):
    # blackdetect's white twin: 98 % of the unmasked pixels near full scale.
    pixel_level: int = Field(230, ge=128, le=255)
    fraction: float = Field(0.98, gt=0.5, le=1.0)


class CoveredConfig(Debounce):
    # Dark (<= 60), featureless (local std < 6 levels at 160 px: no edge survives, only noise and
    # a soft gradient) pixels over 70 % of the unmasked picture: a hand, a coat, a cap on the lens.
    # Our darkest clean footage (a night scene) peaks at 53 %; a hand over the lens reads 88-97 %.
    fraction: float = Field(0.7, gt=0.2, le=1.0)
    blank_std: float = Field(6.0, gt=0, le=50)
    dark_level: int = Field(60, ge=0, le=255)
    # The whole picture this flat (any brightness) also counts: a sheet or fog over the lens.
    uniform_std: float = Field(4.0, ge=0, le=50)
    raise_after_s: float = Field(3.0, ge=0, le=600)


class BlurredConfig(Debounce):
    # Sharpness under 40 % of the station's own baseline: a focus ring turned or a fogged lens.
    # People walking and light changing move it by +-20 % in our test footage; the defocus we
    # test (Gaussian sigma 1.5 px at 320 px wide) reads 13-31 %.
    ratio: float = Field(0.4, gt=0, lt=1)
    raise_after_s: float = Field(5.0, ge=0, le=600)
    clear_after_s: float = Field(3.0, ge=0, le=600)


class MovedConfig(Debounce):
    # Half of the reference's textured cells (8x6 grid) no longer match: people walking by
    # change up to 27 % in our test footage; a camera turned 7 degrees and shifted 10 % reads
    # 76-100 %. Ten seconds: someone standing right in front of the camera for a moment is fine.
    fraction: float = Field(0.5, gt=0, le=1.0)
    raise_after_s: float = Field(10.0, ge=0, le=600)
    clear_after_s: float = Field(5.0, ge=0, le=600)


class HealthConfig(Section):
    enabled: bool = True
    analysis_hz: float = Field(2.0, ge=0.5, le=5.0)
    # Sharpness baseline (and the automatic reference) come from the first seconds of usable
    # picture when no reference image is configured.
    baseline_s: float = Field(10.0, ge=1, le=600)
    auto_reference: bool = True
    reference_image: Path | None = None
    no_frames: NoFramesConfig = NoFramesConfig()
    low_fps: LowFpsConfig = LowFpsConfig()
    frozen: FrozenConfig = FrozenConfig()
    dark: DarkConfig = DarkConfig()
    washed_out: WashedOutConfig = WashedOutConfig()
    covered: CoveredConfig = CoveredConfig()
    blurred: BlurredConfig = BlurredConfig()
    moved: MovedConfig = MovedConfig()
