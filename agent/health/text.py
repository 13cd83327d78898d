"""Plain-language lines for camera-health events: what central staff read on their board."""

from __future__ import annotations

from agent.core.events import Severity

# "error": the video shows nothing useful; "warning": it does, but worse than it should.
SEVERITY: dict[str, Severity] = {
    "no_frames": "error",
    "low_fps": "warning",
    "frozen": "error",
    "dark": "error",
    "washed_out": "error",
    "covered": "error",
    "blurred": "warning",
    "moved": "error",
}

_RAISED = {
    "no_frames": "camera delivers no picture",
    "low_fps": "camera delivers {value:.1f} frames/s, under {threshold:.1f}",
    "frozen": "picture frozen: frames arrive but do not change (diff {value:.2f} levels)",
    "dark": "picture dark: {pct:.0f}% of it black (lens cap, lights off or camera failing)",
    "washed_out": "picture washed out: {pct:.0f}% of it white (glare or exposure failure)",
    "covered": "camera covered: {pct:.0f}% of the picture hidden close to the lens",
    "blurred": "picture blurred: sharpness at {pct:.0f}% of this camera's normal",
    "moved": "camera moved or view blocked: {pct:.0f}% of the reference view changed{shift}",
}

_CLEARED = {
    "no_frames": "camera delivers pictures again",
    "low_fps": "camera frame rate back to normal",
    "frozen": "picture moving again",
    "dark": "picture no longer dark",
    "washed_out": "picture no longer washed out",
    "covered": "camera no longer covered",
    "blurred": "picture sharp again",
    "moved": "camera view matches the reference again",
}


def describe(
    condition: str,
    raised: bool,
    value: float | None,
    threshold: float | None,
    metrics: dict[str, float | None],
) -> str:
    if not raised:
        return _CLEARED[condition]
    if value is None or (threshold is None and "{threshold" in _RAISED[condition]):
        return _RAISED[condition].split(":")[0]
    shift = ""
    dx, dy = metrics.get("shift_x"), metrics.get("shift_y")
    if dx is not None and dy is not None and max(abs(dx), abs(dy)) >= 0.02:
        shift = f" (view shifted {dx * 100:+.0f}% across, {dy * 100:+.0f}% down)"
    return _RAISED[condition].format(
        value=value, threshold=threshold or 0.0, pct=value * 100, shift=shift
    )
