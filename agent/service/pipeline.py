"""Wires the parts together and owns startup and shutdown.

capture thread -> encode thread -> spool writer thread -> (uplinks) ; status snapshot for
telemetry. Shutdown: the encoder finishes its current segment, the spool writer drains, the
uplinks stop, telemetry says goodbye.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.adapt.controller import ControlInputs, RungController
from agent.adapt.ladder import Rung, build_ladder
from agent.adapt.throughput import ThroughputEstimator
from agent.capture.capture import Capture
from agent.capture.privacy import PrivacyMasker
from agent.capture.sources import open_source
from agent.core.config import Secrets
from agent.core.events import Event, EventFanout
from agent.encode.loop import BoundaryFigures, EncodeLoop
from agent.encode.segmenter import EncodedSegment
from agent.health.camera import CameraHealth, read_reference
from agent.service.config import AgentConfig
from agent.service.supervision import ProgressWatchdog, status_line
from agent.spool.store import Spool, SpoolError
from agent.uplink.targets import HttpTarget, open_target
from agent.uplink.uploader import SegmentUploader

log = logging.getLogger(__name__)

SPOOL_QUEUE_SEGMENTS = 8  # segments waiting for a slow disk before the encoder blocks
SPOOL_RETRY_S = 1.0
# A clean stop must fit systemd's TimeoutStopSec (30 s): the encoder finishes its segment
# (<= segment_s), the spool gets SPOOL_DRAIN_S and each segment at most SHUTDOWN_STORE_ATTEMPTS
# tries, uploads UPLOAD_DRAIN_S, telemetry ~3 s.
SPOOL_DRAIN_S = 10.0
SHUTDOWN_STORE_ATTEMPTS = 2
UPLOAD_DRAIN_S = 3.0


class Pipeline:
    def __init__(self, cfg: AgentConfig, secrets: Secrets, events: EventFanout) -> None:
        self.cfg = cfg
        self.secrets = secrets
        self.events = events
        self.spool = Spool(
            cfg.spool.path,
            uplinks=self._uplink_names(),
            max_bytes=cfg.spool.max_bytes,
            min_free_bytes=cfg.spool.min_free_bytes,
            sink=events,
        )
        capture_cfg = cfg.capture
        ladder = build_ladder(cfg.adapt, capture_cfg.width, capture_cfg.height, capture_cfg.fps)
        # with no uplink there is no link to adapt to: record the top rung
        adapt_cfg = (
            cfg.adapt if cfg.uplink.http else cfg.adapt.model_copy(update={"enabled": False})
        )
        self.controller = RungController(ladder, adapt_cfg)
        self._controller_lock = threading.Lock()
        self.health = CameraHealth(
            cfg.health, events, reference=self._reference(), expected_fps=capture_cfg.fps
        )
        # masks first: no unmasked pixel reaches health, overlay, encoder, spool or snapshots
        self.masker = PrivacyMasker(cfg.privacy)
        self.health.set_ignore_mask(self.masker.mask_for(capture_cfg.width, capture_cfg.height))
        self.capture = Capture(
            capture_cfg,
            events,
            source_factory=lambda: open_source(
                capture_cfg.source, capture_cfg.width, capture_cfg.height, capture_cfg.fps
            ),
            frame_hook=self.masker.apply if self.masker.active_count else None,
        )
        self.encode = EncodeLoop(
            cfg.station_id,
            cfg.encode,
            self.capture,
            self.controller.decide(time.monotonic(), ControlInputs(estimate_bps=None)),
            on_segment=self._enqueue_segment,
            sink=events,
            stale_after_s=capture_cfg.stall_timeout_s,
            choose_rung=self._choose_rung,
            observers=[self.health.observe] if cfg.health.enabled else [],
        )
        self.estimator = ThroughputEstimator()
        self.uploader: SegmentUploader | None = None
        if cfg.uplink.http is not None:
            target = open_target(cfg.uplink.http, cfg.station_id, secrets, cfg.encode.segment_s)
            self.uploader = SegmentUploader(
                cfg.uplink.http, target, self.spool, events, self.estimator
            )
        self._segments: queue.Queue[EncodedSegment | None] = queue.Queue(SPOOL_QUEUE_SEGMENTS)
        self._stopping = threading.Event()
        # a daemon: a disk that hangs for good must not keep the process from exiting
        self._spool_thread = threading.Thread(
            target=self._write_segments, name="spool", daemon=True
        )
        self.segments_stored = 0
        self._progress_marks: dict[str, object] = {}

    def _uplink_names(self) -> list[str]:
        return ["http"] if self.cfg.uplink.http is not None else []

    def report_progress(self, progress: ProgressWatchdog, now_s: float) -> None:
        """Tell the watchdog which stages moved since the last call, from their counters.
        A stage with nothing to do is idle (never stalled); a hung thread stops its counter."""

        def moved(stage: str, counter: object) -> None:
            if self._progress_marks.get(stage) != counter:
                self._progress_marks[stage] = counter
                progress.beat(stage, now_s)

        moved("capture", (self.capture.frames_in, self.capture.open_attempts))
        moved("encode", self.encode.frames_out)
        if self._segments.empty():
            progress.idle("spool", now_s)
        else:
            progress.busy("spool", now_s)
            moved("spool", self.segments_stored)
        figures = None if self.uploader is None else self.uploader.figures
        if figures is None or figures.busy_since_s is None:
            progress.idle("uplink", now_s)  # waiting for a segment or in backoff: not hung
        else:
            progress.busy("uplink", now_s)
            moved("uplink", figures.sent_bytes)

    def status_line(self) -> str:
        """For `systemctl status`: e.g. "streaming 720p30 1.5 Mbit/s, backlog 0"."""
        state = "streaming" if self.capture.state == "running" else "NO CAMERA, recording card"
        backlog = self.spool.backlog("http")[0] if self.uploader else 0
        return status_line(state, self.encode.rung, self.encode.last_bitrate_bps, backlog)

    def _reference(self) -> np.ndarray | None:
        path = self.cfg.health.reference_image
        if path is None:
            return None
        try:
            return read_reference(path)
        except OSError as exc:
            log.warning("running without the camera reference picture: %s", exc)
            self.events.emit(
                Event("config_problem", "warning", f"reference picture unusable: {exc}")
            )
            return None

    def supervise(self) -> None:
        """Once a second from the main loop: what no worker thread notices by itself."""
        now_s = time.monotonic()
        if self.cfg.health.enabled:
            self.health.note_source_state(now_s, self.capture.state == "running")
            self.health.poll(now_s)

    def _choose_rung(self, figures: BoundaryFigures) -> Rung:
        """At each segment boundary (encode thread): the controller picks the next rung."""
        now_s = time.monotonic()
        _, _, backlog_bytes, lag_s = self.spool.backlog("http") if self.uploader else (0, 0, 0, 0)
        inputs = ControlInputs(
            estimate_bps=self.estimator.estimate_bps(now_s),
            offline=self.estimator.offline(now_s),
            backlog_bytes=backlog_bytes,
            live_lag_s=lag_s,
            encode_load=figures.load,
            frames_dropped=figures.ticks_skipped,
            segment_s=self.cfg.encode.segment_s,
        )
        with self._controller_lock:
            before = self.controller.current
            rung = self.controller.decide(now_s, inputs)
            reason = self.controller.reason
        if not rung.same_picture(before):
            self.events.emit(
                Event(
                    "rung_changed",
                    "info",
                    f"encoding {before.name} -> {rung.name}: {reason}",
                    {"from": before.as_dict(), "to": rung.as_dict(), "reason": reason},
                )
            )
        elif rung.bitrate_bps != before.bitrate_bps:  # a trim within the picture: no event
            log.debug("bitrate %s -> %s: %s", before.name, rung.name, reason)
        return rung

    def pin_rung(self, label: str) -> Rung:
        """Manual override from central staff: the highest ladder rung at or below `label`."""
        with self._controller_lock:
            return self.controller.pin(label)

    def auto_rung(self) -> None:
        """End a pin: adaptation resumes."""
        with self._controller_lock:
            self.controller.auto()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        report = self.spool.open()
        log.info(
            "spool %s opened; next segment %d; recovery clean: %s",
            self.cfg.spool.path, self.spool.next_seq(), report.clean,
        )  # fmt: skip
        self._spool_thread.start()
        self.capture.start()
        self.encode.start()
        if self.uploader is not None:
            self.uploader.start()

    def stop(self, reason: str = "stopped") -> None:
        self.encode.stop(timeout_s=self.cfg.encode.segment_s * 3 + 5)
        self.capture.stop()
        self._stopping.set()
        try:
            self._segments.put(None, timeout=SPOOL_DRAIN_S)
        except queue.Full:
            log.error("the spool is not keeping up; stopping without waiting for it")
        self._spool_thread.join(timeout=SPOOL_DRAIN_S)
        if self.uploader is not None:
            self.uploader.stop(drain_s=UPLOAD_DRAIN_S)
        self.spool.close()

    def _pinned_name(self) -> str | None:
        pinned = self.controller.pinned
        return None if pinned is None else pinned.name

    def reload_secrets(self, secrets: Secrets) -> None:
        """SIGHUP: a technician fixed a credential file; uploads pick it up at once."""
        self.secrets = secrets
        if self.uploader is not None and isinstance(self.uploader.target, HttpTarget):
            self.uploader.target.set_credentials(secrets)
            self.uploader.wake()

    # -- spool writer ----------------------------------------------------------------------

    def _enqueue_segment(self, segment: EncodedSegment) -> None:
        self._segments.put(segment)  # blocks only when the disk is 8 segments behind

    def _write_segments(self) -> None:
        while True:
            segment = self._segments.get()
            if segment is None:
                return
            self._store(segment)

    def _store(self, segment: EncodedSegment) -> None:
        """Store with retries: a full or failing disk is reported and retried every second,
        the segment kept in memory meanwhile; at shutdown each segment gets a last few tries."""
        failures = 0
        while True:
            try:
                self.spool.add(segment)
                self.segments_stored += 1
                return
            except (OSError, SpoolError, sqlite3.Error) as exc:
                failures += 1
                log.error("cannot store segment (attempt %d): %s", failures, exc)
                if failures == 1:
                    self.events.emit(
                        Event(
                            "spool_write_failed",
                            "critical",
                            f"cannot store segment: {exc}",
                            {"error": str(exc)},
                        )
                    )
                if self._stopping.is_set() and failures >= SHUTDOWN_STORE_ATTEMPTS:
                    self._drop_unstored(segment, str(exc))
                    return
                time.sleep(SPOOL_RETRY_S)

    def _drop_unstored(self, segment: EncodedSegment, reason: str) -> None:
        self.events.emit(
            Event(
                "segment_dropped",
                "critical",
                f"a segment recorded at {segment.started_utc} could not be stored before "
                f"shutdown: {reason}",
                {"started_utc": segment.started_utc, "bytes": len(segment.data), "reason": reason},
            )
        )

    # -- status ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What this station is set up to do (retained status message)."""
        return {
            "source": self.cfg.capture.source,
            "ladder_top": self.controller.ladder[-1].name,
            "ladder_bottom": self.controller.ladder[0].name,
            "uplinks": self._uplink_names(),
            "segment_s": self.cfg.encode.segment_s,
            "privacy_masks": self.masker.active_count,
        }

    def status(self) -> dict[str, Any]:
        """The live snapshot for heartbeats; sections that do not apply are left out."""
        now_s = time.monotonic()
        capture = self.capture.status(now_s)
        capture["fps_out"] = self.encode.rung.fps
        sections: dict[str, Any] = {
            "capture": capture,
            "encode": self.encode.status()
            | {"adapt_reason": self.controller.reason, "pinned": self._pinned_name()},
            "spool": self.spool.stats(),
            "uplink": None if self.uploader is None else self.uploader.status(now_s),
            "health": self.health.snapshot() if self.cfg.health.enabled else None,
            "privacy": self.masker.snapshot(),
        }
        return {key: value for key, value in sections.items() if value is not None}


def run_until(stop: threading.Event, tick: Callable[[], None], interval_s: float) -> None:
    """The main supervision loop: calls `tick` every `interval_s` until `stop` is set."""
    while not stop.wait(interval_s):
        tick()
