"""Camera health: notices a camera that is lost, slow, frozen, dark, covered, blurred or moved.

`CameraHealth.observe(now_s, frame)` is called by the encoding thread for every frame. It keeps
the delivered frame times and, at most `analysis_hz` times a second, measures a downscaled grey
copy of the frame (health_metrics). Each condition is debounced: it is raised once it has held
for `raise_after_s` and cleared once it has been gone for `clear_after_s`; both transitions are
emitted as events with the measured value and the threshold. `flags()` and `snapshot()` feed the
heartbeat. Time is always passed in (`now_s`, monotonic seconds); nothing here reads a clock.

One cause, one alarm: while the picture is dark, washed out or covered, the conditions that
need a usable picture (frozen, blurred, moved) are neither raised nor cleared; in the agent,
where the capture reports a lost camera itself (`camera_lost`), no_frames is not raised for
it again (`loss_reported_elsewhere`).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import pwd
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.core.config import SERVICE_USER
from agent.core.durable import write_atomic
from agent.core.events import Event, EventSink
from agent.health import metrics as hm
from agent.health.config import HealthConfig
from agent.health.text import SEVERITY, describe

log = logging.getLogger(__name__)

CONDITIONS = (
    "no_frames",
    "low_fps",
    "frozen",
    "dark",
    "washed_out",
    "covered",
    "blurred",
    "moved",
)
PICTURE_CONDITIONS = CONDITIONS[2:]
FPS_WINDOW_S = 5.0  # delivered fps is measured over this window (same as the capture status)
FPS_MIN_SPAN_S = 2.0  # fewer seconds of frame times than this: no fps figure yet
FRAME_TIMES_KEPT = 1024  # bound on the fps window (5 s at up to ~200 fps)
LEARN_FRAMES_KEPT = 40  # pictures kept to build the automatic reference (median removes people)
MIN_BASELINE = 1e-3  # sharpness of a flat picture; keeps the ratio finite
MAX_ASPECT_DIFF = 0.02  # a reference of another aspect ratio (another camera mode) is not used


class Debouncer:
    """Raised after the raw condition held `raise_after_s`, cleared after it was gone
    `clear_after_s`. `raw=None` (cannot tell) holds the state and forgets a pending change."""

    def __init__(self, raise_after_s: float, clear_after_s: float) -> None:
        self.raise_after_s = raise_after_s
        self.clear_after_s = clear_after_s
        self.active = False
        self._since_s: float | None = None  # when raw first disagreed with `active`

    def update(self, now_s: float, raw: bool | None, onset_s: float | None = None) -> float | None:
        """Returns how long the new state had held when the state flips, else None."""
        if raw is None or raw == self.active:
            self._since_s = None
            return None
        if self._since_s is None:
            self._since_s = now_s if onset_s is None else min(onset_s, now_s)
        held_s = now_s - self._since_s
        if held_s >= (self.clear_after_s if self.active else self.raise_after_s):
            self.active = not self.active
            self._since_s = None
            return held_s
        return None


@dataclass(frozen=True)
class Measurement:
    """What one analysis measured (see health_metrics for each figure)."""

    mean_luma: float
    contrast: float  # std of the grey levels
    dark_fraction: float
    bright_fraction: float
    covered_fraction: float
    sharpness: float
    sharpness_ratio: float | None  # against the baseline, once there is one
    frame_diff_levels: float | None  # against the previous analysis
    reference_mismatch: float | None  # once there is a reference
    shift: tuple[float, float] | None  # view shift against the reference (fractions)

    def as_dict(self) -> dict[str, float | None]:
        figures = {k: v for k, v in asdict(self).items() if k != "shift"}
        figures["shift_x"] = None if self.shift is None else self.shift[0]
        figures["shift_y"] = None if self.shift is None else self.shift[1]
        return figures


@dataclass
class _Geometry:
    """Per frame size: reduced masks and the reference at analysis size."""

    shape: tuple[int, ...]
    valid: np.ndarray | None  # at analysis size
    valid_sharp: np.ndarray | None  # at sharpness size
    valid_sample: np.ndarray | None  # at freeze-sample size
    reference: np.ndarray | None  # grey, analysis size
    reference_sharpness: float | None


REFERENCE_MODE = 0o600  # the reference picture shows the room: the service and root only


def read_reference(path: Path) -> np.ndarray:
    """The reference picture (BGR) from an image file; raises OSError when unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read reference image {path}")
    return image


