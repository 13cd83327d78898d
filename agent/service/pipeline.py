"""Wires the parts together and owns startup and shutdown.

capture thread -> encode thread -> spool writer thread -> (uplinks) ; status snapshot for
telemetry. Shutdown: the encoder finishes its current segment, the spool writer drains, the
uplinks stop, telemetry says goodbye.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agent import __version__
from agent.adapt.controller import ControlInputs, RungController, control_inputs
from agent.adapt.ladder import Rung, build_ladder
from agent.adapt.throughput import ThroughputEstimator
from agent.capture.capture import Capture
from agent.capture.privacy import PrivacyMasker
from agent.capture.sources import open_capture_source
from agent.core.config import Secrets
from agent.core.events import Event, EventFanout
from agent.core.redact import redact_url
from agent.encode.loop import BoundaryFigures, EncodeLoop
from agent.health.camera import CameraHealth, read_reference
from agent.service.config import AgentConfig
from agent.service.supervision import ClockWatch, ProgressWatchdog, clock_behind, status_line
from agent.spool.chain import ManifestChain
from agent.spool.store import Spool
from agent.spool.writer import SpoolWriter
from agent.uplink import SegmentOutput, open_live_outputs, open_outputs, output_names

log = logging.getLogger(__name__)

# A clean stop must fit systemd's TimeoutStopSec (30 s) with a margin, whatever the camera, the
# disk or the server do: the pipeline gets STOP_BUDGET_S, telemetry's goodbye ~3 s after it
# (agent/telemetry/service.py STOP_FLUSH_TIMEOUT_S), leaving ~3 s for the process to exit.
STOP_BUDGET_S = 24.0
# the encoder ends its segment at the next frame (agent/encode/loop.py): one frame interval,
# the flush of the encoder and the last mux; a hardware encoder or a slow box may take seconds
ENCODER_STOP_S = 4.0
CAPTURE_STOP_S = 2.0  # the capture thread is a daemon: a camera stuck in a read is left behind
UPLOAD_DRAIN_S = 3.0
# live outputs (RTMP) have nothing left to send once the encoder stopped: they end their publish
# (the server closes its recording) and their publisher process exits, in milliseconds
LIVE_STOP_S = 1.0


def stop_plan() -> dict[str, float]:
    """Seconds each stage may take to stop, in order; their sum is STOP_BUDGET_S. The spool
    writer gets what is left after the others (its busy wait and grace come out of its share)."""
    spool_s = STOP_BUDGET_S - ENCODER_STOP_S - LIVE_STOP_S - CAPTURE_STOP_S - UPLOAD_DRAIN_S
    return {
        "encode": ENCODER_STOP_S,
        "live": LIVE_STOP_S,
        "capture": CAPTURE_STOP_S,
        "spool": spool_s,
        "uplink": UPLOAD_DRAIN_S,
    }


class Pipeline:
    def __init__(self, cfg: AgentConfig, secrets: Secrets, events: EventFanout) -> None:
        self.cfg = cfg
        self.secrets = secrets
        self.events = events
        key = secrets.signing_key  # with a station key every segment gets a signed manifest
        self.chain = (
            None
            if key is None
            else ManifestChain.for_station(key.get_secret_value(), cfg.station_id, __version__)
        )
        if self.chain is not None:
            events.subscribe(self.chain.note_event)  # incidents go into the signed record
        self.spool = Spool(
            cfg.spool.path,
            uplinks=output_names(cfg.uplink),
            max_bytes=cfg.spool.max_bytes,
            min_free_bytes=cfg.spool.min_free_bytes,
            sink=events,
            chain=self.chain,
        )
        self.estimator = ThroughputEstimator()  # fed by the primary output's uploads
        spool_outputs: list[SegmentOutput] = open_outputs(
            cfg.uplink, cfg.station_id, secrets, self.spool, events, self.estimator,
            cfg.encode.segment_s,
        )  # fmt: skip
        # the first output sending the spool is the primary (the link adapted to); the live
        # ones ([[uplink.rtmp]]) take the encoder's packets and never hold a segment back
        self._spool_outputs = spool_outputs
        self._primary = spool_outputs[0] if spool_outputs else None
        self.live_outputs = open_live_outputs(cfg.uplink, secrets, events)
        self.outputs: list[SegmentOutput] = [*spool_outputs, *self.live_outputs]
        self.spool_writer = SpoolWriter(self.spool, events)
        capture_cfg = cfg.capture
        ladder = build_ladder(cfg.adapt, capture_cfg.width, capture_cfg.height, capture_cfg.fps)
        # with no uplink there is no link to adapt to: record the top rung
        adapt_cfg = cfg.adapt if spool_outputs else cfg.adapt.model_copy(update={"enabled": False})
        self.controller = RungController(ladder, adapt_cfg)
        self._controller_lock = threading.Lock()
        self.health = CameraHealth(
            cfg.health,
            events,
            reference=self._reference(),
            expected_fps=capture_cfg.fps,
            loss_reported_elsewhere=True,  # camera_lost is the one alarm for a lost camera
        )
        # masks first: no unmasked pixel reaches health, overlay, encoder, spool or snapshots
        self.masker = PrivacyMasker(cfg.privacy)
        self.health.set_ignore_mask(self.masker.mask_for(capture_cfg.width, capture_cfg.height))
        self.capture = Capture(
            capture_cfg,
            events,
            source_factory=lambda: open_capture_source(
                capture_cfg.source, capture_cfg.width, capture_cfg.height, capture_cfg.fps
            ),
            frame_hook=self.masker.apply if self.masker.active_count else None,
        )
        self.encode = EncodeLoop(
            cfg.station_id,
            cfg.encode,
            self.capture,
            self.controller.decide(time.monotonic(), ControlInputs(estimate_bps=None)),
            on_segment=self.spool_writer.put,
            sink=events,
            stale_after_s=capture_cfg.stall_timeout_s,
            choose_rung=self._choose_rung,
            observers=[self.health.observe] if cfg.health.enabled else [],
            packet_observers=[output.offer for output in self.live_outputs],
        )
        self._progress_marks: dict[str, object] = {}
        self.clock_watch = ClockWatch(events)
        # the recording's folder upstream, {url}/{station_id}/{recording_id}/ (operations.md)
        self._summary: dict[str, Any] = {"recording_id": None}

    @property
    def segments_stored(self) -> int:
        """Segments stored since start (tests and benches wait on it)."""
        return self.spool_writer.segments_stored

    def _primary_backlog(self) -> tuple[int, float, int, float]:
        """(segments, seconds, bytes, live lag s) the primary output still lacks."""
        if self._primary is None:
            return 0, 0.0, 0, 0.0
        return self.spool.backlog(self._primary.name)

    def report_progress(self, progress: ProgressWatchdog, now_s: float) -> None:
        """Tell the watchdog which stages moved since the last call, from their counters.
        A stage with nothing to do is idle (never stalled); a hung thread stops its counter."""

        def moved(stage: str, counter: object) -> None:
            if self._progress_marks.get(stage) != counter:
                self._progress_marks[stage] = counter
                progress.beat(stage, now_s)

        moved("capture", (self.capture.frames_in, self.capture.open_attempts))
        moved("encode", self.encode.frames_out)
        if self.spool_writer.queue_empty:
            progress.idle("spool", now_s)
        else:
            progress.busy("spool", now_s)
            moved("spool", self.spool_writer.segments_stored)
        outputs = [output.progress() for output in self.outputs]
        if all(p.busy_since_s is None for p in outputs):
            progress.idle("uplink", now_s)  # waiting for a segment or in backoff: not hung
        else:
            progress.busy("uplink", now_s)
            moved("uplink", tuple(p.sent_bytes for p in outputs))

    def status_line(self) -> str:
        """For `systemctl status`: e.g. "streaming 720p30 1.5 Mbit/s, backlog 0"."""
        state = "streaming" if self.capture.state == "running" else "NO CAMERA, recording card"
        backlog = self._primary_backlog()[0]
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
        self.clock_watch.tick(time.time(), now_s)
        if self.cfg.health.enabled:
            self.health.note_source_state(now_s, self.capture.state == "running")
            self.health.poll(now_s)

    def _choose_rung(self, figures: BoundaryFigures) -> Rung:
        """At each segment boundary (encode thread): the controller picks the next rung."""
        now_s = time.monotonic()
        _, _, backlog_bytes, lag_s = self._primary_backlog()
        inputs = control_inputs(
            self.estimator,
            now_s,
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
        self._summary["recording_id"] = self.spool.recording_id
        log.info(
            "spool %s opened; next segment %d; recovery clean: %s",
            self.cfg.spool.path, self.spool.next_seq(), report.clean,
        )  # fmt: skip
        self._check_clock()
        self.spool_writer.start()
        self.capture.start()
        self.encode.start()
        for output in self.outputs:
            output.start()

    def _check_clock(self) -> None:
        """At start: is the wall clock behind the end of what was recorded before?"""
        self.clock_watch.tick(time.time(), time.monotonic())  # the reference for the ticks
        end_utc = self.spool.last_segment_end_utc()  # (a re-index may still be filling in)
        if end_utc is None:
            return  # a new spool: nothing recorded before
        event = clock_behind(time.time(), end_utc)
        if event is not None:
            log.warning("%s", event.message)
            self.events.emit(event)

    def stop(self) -> None:
        """Stop in data-flow order within STOP_BUDGET_S (see stop_plan)."""
        plan = stop_plan()
        self.encode.stop(timeout_s=plan["encode"])
        for live in self.live_outputs:
            live.stop(drain_s=plan["live"] / len(self.live_outputs))
        self.capture.stop(timeout_s=plan["capture"])
        self.spool_writer.stop(budget_s=plan["spool"])
        for output in self._spool_outputs:  # in parallel would be better; one is the norm
            output.stop(drain_s=plan["uplink"] / max(1, len(self._spool_outputs)))
        self.spool.close()

    def _pinned_name(self) -> str | None:
        pinned = self.controller.pinned
        return None if pinned is None else pinned.name

    def reload_secrets(self, secrets: Secrets) -> None:
        """SIGHUP: a technician fixed a credential file; uploads pick it up at once."""
        self.secrets = secrets
        for output in self.outputs:
            output.reload_credentials(secrets)

    # -- status ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What this station is set up to do (retained status message). The same dict every
        call: start() fills in the recording id once the spool is open (telemetry holds it
        from before the start)."""
        self._summary.update({
            "source": redact_url(self.cfg.capture.source),  # retained: never a password
            "ladder_top": self.controller.ladder[-1].name,
            "ladder_bottom": self.controller.ladder[0].name,
            "uplinks": [output.name for output in self.outputs],
            "segment_s": self.cfg.encode.segment_s,
            "privacy_masks": self.masker.active_count,
            "signing_key": None if self.chain is None else self.chain.fingerprint,
        })  # fmt: skip
        return self._summary

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
            "uplink": self._primary.status(now_s) if self._primary is not None else None,
            "rtmp": [live.status(now_s) for live in self.live_outputs] or None,
            "health": self.health.snapshot() if self.cfg.health.enabled else None,
            "privacy": self.masker.snapshot(),
        }
        return {key: value for key, value in sections.items() if value is not None}


def run_until(stop: threading.Event, tick: Callable[[], None], interval_s: float) -> None:
    """The main supervision loop: calls `tick` every `interval_s` until `stop` is set."""
    while not stop.wait(interval_s):
        tick()
