"""The encoding thread: constant output frame rate, overlay, H.264, IDR-aligned segments.

Ticks come from the monotonic clock at the rung's frame rate: each tick takes the newest captured
frame (repeating the previous one when the camera is slower, showing a "no camera" card when it
is gone), so the output never stops and timestamps follow real time. When the box falls behind,
ticks are skipped (counted) but a segment boundary is never skipped: every segment starts with a
forced IDR at exactly `segment_s` intervals. A new rung is applied at the next boundary.

Each segment's `started_utc` is the wall clock at its first frame. When the wall clock stepped
since the previous boundary (more than a second against the monotonic clock: NTP sync, a person
setting the date), the segment is marked as a discontinuity, so the playlists restart their
PROGRAM-DATE-TIME there instead of letting a player's times drift from the index.

Packet observers (live outputs such as RTMP) get every encoded packet as it leaves the encoder,
before the segmenter takes it, with the capture time of its picture (agent/encode/packet.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import cv2
import numpy as np

from agent.adapt.ladder import Rung
from agent.capture.capture import Capture, CapturedFrame
from agent.capture.frames import frame_size, luma, resize_i420, to_i420
from agent.core.clock import StepDetector, utc_iso
from agent.core.events import Event, EventSink
from agent.encode.config import EncodeConfig
from agent.encode.encoder import PTS_HZ, VideoEncoder, open_video_encoder
from agent.encode.overlay import Overlay
from agent.encode.packet import EncodedPacket, PacketObserver
from agent.encode.segmenter import EncodedSegment, SegmentWriter

log = logging.getLogger(__name__)

LOAD_EWMA_ALPHA = 0.05  # ~20 frames of memory for the encode-load figure
RESTART_PAUSE_S = 1.0  # after an encoder failure, before opening a new one
FrameObserver = Callable[[float, np.ndarray], None]  # (capture time, the grey picture)
# capture times kept for packets still inside the encoder (hardware encoders hold a few frames)
GLASS_TIMES_KEPT = 64
OBSERVER_ERROR_LOG_EVERY = 1000  # a failing packet observer is logged once, then every Nth time


@dataclass(frozen=True)
class BoundaryFigures:
    """What the encoder saw during the segment that just closed (for the rung controller)."""

    load: float  # encode time per frame / frame interval (EWMA); > 1 means behind real time
    ticks_skipped: int  # output frames skipped because encoding fell behind


RungChooser = Callable[[BoundaryFigures], Rung]


class EncodeLoop:
    def __init__(
        self,
        station_id: str,
        cfg: EncodeConfig,
        capture: Capture,
        rung: Rung,
        on_segment: Callable[[EncodedSegment], None],
        sink: EventSink,
        stale_after_s: float,
        choose_rung: RungChooser,
        observers: list[FrameObserver] | None = None,
        packet_observers: list[PacketObserver] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._capture = capture
        self._rung = rung
        self._choose_rung = choose_rung
        self._skipped_at_boundary = 0
        self._on_segment = on_segment
        self._sink = sink
        self._stale_after_s = stale_after_s
        self._observers = observers or []
        self.packet_observers = packet_observers or []  # more may be added before start()
        self._glass_s: dict[int, float] = {}  # pts -> capture time, for the packet observers
        self.observer_errors = 0
        self._clock = clock
        self._wall_clock = wall_clock
        self._clock_steps = StepDetector()
        self._overlay = Overlay(station_id)
        self._writer = SegmentWriter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._placeholders: dict[tuple[int, int], np.ndarray] = {}
        self._encoder_keeps_frames = False
        self._last_observed_index = -1
        self.encoder_name = ""
        self.frames_out = 0
        self.ticks_skipped = 0
        self.segments = 0
        self.load = 0.0  # encode time per frame / frame interval (EWMA); > 1 means behind
        self.last_bitrate_bps = 0.0
        self.error: str | None = None
        self.failures = 0

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="encode", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the current segment (up to its boundary), flush, and return."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def rung(self) -> Rung:
        return self._rung

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, object]:
        return {
            "encoder": self.encoder_name,
            "rung": self._rung.as_dict(),
            # measured per segment: unknown (null, never a 0 bit/s) before the first
            "bitrate_bps_actual": round(self.last_bitrate_bps) if self.segments else None,
            "encode_ms_per_frame": round(self.load * 1000.0 / self._rung.fps, 2),
            "load": round(self.load, 3),
            "frames_out": self.frames_out,
            "ticks_skipped": self.ticks_skipped,
            "segments": self.segments,
        }

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        """Encode until stopped; a failure (a bad frame, an encoder error) is reported and the
        encoder restarted with a new segment, so the recording goes on."""
        while not self._stop.is_set():
            try:
                self._encode_until_stopped()
                return
            except Exception as exc:  # any failure here would end the recording for the day
                self.error = f"{type(exc).__name__}: {exc}"
                self.failures += 1
                log.exception("encoder failed; restarting it")
                self._sink.emit(
                    Event(
                        "encoder_failed",
                        "critical",
                        f"encoder failed, restarting it: {exc}",
                        {"error": self.error, "failures": self.failures},
                    )
                )
                self._writer.abandon()  # the partial segment (< segment_s) is lost
                self._stop.wait(RESTART_PAUSE_S)

    def _open(self, rung: Rung) -> VideoEncoder:
        gop = max(1, round(self._cfg.segment_s * rung.fps))
        encoder = open_video_encoder(
            self._cfg.encoder, rung, self._cfg.preset, self._cfg.threads, gop
        )
        if encoder.name != self.encoder_name:
            log.info("encoding with %s", encoder.name)
            self.encoder_name = encoder.name
        self._encoder_keeps_frames = encoder.keeps_frames
        return encoder

    def _encode_until_stopped(self) -> None:
        rung = self._rung
        encoder = self._open(rung)
        per_segment = max(1, round(self._cfg.segment_s * rung.fps))
        t0_s, tick, pts_base, segment_index = self._clock(), 0, 0, -1
        discontinuity = True  # the first segment of a run never continues an earlier one
        while True:
            target_s = t0_s + tick / rung.fps
            delay_s = target_s - self._clock()
            if delay_s > 0:
                time.sleep(delay_s)  # pacing: a tick is at most one frame interval away
            pts = pts_base + round(tick * PTS_HZ / rung.fps)
            # a stop ends the segment at this frame (a short last segment), not at its boundary
            keyframe = tick // per_segment != segment_index or self._stop.is_set()
            if keyframe:
                stopping = self._stop.is_set()
                wanted = rung if stopping else self._wanted_rung()
                # hardware encoders hold frames back: drain them at every boundary so each
                # segment gets all its frames and the next one starts with the IDR
                reopen = wanted != rung or encoder.has_latency
                if self._writer.open:
                    if reopen or stopping:
                        self._emit(self._drain(encoder), encoder)
                    self._finish_segment(pts)
                if stopping:
                    return
                if reopen:
                    encoder = self._open(wanted)
                    if not wanted.same_picture(rung):
                        # new size or fps: restart the tick grid at this boundary
                        per_segment = max(1, round(self._cfg.segment_s * wanted.fps))
                        t0_s, tick, pts_base = target_s, 0, pts
                        discontinuity = True
                    if wanted != rung:
                        log.info("rung %s -> %s", rung.name, wanted.name)
                    rung = self._rung = wanted
                segment_index = tick // per_segment
                wall_s = self._wall_clock()
                discontinuity |= self._wall_clock_stepped(wall_s)
                self._writer.begin(rung, utc_iso(wall_s), pts, encoder.name, discontinuity)
                discontinuity = False
            started_s = self._clock()
            frame = self._capture.latest()
            if frame is not None and started_s - frame.captured_s > self._stale_after_s:
                frame = None  # too old to show: the card
            # glass-to-upstream starts when the picture left the camera (the card: its tick)
            captured_s = started_s if frame is None else frame.captured_s
            i420 = self._prepare(frame, rung, captured_s, pts)
            self._emit(encoder.encode(i420, pts, keyframe), encoder)
            self._overlay.undo()  # the captured frame as it came, for whoever reads it next
            self._writer.captured(captured_s)
            self.frames_out += 1
            done_s = self._clock()
            cost = (done_s - started_s) * rung.fps
            self.load += LOAD_EWMA_ALPHA * (cost - self.load)
            tick = self._next_tick(tick, t0_s, rung.fps, per_segment, done_s)

    def _wall_clock_stepped(self, wall_s: float) -> bool:
        """At a boundary: did the wall clock step since the previous one? (Reported as an
        event by the service's once-a-second check; here it only marks the segment.)"""
        step = self._clock_steps.check(wall_s, self._clock())
        if step is None:
            return False
        log.warning("%s: the next segment starts a discontinuity", step.describe())
        return True

    def _wanted_rung(self) -> Rung:
        """Asked at every segment boundary: the rung for the segment that starts now."""
        figures = BoundaryFigures(self.load, self.ticks_skipped - self._skipped_at_boundary)
        self._skipped_at_boundary = self.ticks_skipped
        return self._choose_rung(figures)

    def _next_tick(self, tick: int, t0_s: float, fps: int, per_segment: int, now_s: float) -> int:
        """The next tick to encode: skip ticks we are late for, but never a boundary."""
        due = int((now_s - t0_s) * fps)
        next_boundary = (tick // per_segment + 1) * per_segment
        following = min(max(tick + 1, due), next_boundary)
        self.ticks_skipped += following - tick - 1
        return following

    def _finish_segment(self, end_pts: int) -> None:
        segment = self._writer.finish(end_pts)
        self.segments += 1
        if segment.duration_s > 0:
            self.last_bitrate_bps = len(segment.data) * 8 / segment.duration_s
        self._on_segment(segment)

    def _emit(self, packets: list[av.Packet], encoder: VideoEncoder) -> None:
        """Packets to the packet observers first (muxing takes the packets' data), then to the
        segment."""
        if self.packet_observers:
            for packet in packets:
                self._observe_packet(packet, encoder)
        self._writer.add(packets)

    def _observe_packet(self, packet: av.Packet, encoder: VideoEncoder) -> None:
        if packet.pts is None:
            return
        item = EncodedPacket(
            data=bytes(packet),
            pts=packet.pts,
            dts=packet.pts if packet.dts is None else packet.dts,
            keyframe=packet.is_keyframe,
            rung=encoder.rung,
            extradata=encoder.extradata,
            captured_s=self._glass_s.pop(packet.pts, self._clock()),
        )
        for observe in self.packet_observers:
            try:
                observe(item)
            except Exception:  # an output's bug must never stop the recording
                if self.observer_errors % OBSERVER_ERROR_LOG_EVERY == 0:
                    log.exception("a packet observer failed (%d so far)", self.observer_errors + 1)
                self.observer_errors += 1

    def _drain(self, encoder: VideoEncoder) -> list[av.Packet]:
        """The packets the encoder still holds; it is spent afterwards (reopen it)."""
        try:
            return encoder.flush()
        except av.FFmpegError as exc:
            log.warning("draining the encoder failed: %s", exc)
            return []

    def _prepare(
        self, frame: CapturedFrame | None, rung: Rung, captured_s: float, pts: int
    ) -> np.ndarray:
        """Newest fresh frame (I420; None: the card) -> rung size -> the overlay burnt in. At
        the capture size the overlay goes into the captured frame itself (no copy;
        `Overlay.undo()` after encoding), unless the encoder keeps frames past encode(). With
        packet observers, notes that the picture of frame `pts` was captured at `captured_s`."""
        w, h = rung.width, rung.height
        if self.packet_observers:
            self._glass_s[pts] = captured_s
            if len(self._glass_s) > GLASS_TIMES_KEPT:
                del self._glass_s[next(iter(self._glass_s))]
        borrowed = False  # drawing into the captured frame itself
        if frame is None:
            image = self._placeholder(w, h)
        else:
            if frame.index != self._last_observed_index:
                self._last_observed_index = frame.index
                for observe in self._observers:
                    observe(frame.captured_s, luma(frame.image))
            image = frame.image
            if frame_size(image) != (w, h):
                image = resize_i420(image, w, h)
            elif self._encoder_keeps_frames:
                image = image.copy()
            else:
                borrowed = True
        self._overlay.stamp(image, self._wall_clock(), keep_original=borrowed)
        return image

    def _placeholder(self, width: int, height: int) -> np.ndarray:
        card = self._placeholders.get((width, height))
        if card is None:
            bgr = np.full((height, width, 3), 48, np.uint8)
            scale = max(0.5, height / 360)
            cv2.putText(
                bgr, "NO CAMERA SIGNAL", (width // 8, height // 2), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (255, 255, 255), max(1, round(scale * 2)), cv2.LINE_AA,
            )  # fmt: skip
            card = to_i420(bgr)
            self._placeholders = {(width, height): card}
        return card