def encode_reference(frame_bgr: np.ndarray, suffix: str = ".png") -> bytes:
    """A reference picture as the bytes of a PNG or JPEG file (by `suffix`)."""
    ok, encoded = cv2.imencode(suffix, frame_bgr)
    if not ok:
        raise OSError(f"cannot encode a reference image as {suffix}")
    return encoded.tobytes()


def write_reference(path: Path, frame_bgr: np.ndarray) -> None:
    """Stores a reference picture next to the config (PNG or JPEG by the file's suffix), mode
    0600 (it shows the room: callers mask it first), atomically and durably. Written by root
    (`sudo station-agent health --take-reference`), the file belongs to the service user, who
    must read it; a replaced file keeps its owner.

    The running service (`retake_reference`) may not create files in its config folder (the
    unit grants it only the picture itself, and the folder is root's), but it owns the picture:
    then the picture is rewritten in place. A power cut in the middle leaves a picture that
    does not decode; the agent reports it at start and runs without it."""
    data = encode_reference(frame_bgr, path.suffix)
    try:
        write_atomic(path, data, mode=REFERENCE_MODE, owner=_reference_owner(path))
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not path.is_file():
            raise
        _rewrite_in_place(path, data)


def _reference_owner(path: Path) -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None  # ours, as any file we create
    try:
        st = path.stat()
        return st.st_uid, st.st_gid
    except FileNotFoundError:
        pass
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None  # no service user here (a laptop, a test machine): root's
    return user.pw_uid, user.pw_gid


