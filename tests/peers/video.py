"""Synthetic camera footage built from real photographs (skimage.data), for camera-health tests.

`SceneVideo(photo, width, height, faults=[...]).frame(t_s)` returns the BGR frame at simulated
time t_s: the photograph under slowly changing light, two people-sized textured shapes walking
across, sensor noise on every pixel, and any fault active at t_s. Faults reach full strength
`ramp_s` after their start and vanish at their end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import cv2
import numpy as np
from skimage import data

from agent.core.events import Event

PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket")  # shipped, no download
FAULT_KINDS = ("fade_black", "occluder", "blur", "frozen", "moved", "white_out")
CONDITION_OF = {  # fault -> the camera-health condition it must raise
    "fade_black": "dark",
    "occluder": "covered",
    "blur": "blurred",
    "frozen": "frozen",
    "moved": "moved",
    "white_out": "washed_out",
}
RAMP_S = {"fade_black": 1.0, "white_out": 1.0, "occluder": 0.5}  # faults that come on gradually
NOISE_SIGMA = 2.0  # grey levels: a webcam in a lit room
NOISE_MARGIN = 16  # px: the noise field is cropped at a random offset every frame
LIGHT_SWING = 0.12  # +-12 % brightness...
LIGHT_PERIOD_S = 40.0  # ...over 40 s (clouds, lights switched in another room)


@dataclass(frozen=True)
class Fault:
    kind: str
    start_s: float
    end_s: float
    ramp_s: float = 0.0  # time to full strength (a fade)

    @property
    def full_s(self) -> float:
        return self.start_s + self.ramp_s

    def strength(self, t_s: float) -> float:
        if not self.start_s <= t_s < self.end_s:
            return 0.0
        if self.ramp_s <= 0:
            return 1.0
        return min(1.0, (t_s - self.start_s) / self.ramp_s)


@cache
def photo_bgr(name: str, width: int, height: int) -> np.ndarray:
    """The photograph scaled and centre-cropped to fill width x height."""
    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = np.ascontiguousarray(image[..., 2::-1])  # RGB(A) -> BGR
    ih, iw = image.shape[:2]
    scale = max(width / iw, height / ih)
    size = (math.ceil(iw * scale), math.ceil(ih * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    scaled = cv2.resize(image, size, interpolation=interp)
    y0, x0 = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
    return np.ascontiguousarray(scaled[y0 : y0 + height, x0 : x0 + width])


@cache
def _noise(width: int, height: int, seed: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (height + NOISE_MARGIN, width + NOISE_MARGIN, 3)
    noise = np.rint(rng.normal(0.0, sigma, shape).astype(np.float32))
    return np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8)


@cache
def hand_alpha(width: int, height: int) -> np.ndarray:
    """A hand close to the lens: palm and four fingers, soft edges, ~90 % of the frame."""
    small_w, small_h = 160, max(1, round(160 * height / width))
    mask = np.zeros((small_h, small_w), np.uint8)
    cx, cy = int(small_w * 0.55), int(small_h * 0.62)
    cv2.ellipse(mask, (cx, cy), (int(small_w * 0.56), int(small_h * 0.62)), 0, 0, 360, 255, -1)
    for i in range(4):  # fingers reaching up and left
        fx = int(small_w * (0.12 + 0.2 * i))
        cv2.ellipse(mask, (fx, int(small_h * 0.2)), (int(small_w * 0.09), int(small_h * 0.3)),
                    -15, 0, 360, 255, -1)  # fmt: skip
    soft = cv2.GaussianBlur(mask, (0, 0), 2.0)
    alpha = cv2.resize(soft, (width, height), interpolation=cv2.INTER_LINEAR)
    return (alpha.astype(np.float32) / 255.0)[..., None]


@cache
def hand_colour(width: int, height: int) -> np.ndarray:
    """Out-of-focus skin in shadow: dark, a soft gradient, no edges."""
    ramp = np.linspace(18, 42, width, dtype=np.float32)[None, :, None]
    shade = np.broadcast_to(ramp, (height, width, 1))
    return np.concatenate([shade * 0.8, shade * 0.9, shade * 1.1], axis=2)


@dataclass
class SceneVideo:
    photo: str
    width: int
    height: int
    faults: list[Fault] = field(default_factory=list)
    seed: int = 0
    people: int = 2
    noise_sigma: float = NOISE_SIGMA
    light_swing: float = LIGHT_SWING

    def __post_init__(self) -> None:
        self._base = photo_bgr(self.photo, self.width, self.height)
        self._rng = np.random.default_rng(self.seed)
        self._frozen: np.ndarray | None = None

    def frame(self, t_s: float) -> np.ndarray:
        frozen = next((f for f in self.faults if f.kind == "frozen" and f.strength(t_s)), None)
        if frozen is not None and self._frozen is not None:
            return self._frozen.copy()  # the camera repeats its last picture, noise and all
        image = self._clean(t_s)
        image = self._apply_faults(t_s, image)
        image = self._add_noise(image)
        self._frozen = image.copy() if frozen is not None else None
        return image

    def _clean(self, t_s: float) -> np.ndarray:
        gain = 1.0 + self.light_swing * math.sin(2 * math.pi * t_s / LIGHT_PERIOD_S)
        image = cv2.convertScaleAbs(self._base, alpha=gain)
        w, h = self.width, self.height
        for i in range(self.people):  # people walking across at ~1/8 of the width per second
            period_s = 9.0 + 4.0 * i
            phase = (t_s / period_s + 0.37 * i) % 1.0
            direction = 1 if i % 2 == 0 else -1
            x = int((phase if direction > 0 else 1 - phase) * (w * 1.3) - w * 0.15)
            y = int(h * (0.35 + 0.1 * i))
            body_w, body_h = max(4, w // 10), max(8, int(h * 0.5))
            shirt = (60 + 90 * i, 90, 160 - 60 * i)
            cv2.rectangle(image, (x, y), (x + body_w, y + body_h), shirt, -1)
            for s in range(y + 4, y + body_h, max(3, body_h // 8)):  # stripes: texture
                cv2.line(image, (x, s), (x + body_w, s), (20, 30, 40), max(1, h // 120))
            head_r = max(3, body_w // 3)
            cv2.circle(image, (x + body_w // 2, y - head_r), head_r, (120, 150, 190), -1)
        return image

    def _apply_faults(self, t_s: float, image: np.ndarray) -> np.ndarray:
        for fault in self.faults:
            k = fault.strength(t_s)
            if k <= 0:
                continue
            if fault.kind == "fade_black":
                image = cv2.convertScaleAbs(image, alpha=1.0 - k)
            elif fault.kind == "white_out":
                image = cv2.addWeighted(image, 1.0 - k, np.full_like(image, 255), k, 0.0)
            elif fault.kind == "blur":
                sigma = 1.5 * self.width / 320 * k  # defocus: same look at any resolution
                image = cv2.GaussianBlur(image, (0, 0), max(sigma, 0.1))
            elif fault.kind == "occluder":
                alpha = hand_alpha(self.width, self.height) * k
                blended = image * (1.0 - alpha) + hand_colour(self.width, self.height) * alpha
                image = blended.astype(np.uint8)
            elif fault.kind == "moved":  # knocked: turned 7 degrees and 10 % to the side
                matrix = cv2.getRotationMatrix2D((self.width / 2, self.height / 2), 7.0 * k, 1.0)
                matrix[0, 2] += 0.10 * self.width * k
                image = cv2.warpAffine(image, matrix, (self.width, self.height),
                                       borderMode=cv2.BORDER_REFLECT)  # fmt: skip
            elif fault.kind != "frozen":
                raise ValueError(f"unknown fault {fault.kind}")
        return image

    def _add_noise(self, image: np.ndarray) -> np.ndarray:
        plus, minus = _noise(self.width, self.height, self.seed, self.noise_sigma)
        dy, dx = (int(v) for v in self._rng.integers(0, NOISE_MARGIN, 2))
        window = (slice(dy, dy + self.height), slice(dx, dx + self.width))
        noisy = cv2.add(image, np.ascontiguousarray(plus[window]))
        return cv2.subtract(noisy, np.ascontiguousarray(minus[window]))


@dataclass
class TimedSink:
    """An EventSink that records events with the simulated time at which they were emitted."""

    now_s: float = 0.0
    events: list[tuple[float, Event]] = field(default_factory=list)

    def emit(self, event: Event) -> None:
        self.events.append((self.now_s, event))

    def raised(self) -> list[tuple[float, str]]:
        return [(t, e.fields["condition"]) for t, e in self.events if e.kind == "health_raised"]

    def cleared(self) -> list[tuple[float, str]]:
        return [(t, e.fields["condition"]) for t, e in self.events if e.kind == "health_cleared"]

    def first(self, kind: str, condition: str) -> float | None:
        return next(
            (t for t, e in self.events if e.kind == kind and e.fields["condition"] == condition),
            None,
        )
