"""Burn the station id and the local date/time into the picture.

Drawn on the luma plane of the I420 frame the encoder receives, as a pre-rendered patch (white
text on a black box, chroma set to neutral): one slice copy per frame, the text is rendered only
when the second changes. Font size scales with the frame height so the text stays legible from
240p (about 14 px tall) to 1080p.

The encode loop draws straight into the captured frame, which others (snapshots, the reference
picture) may still read: `stamp(..., keep_original=True)` keeps the few kB under the patch and
`undo()` puts them back once the encoder has taken its copy.
"""

from __future__ import annotations

from datetime import datetime

import cv2
import numpy as np

from agent.capture.frames import frame_size, planes
from agent.core.timesync import utc_label

FONT = cv2.FONT_HERSHEY_SIMPLEX
# Hershey simplex glyphs are ~22 px tall at scale 1.0; 0.045 of the frame height keeps a line at
# ~32 px at 720p and never under ~14 px (the smallest that stays readable after 240p encoding).
TEXT_HEIGHT_SHARE = 0.045
MIN_TEXT_PX = 14
Y_BLACK, Y_WHITE, UV_NEUTRAL = 16, 235, 128  # BT.601 limited range


class Overlay:
    """Stamps '<station>  YYYY-MM-DD HH:MM:SS UTC+2' (local time and its zone's offset, so
    a viewer knows which time it is) top-left of an I420 frame."""

    def __init__(self, station_id: str) -> None:
        self._station_id = station_id
        self._key: tuple[str, int, int] | None = None  # (text, width, height) of the patch
        self._second: int | None = None
        self._text = ""
        self._patch: np.ndarray | None = None
        self._saved: list[tuple[np.ndarray, np.ndarray]] = []  # (box view, its original pixels)

    def text(self, now: datetime) -> str:
        """The stamp for `now` (a naive `now` is this box's local time)."""
        local = now if now.tzinfo is not None else now.astimezone()
        offset = local.utcoffset()
        zone = utc_label(0 if offset is None else round(offset.total_seconds()))
        return f"{self._station_id}  {local:%Y-%m-%d %H:%M:%S} {zone}"

    def draw(self, i420: np.ndarray, width: int, height: int, now: datetime) -> None:
        self._stamp(i420, width, height, self.text(now), keep_original=False)

    def stamp(self, i420: np.ndarray, wall_s: float, keep_original: bool = False) -> None:
        """Stamp the frame in place at wall clock `wall_s` (the text is made once a second);
        with `keep_original`, `undo()` restores what the stamp covered."""
        second = int(wall_s)
        if second != self._second:
            self._second, self._text = second, self.text(datetime.fromtimestamp(second))
        width, height = frame_size(i420)
        self._stamp(i420, width, height, self._text, keep_original)

    def undo(self) -> None:
        """Put back what the last `stamp(keep_original=True)` covered (else nothing)."""
        for box, original in self._saved:
            box[...] = original
        self._saved = []

    def _stamp(
        self, i420: np.ndarray, width: int, height: int, text: str, keep_original: bool
    ) -> None:
        key = (text, width, height)
        if key != self._key or self._patch is None:
            self._patch = render_patch(text, width, height)
            self._key = key
        patch = self._patch
        ph, pw = patch.shape
        y0 = x0 = _margin(height)
        y, u, v = planes(i420)
        boxes = (
            y[y0 : y0 + ph, x0 : x0 + pw],
            u[y0 // 2 : (y0 + ph) // 2, x0 // 2 : (x0 + pw) // 2],
            v[y0 // 2 : (y0 + ph) // 2, x0 // 2 : (x0 + pw) // 2],
        )
        self.undo()  # (a frame never keeps two stamps' originals)
        if keep_original:
            self._saved = [(box, box.copy()) for box in boxes]
        boxes[0][...] = patch
        boxes[1][...] = UV_NEUTRAL
        boxes[2][...] = UV_NEUTRAL


def _margin(height: int) -> int:
    return max(2, (height // 60) & ~1)  # even, so the chroma box lines up with the luma box


def render_patch(text: str, width: int, height: int) -> np.ndarray:
    """Luma patch (even sizes) with the text in white on black, clipped to the frame width."""
    text_px = max(MIN_TEXT_PX, height * TEXT_HEIGHT_SHARE)
    scale = text_px / 22.0
    thickness = max(1, round(text_px / 14))
    (tw, th), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(2, int(text_px * 0.3))
    room = width - 2 * _margin(height) - 2 * pad
    if tw > room > 0:  # a narrow frame: smaller letters rather than a clipped time zone
        scale *= room / tw
        (tw, th), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    pw = min(tw + 2 * pad, width - 2 * _margin(height)) & ~1
    ph = (th + baseline + 2 * pad) & ~1
    patch = np.full((ph, pw), Y_BLACK, np.uint8)
    cv2.putText(patch, text, (pad, pad + th), FONT, scale, Y_WHITE, thickness, cv2.LINE_AA)
    return patch