def _rewrite_in_place(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, REFERENCE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


class CameraHealth:
    def __init__(
        self,
        cfg: HealthConfig,
        sink: EventSink,
        reference: np.ndarray | None = None,
        expected_fps: float | None = None,
        loss_reported_elsewhere: bool = False,
    ) -> None:
        """`loss_reported_elsewhere`: whoever calls note_source_state(delivering=False) has
        raised its own alarm for it (the capture's camera_lost); no_frames then stays as it
        is while the source is lost, and covers a source that is open but sends nothing."""
        self._cfg = cfg
        self._sink = sink
        self._expected_fps = expected_fps
        self._loss_reported_elsewhere = loss_reported_elsewhere
        self._interval_s = 1.0 / cfg.analysis_hz
        self._lock = threading.Lock()
        self._states = {
            name: Debouncer(section.raise_after_s, section.clear_after_s)
            for name in CONDITIONS
            for section in [getattr(cfg, name)]
        }
        self._values: dict[str, float | None] = dict.fromkeys(CONDITIONS)
        self._metrics: dict[str, float | None] = {}
        self._frame_times: deque[float] = deque(maxlen=FRAME_TIMES_KEPT)
        self._last_frame: np.ndarray | None = None  # the encoder repeats a frame by object
        self._frames = 0
        self._analysed_frames = 0
        self._started_s: float | None = None
        self._last_frame_s: float | None = None
        self._delivering = True
        self._next_analysis_s = -math.inf
        self._reference = reference
        self._ignore: np.ndarray | None = None
        self._geometry: _Geometry | None = None
        self._prev_sample: np.ndarray | None = None
        self._prev_sample_s = -math.inf
        self._reset_learning()

    # ---- called by the pipeline ---------------------------------------------------------

    def observe(self, now_s: float, frame_bgr: np.ndarray) -> None:
        """Every frame; returns at once except when an analysis is due (analysis_hz)."""
        if not self._cfg.enabled:
            return
        with self._lock:
            if self._started_s is None:
                self._started_s = now_s
            if frame_bgr is not self._last_frame:  # a repeated frame is not a delivered frame
                self._last_frame = frame_bgr
                self._last_frame_s = now_s
                self._delivering = True  # a new frame proves it, whatever was noted before
                self._frames += 1
                self._frame_times.append(now_s)
            if now_s < self._next_analysis_s:
                return
            self._next_analysis_s = max(self._next_analysis_s + self._interval_s, now_s)
            events = self._poll_locked(now_s)
            if self._frames != self._analysed_frames:
                self._analysed_frames = self._frames
                events += self._analyse(now_s, frame_bgr)
        self._emit(events)

    def note_source_state(self, now_s: float, delivering: bool) -> None:
        """From the capture: False when the camera is lost or being reopened."""
        if not self._cfg.enabled:
            return
        with self._lock:
            if self._started_s is None:
                self._started_s = now_s
            self._delivering = delivering
            events = self._poll_locked(now_s)
        self._emit(events)

    def poll(self, now_s: float) -> None:
        """Time-based conditions (no frames, low fps); call about once a second when frames
        may not be arriving (observe() polls by itself while they do)."""
        if not self._cfg.enabled:
            return
        with self._lock:
            if self._started_s is None:
                self._started_s = now_s
            events = self._poll_locked(now_s)
        self._emit(events)

    def set_reference(self, frame_bgr: np.ndarray | None) -> None:
        """Retakes (or drops) the reference picture; the blur baseline is taken from it too."""
        with self._lock:
            self._reference = None if frame_bgr is None else frame_bgr.copy()
            self._geometry = None
            self._reset_learning()

    def set_ignore_mask(self, mask: np.ndarray | None) -> None:
        """Privacy mask of any resolution (True = ignore that pixel)."""
        with self._lock:
            self._ignore = None if mask is None else np.asarray(mask, dtype=bool).copy()
            self._geometry = None
            self._reset_learning()

    def flags(self) -> list[str]:
        with self._lock:
            return [name for name in CONDITIONS if self._states[name].active]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "flags": [name for name in CONDITIONS if self._states[name].active],
                "reference": self._reference_state(),
                "baseline_sharpness": _round(self._baseline),
                "metrics": {key: _round(value) for key, value in self._metrics.items()},
            }

    # ---- internals (under the lock) -------------------------------------------------------

    def _reset_learning(self) -> None:
        self._learned = False
        self._baseline: float | None = None
        self._auto_reference: np.ndarray | None = None
        self._learn_started_s: float | None = None
        self._learn_sharpness: list[float] = []
        self._learn_frames: deque[np.ndarray] = deque(maxlen=LEARN_FRAMES_KEPT)
        self._prev_sample = None

    def _reference_state(self) -> str:
        geo = self._geometry
        if self._reference is not None and (geo is None or geo.reference is not None):
            return "configured"
        if self._auto_reference is not None:
            return "auto"
        return "learning" if self._cfg.auto_reference else "none"

    def _poll_locked(self, now_s: float) -> list[Event]:
        cfg = self._cfg
        started_s = self._started_s if self._started_s is not None else now_s
        last_s = self._last_frame_s if self._last_frame_s is not None else started_s
        gap_s = now_s - last_s
        no_frames = (not self._delivering) or gap_s >= cfg.no_frames.gap_s
        self._values["no_frames"] = gap_s
        onset_s = last_s + cfg.no_frames.gap_s if self._delivering else None
        lost_elsewhere = self._loss_reported_elsewhere and not self._delivering
        events = self._update("no_frames", now_s, None if lost_elsewhere else no_frames, onset_s)
        while self._frame_times and self._frame_times[0] < now_s - FPS_WINDOW_S:
            self._frame_times.popleft()
        fps = self._fps()
        self._metrics["fps"] = fps
        low: bool | None = None
        if self._expected_fps is not None and fps is not None and not no_frames:
            self._values["low_fps"] = fps
            low = fps < cfg.low_fps.ratio * self._expected_fps
        return events + self._update("low_fps", now_s, low)

    def _fps(self) -> float | None:
        times = self._frame_times
        if len(times) < 2 or times[-1] - times[0] < FPS_MIN_SPAN_S:
            return None
        return (len(times) - 1) / (times[-1] - times[0])

    def _geometry_for(self, frame: np.ndarray, pic: hm.Picture) -> _Geometry:
        if self._geometry is not None and self._geometry.shape == frame.shape:
            return self._geometry
        if self._geometry is not None:
            self._reset_learning()  # another camera mode: learn this one afresh
        mask = self._ignore
        valid = valid_sharp = valid_sample = None
        if mask is not None:
            valid = hm.reduce_mask(mask, pic.grey.shape[:2])
            valid_sharp = hm.reduce_mask(mask, pic.sharp_grey.shape[:2])
            valid_sample = hm.sample_mask(mask, pic.freeze_sample.shape[:2])
        ref_grey, ref_sharpness = None, None
        if self._reference is not None:
            ref_h, ref_w = self._reference.shape[:2]
            height, width = frame.shape[:2]
            if abs(ref_w / ref_h - width / height) <= MAX_ASPECT_DIFF * width / height:
                ref = hm.reduce_frame(cv2.resize(self._reference, (width, height)))
                ref_grey = ref.grey
                ref_sharpness = hm.sharpness(ref.sharp_grey, valid_sharp)
            else:
                log.warning(
                    "reference picture is %dx%d but the camera delivers %dx%d: not used",
                    ref_w, ref_h, width, height,
                )  # fmt: skip
        self._geometry = _Geometry(
            frame.shape, valid, valid_sharp, valid_sample, ref_grey, ref_sharpness
        )
        if ref_sharpness is not None:
            self._baseline = max(ref_sharpness, MIN_BASELINE)
        return self._geometry

    def _analyse(self, now_s: float, frame: np.ndarray) -> list[Event]:
        pic = hm.reduce_frame(frame)
        geo = self._geometry_for(frame, pic)
        if not hm.enough_valid(geo.valid):  # nearly all masked: nothing to judge
            return [e for name in PICTURE_CONDITIONS for e in self._update(name, now_s, None)]
        prev_sample_s = self._prev_sample_s
        m = self._measure(now_s, pic, geo)
        self._metrics.update(m.as_dict())
        ratio = m.sharpness_ratio
        self._values.update(
            frozen=m.frame_diff_levels,
            dark=m.dark_fraction,
            washed_out=m.bright_fraction,
            covered=m.covered_fraction,
            blurred=ratio,
            moved=m.reference_mismatch,
        )
        cfg = self._cfg
        dark = m.dark_fraction >= cfg.dark.fraction
        washed = m.bright_fraction >= cfg.washed_out.fraction
        covered = None if dark or washed else m.covered_fraction >= cfg.covered.fraction
        unusable = dark or washed or bool(covered)
        if not unusable:
            self._learn(now_s, pic, m.sharpness)

        def judge(value: float | None, test: Callable[[float], bool]) -> bool | None:
            return None if unusable or value is None else test(value)

        frozen = judge(m.frame_diff_levels, lambda v: v <= cfg.frozen.max_diff_levels)
        blurred = judge(ratio, lambda v: v < cfg.blurred.ratio)
        moved = judge(m.reference_mismatch, lambda v: v >= cfg.moved.fraction)
        return (
            self._update("dark", now_s, dark)
            + self._update("washed_out", now_s, washed)
            + self._update("covered", now_s, covered)
            + self._update("frozen", now_s, frozen, onset_s=prev_sample_s)
            + self._update("blurred", now_s, blurred)
            + self._update("moved", now_s, moved)
        )

    def _measure(self, now_s: float, pic: hm.Picture, geo: _Geometry) -> Measurement:
        cfg = self._cfg
        mean, std, dark_f, bright_f = hm.exposure(
            pic.grey, geo.valid, cfg.dark.pixel_level, cfg.washed_out.pixel_level
        )
        if std < cfg.covered.uniform_std:  # a flat picture of any brightness: a sheet, fog
            covered_f = 1.0
        else:
            covered_f = hm.covered_fraction(
                pic.grey, geo.valid, cfg.covered.blank_std, cfg.covered.dark_level
            )
        sharpness = hm.sharpness(pic.sharp_grey, geo.valid_sharp)
        diff = self._frame_diff(now_s, pic, geo)
        self._prev_sample, self._prev_sample_s = pic.freeze_sample, now_s
        reference = geo.reference if geo.reference is not None else self._auto_reference
        mismatch = shift = None
        if reference is not None and reference.shape == pic.grey.shape:
            mismatch = hm.reference_mismatch(pic.grey, reference, geo.valid)
            shift = hm.view_shift(pic.grey, reference, geo.valid)
        return Measurement(
            mean_luma=mean,
            contrast=std,
            dark_fraction=dark_f,
            bright_fraction=bright_f,
            covered_fraction=covered_f,
            sharpness=sharpness,
            sharpness_ratio=None if self._baseline is None else sharpness / self._baseline,
            frame_diff_levels=diff,
            reference_mismatch=mismatch,
            shift=shift,
        )

    def _frame_diff(self, now_s: float, pic: hm.Picture, geo: _Geometry) -> float | None:
        prev = self._prev_sample
        if prev is None or prev.shape != pic.freeze_sample.shape:
            return None
        if now_s - self._prev_sample_s > 2.5 * self._interval_s:  # a gap: not a frozen stretch
            return None
        return hm.mean_abs_diff(pic.freeze_sample, prev, geo.valid_sample)

    def _learn(self, now_s: float, pic: hm.Picture, sharpness: float) -> None:
        """The first `baseline_s` of usable picture give the blur baseline and, without a
        configured reference, the automatic reference (per-pixel median: people walk away)."""
        geo = self._geometry
        if self._learned or (geo is not None and geo.reference is not None):
            return  # a configured reference gives both
        if self._learn_started_s is None:
            self._learn_started_s = now_s
        self._learn_sharpness.append(sharpness)
        self._learn_frames.append(pic.grey)
        if now_s - self._learn_started_s < self._cfg.baseline_s:
            return
        self._learned = True
        self._baseline = max(float(np.median(self._learn_sharpness)), MIN_BASELINE)
        if self._cfg.auto_reference:
            stack = np.stack(list(self._learn_frames))
            self._auto_reference = np.median(stack, axis=0).astype(np.uint8)
        log.info("camera health baseline learned: sharpness %.3f", self._baseline)
        self._learn_sharpness.clear()
        self._learn_frames.clear()

    def _update(
        self, name: str, now_s: float, raw: bool | None, onset_s: float | None = None
    ) -> list[Event]:
        state = self._states[name]
        held_s = state.update(now_s, raw, onset_s)
        if held_s is None:
            return []
        threshold = self._threshold(name)
        value = self._values.get(name)
        severity = SEVERITY[name] if state.active else "info"
        return [
            Event(
                kind="health_raised" if state.active else "health_cleared",
                severity=severity,
                message=describe(name, state.active, value, threshold, self._metrics),
                fields={
                    "condition": name,
                    "value": _round(value),
                    "threshold": _round(threshold),
                    "held_s": round(held_s, 1),
                },
            )
        ]

    def _threshold(self, name: str) -> float | None:
        cfg = self._cfg
        return {
            "no_frames": cfg.no_frames.gap_s,
            "low_fps": None
            if self._expected_fps is None
            else cfg.low_fps.ratio * self._expected_fps,
            "frozen": cfg.frozen.max_diff_levels,
            "dark": cfg.dark.fraction,
            "washed_out": cfg.washed_out.fraction,
            "covered": cfg.covered.fraction,
            "blurred": cfg.blurred.ratio,
            "moved": cfg.moved.fraction,
        }[name]

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            log.info("%s: %s", event.kind, event.message)
            self._sink.emit(event)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
