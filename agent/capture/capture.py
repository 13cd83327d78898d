"""The capture thread: reads the source at its own pace; the newest frame wins.

A source that fails or stops delivering is closed and reopened with jittered backoff. Each outage
is recorded with its start and end and reported as events; nothing here ever ends the process.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.capture.config import CaptureConfig
from agent.capture.frames import FramePool, i420_from_av, to_i420
from agent.capture.sources import CaptureSource, SourceError
from agent.core.backoff import floor_jitter_s
from agent.core.events import Event, EventSink, utc_now_iso
from agent.core.redact import redact_text, redact_url, url_secrets

log = logging.getLogger(__name__)

REOPEN_BASE_S = 0.5  # first reopen after ~0.25-0.5 s: a USB camera re-enumerates in about 1 s
MAX_OUTAGES_KEPT = 50  # outages listed in the status (older ones are only counted)
FPS_WINDOW_S = 5.0  # delivered fps is measured over this window


@dataclass
class Outage:
    start_utc: str
    reason: str
    end_utc: str | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class CapturedFrame:
    index: int  # increases by one per delivered frame
    image: np.ndarray  # I420 (agent/capture/frames.py), already privacy-masked
    captured_s: float  # monotonic time of capture


class Capture:
    """Owns the source. `latest()` returns the newest frame; older unread frames are dropped.

    Frames live in reused buffers (FramePool): a buffer goes back to the pool when its frame
    was dropped unread, or when the encoder, which holds the frame `latest()` gave it until its
    next call, moves on. Anyone else takes a copy (`newest_copy()`)."""

    def __init__(
        self,
        cfg: CaptureConfig,
        sink: EventSink,
        source_factory: Callable[[], CaptureSource],
        frame_hook: Callable[[np.ndarray], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = cfg
        self._sink = sink
        self._factory = source_factory
        self._frame_hook = frame_hook  # privacy masks: applied before anyone else sees a frame
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._lock = threading.Lock()
        self._latest: CapturedFrame | None = None
        self._held: CapturedFrame | None = None  # what the encoder is working on
        self._consumed_index = -1
        self._pool = FramePool()
        self._stop = threading.Event()
        self._restart = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = "stopped"
        self.frames_in = 0
        self.frames_dropped = 0
        self.open_attempts = 0
        self.outage_count = 0
        self.outages: deque[Outage] = deque(maxlen=MAX_OUTAGES_KEPT)
        self._arrivals: deque[float] = deque()
        self._shown_source = redact_url(cfg.source)  # an IP camera URL may hold a password
        self._source_secrets = url_secrets(cfg.source)
        self._description = self._shown_source
        self._outage_started_s = 0.0

    def start(self) -> None:
        self._stop.clear()
        self.state = "opening"  # until the first frame, also before the thread runs
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        self.state = "stopped"

    def restart(self) -> None:
        """Close and reopen the source (the `restart_capture` command)."""
        self._restart.set()

    def latest(self) -> CapturedFrame | None:
        """For the encoder (one caller): the newest frame, which stays untouched until the
        next call; the frame it held before goes back to the pool."""
        with self._lock:
            frame = self._latest
            if frame is not None:
                self._consumed_index = frame.index
            if self._held is not None and self._held is not frame:
                self._pool.give(self._held.image)
            self._held = frame
            return frame

    def newest_copy(self) -> CapturedFrame | None:
        """The newest frame as a copy of its own (snapshots, the reference picture)."""
        with self._lock:
            frame = self._latest
            if frame is None:
                return None
            return CapturedFrame(frame.index, frame.image.copy(), frame.captured_s)

    def fps_in(self, now_s: float) -> float:
        with self._lock:
            while self._arrivals and self._arrivals[0] < now_s - FPS_WINDOW_S:
                self._arrivals.popleft()
            return len(self._arrivals) / FPS_WINDOW_S

    def status(self, now_s: float) -> dict[str, object]:
        latest = self._latest
        current = self.outages[-1] if self.outages and self.outages[-1].end_utc is None else None
        return {
            "source": self._description,
            "state": self.state,
            "fps_in": round(self.fps_in(now_s), 2),
            "frames_in": self.frames_in,
            "frames_dropped": self.frames_dropped,
            "last_frame_age_s": None if latest is None else round(now_s - latest.captured_s, 3),
            "outages": self.outage_count,
            "outage_since_utc": None if current is None else current.start_utc,
            "recent_outages": [vars(o) for o in list(self.outages)[-5:]],
        }

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            source = self._factory()
            self._description = source.description
            self.open_attempts += 1
            try:
                self.state = "opening"
                source.open()
                attempt = self._read_until_failure(source, attempt)
            except SourceError as exc:
                self._begin_outage(str(exc))
            except Exception as exc:  # OpenCV/FFmpeg can raise anything; never let it kill us
                log.exception("capture source %s failed unexpectedly", self._shown_source)
                self._begin_outage(f"unexpected error: {exc}")
            finally:
                try:
                    source.close()
                except Exception:  # a failing close must not stop the reopen loop
                    log.exception("closing the capture source failed")
            if self._stop.is_set():
                break
            if self._restart.is_set():
                self._restart.clear()
                attempt = 0
                continue
            self.state = "reconnecting"
            delay_s = floor_jitter_s(attempt, REOPEN_BASE_S, self._cfg.reconnect_max_s, self._rng)
            attempt += 1
            log.info("reopening %s in %.1f s (attempt %d)", self._shown_source, delay_s, attempt)
            self._stop.wait(delay_s)

    def _read_until_failure(self, source: CaptureSource, attempt: int) -> int:
        last_frame_s = time.monotonic()
        while not self._stop.is_set() and not self._restart.is_set():
            image = source.read()
            now_s = time.monotonic()
            if image is None:
                if now_s - last_frame_s > self._cfg.stall_timeout_s:
                    raise SourceError(f"no frame for {self._cfg.stall_timeout_s:.0f} s")
                continue
            # into a pooled buffer: decoded frames copied once, BGR converted once
            if not isinstance(image, np.ndarray):
                image = i420_from_av(image, self._pool.take)
            elif image.ndim == 3:
                image = to_i420(image, self._pool.take)
            else:  # already I420: a copy of our own all the same (the pool reuses it)
                own = self._pool.take((image.shape[0], image.shape[1]))
                np.copyto(own, image)
                image = own
            if self._frame_hook is not None:
                self._frame_hook(image)
            last_frame_s = now_s
            attempt = 0
            self._deliver(image, now_s)
        return attempt

    def _deliver(self, image: np.ndarray, now_s: float) -> None:
        with self._lock:
            old = self._latest
            if old is not None and old.index != self._consumed_index:
                self.frames_dropped += 1
            if old is not None and old is not self._held:
                self._pool.give(old.image)  # dropped unread
            index = self.frames_in
            self._latest = CapturedFrame(index, image, now_s)
            self.frames_in += 1
            self._arrivals.append(now_s)
            if len(self._arrivals) > 1000:
                self._arrivals.popleft()
        if self.state != "running":
            self.state = "running"
            self._end_outage()

    def _begin_outage(self, reason: str) -> None:
        reason = redact_text(reason, self._source_secrets)  # a library may quote the URL
        self.state = "reconnecting"
        if self.outages and self.outages[-1].end_utc is None:
            return  # still the same outage: the reopen failed again
        log.warning("camera lost: %s", reason)
        self.outage_count += 1
        self.outages.append(Outage(start_utc=utc_now_iso(), reason=reason))
        self._outage_started_s = time.monotonic()
        self._sink.emit(Event("camera_lost", "error", f"camera lost: {reason}", {"reason": reason}))

    def _end_outage(self) -> None:
        if not self.outages or self.outages[-1].end_utc is not None:
            return
        outage = self.outages[-1]
        outage.end_utc = utc_now_iso()
        outage.duration_s = round(time.monotonic() - self._outage_started_s, 3)
        log.info("camera restored after %.1f s", outage.duration_s)
        self._sink.emit(
            Event(
                "camera_restored",
                "info",
                f"camera restored after {outage.duration_s:.1f} s",
                {"outage_start_utc": outage.start_utc, "duration_s": outage.duration_s},
            )
        )
