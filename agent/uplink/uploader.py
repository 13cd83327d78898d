"""SegmentUploader: pushes every spooled segment upstream, live edge first, backlog backfilled.

One worker thread and one keep-alive connection. Each round picks the newest segment if the
upstream lacks it (viewers stay live), otherwise the oldest missing one (the archive fills in
order), reads it back checked against its size and SHA-256 (only whole segments go up), PUTs
it as `{recording_id}/{seq:08d}.ts` (a name no other box, spool or restart ever uses) and,
with a station key, its signed manifest as `{recording_id}/{seq:08d}.json`, marks it uploaded
in the spool only after both got a 2xx, then lets the Publisher rewrite the playlists and the
station index (segment first, manifest second, playlist last: DASH-IF Live Media Ingest).

Failures are per segment (agent/uplink/schedule.py): a segment that fails or is refused waits on
its own timer while the others go on; a segment refused again and again is set aside and
reported once; a server that refuses everything (a wrong credential) backs the link off long,
keeps every segment and says so once. A segment whose file is gone or damaged is skipped: the
spool has recorded the loss, the playlists show the gap.
"""

from __future__ import annotations

import hashlib
import logging
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from agent.adapt.throughput import ThroughputEstimator
from agent.core.clock import parse_utc
from agent.core.config import Secrets
from agent.core.events import Event, EventSink, utc_now_iso
from agent.spool.store import SegmentRecord, SegmentUnavailable, Spool, SpoolError
from agent.uplink.config import HttpUplinkConfig
from agent.uplink.output import OutputProgress
from agent.uplink.publisher import JSON_TYPE, M3U8_TYPE, Publisher
from agent.uplink.recordings import INDEX_NAME
from agent.uplink.schedule import Refusal, UploadSchedule
from agent.uplink.targets import (
    Progress,
    RejectedUploadError,
    RetryableUploadError,
    UploadTarget,
)

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.5  # wait for a new segment at most this long before looking again
SLEEP_SLICE_S = 0.2  # a backoff is cut short by a stop or a wake-up within this
BUG_PAUSE_S = 5.0  # after an unexpected error in a round
# At stop the uploader has run all along the encoder's and the spool's stop, so little is
# pending: the first half of its time goes to segments, the second to the closing writes (live
# playlist, archive with ENDLIST, index: a few requests of a few kB, ~1 MB of archive after a
# long day). The pipeline's stop budget (agent/service/pipeline.py) gives it UPLOAD_DRAIN_S.
STOP_S = 3.0
CLOSE_SHARE = 0.5
JOIN_MARGIN_S = 0.2  # the worker notices the deadline within a slice of its loop
LATENCY_SAMPLES = 512  # glass-to-upstream latencies kept for p50/p95
TS_TYPE = "video/mp2t"


@dataclass
class UploadFigures:
    uploaded: int = 0
    bytes: int = 0
    failures: int = 0  # failed requests of any kind (segments, playlists, index)
    skipped: int = 0  # segments found missing or damaged (lost, recorded by the spool)
    last_upload_utc: str | None = None
    last_error: str | None = None
    busy_since_s: float | None = None  # monotonic start of the request in progress
    sent_bytes: int = 0  # bytes handed to the network so far (moves while an upload runs)
    playlist_bytes: int = 0  # bytes of playlists and the station index put (issue 15)


class BusyRequests:
    """Every request goes through here: while it runs the uplink is busy, and the watchdog
    sees bytes moving (a PUT that hangs, segment or playlist, hangs the whole uplink). Every
    PUT is measured by the throughput estimator: playlists, manifests and the index use the
    link as segments do (a small one only tells its latency)."""

    def __init__(
        self, target: UploadTarget, figures: UploadFigures, estimator: ThroughputEstimator
    ) -> None:
        self._target = target
        self._figures = figures
        self._estimator = estimator

    def put(
        self,
        name: str,
        data: bytes,
        content_type: str,
        sha256: str | None = None,
        on_progress: Progress | None = None,
    ) -> None:
        reported = 0

        ticket = self._estimator.upload_started(time.monotonic(), len(data))

        def progress(sent: int) -> None:
            nonlocal reported
            self._figures.sent_bytes += sent - reported
            reported = sent
            self._estimator.upload_progress(ticket, time.monotonic(), sent)
            if on_progress is not None:
                on_progress(sent)

        ok = False
        try:
            with self._busy():
                self._target.put(name, data, content_type, sha256, progress=progress)
            ok = True
        finally:
            self._estimator.upload_finished(ticket, time.monotonic(), ok)
        if content_type == M3U8_TYPE or name == INDEX_NAME:
            self._figures.playlist_bytes += len(data)

    def get(self, name: str) -> bytes | None:
        with self._busy():
            return self._target.get(name)

    @contextmanager
    def _busy(self) -> Iterator[None]:
        self._figures.busy_since_s = time.monotonic()
        try:
            yield
        except (RetryableUploadError, RejectedUploadError):
            self._figures.failures += 1
            raise
        finally:
            self._figures.busy_since_s = None


class SegmentUploader:
    """A SegmentOutput (agent.uplink.output): `name` is the spool's uplink name."""

    def __init__(
        self,
        cfg: HttpUplinkConfig,
        target: UploadTarget,
        spool: Spool,
        sink: EventSink,
        estimator: ThroughputEstimator,
        *,
        name: str,
        station_id: str,
        box_id: str,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.target = target
        self._spool = spool
        self._sink = sink
        self.estimator = estimator
        self._wall = wall_clock
        rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.schedule = UploadSchedule(
            backoff_max_s=cfg.backoff_max_s,
            rejected_backoff_s=cfg.rejected_backoff_s,
            refused_max_attempts=cfg.refused_max_attempts,
            set_aside_retry_s=cfg.set_aside_retry_s,
            rng=rng,
        )
        self._set_aside_retry_s = cfg.set_aside_retry_s
        self.figures = UploadFigures()
        self._requests = BusyRequests(target, self.figures, estimator)
        self.publisher = Publisher(
            cfg, spool, name, self._requests, sink, station_id=station_id, box_id=box_id,
            rng=rng, wall_clock=wall_clock,
        )  # fmt: skip
        self._unmarked: dict[int, str] = {}  # uploaded, but the spool could not record it yet
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._deadline_s = 0.0  # of the drain, once stopping
        self._close_by_s = 0.0  # of the closing writes
        self._thread: threading.Thread | None = None
        self.latencies_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        # glass-to-upstream: from the moment the first and the last frame of a segment left the
        # camera to the server's 2xx for the segment (monotonic), live segments of this run
        self.glass_s: deque[tuple[float, float]] = deque(maxlen=LATENCY_SAMPLES)

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"uplink-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, drain_s: float = STOP_S) -> None:
        """Within `drain_s`: upload what is pending, then write the playlists and the index a
        last time. Returns by then whatever the server does: a request still hanging is
        abandoned (its thread is a daemon). The archive gets ENDLIST; live.m3u8 does not:
        players stop reloading a playlist that has ended, and a restart (upgrade, reboot,
        watchdog) must not end the public stream."""
        now_s = time.monotonic()
        self._close_by_s = now_s + drain_s
        self._deadline_s = now_s + drain_s * (1 - CLOSE_SHARE)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=drain_s + JOIN_MARGIN_S)
            if self._thread.is_alive():
                log.warning("a request still hangs at the stop deadline: abandoned")
        self.target.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Cut the current backoffs short (a credential was fixed)."""
        self._wake.set()

    def reload_credentials(self, secrets: Secrets) -> None:
        """SIGHUP: a technician fixed a credential file; uploads pick it up at once."""
        self.target.set_credentials(secrets)
        self.wake()

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._round()
            except Exception:  # a bug must not end uploading for the day: log, pause, go on
                log.exception("uploader round failed unexpectedly")
                self._stopping.wait(BUG_PAUSE_S)
        try:
            self._drain()
            self.publisher.close(self._close_by_s)
        except (SpoolError, sqlite3.Error) as exc:  # the spool was closed under a late request
            log.warning("uploader stopped before it finished: %s", exc)

    def _round(self) -> None:
        """One segment, then the playlists and the index if due; or wait for work."""
        if self._wake.is_set():
            self._wake.clear()
            self.schedule.wake()
        now_s = time.monotonic()
        if now_s < self.schedule.link_ready_at_s:
            self._sleep_until(self.schedule.link_ready_at_s)
            return
        self._retry_marks()
        record = self._pick(now_s)
        if record is not None:
            self._send(record)
        self.publisher.update(time.monotonic())
        if record is None:
            self.schedule.forget_due(now_s)
            self._idle()

    def _drain(self) -> None:
        """Stopping: what is pending and not waiting, until the deadline."""
        while (now_s := time.monotonic()) < self._deadline_s:
            ready_s = self.schedule.link_ready_at_s
            if now_s < ready_s:
                if ready_s >= self._deadline_s:
                    return
                time.sleep(ready_s - now_s)
                continue
            record = self._pick(now_s)
            if record is None:
                return
            self._send(record)

    def _idle(self) -> None:
        """Wait for a new segment, or until a waiting one is due (a stop ends it within
        IDLE_POLL_S)."""
        timeout_s = IDLE_POLL_S
        due_s = self.schedule.next_due_s()
        if due_s is not None:
            timeout_s = min(timeout_s, max(0.0, due_s - time.monotonic()))
        self._spool.wait_for_segment(self._spool.next_seq() - 1, timeout_s)

    def _sleep_until(self, until_s: float) -> None:
        """The link's backoff: new segments do not cut it; a stop or a wake-up does."""
        while not self._stopping.is_set() and not self._wake.is_set():
            remaining_s = until_s - time.monotonic()
            if remaining_s <= 0:
                return
            self._stopping.wait(min(remaining_s, SLEEP_SLICE_S))

    def _pick(self, now_s: float) -> SegmentRecord | None:
        """The live edge if it is due, else the oldest due segment the upstream lacks."""
        skip = self.schedule.waiting(now_s) | self._unmarked.keys()
        newest = self._spool.next_seq() - 1
        for record in self._spool.pending(self.name, newest_first=True, limit=len(skip) + 1):
            if record.seq not in skip:
                if record.seq == newest:
                    return record
                break
        for record in self._spool.pending(self.name, limit=len(skip) + 1):
            if record.seq not in skip:
                return record
        return None

    # -- one segment -----------------------------------------------------------------------

    def _send(self, record: SegmentRecord) -> None:
        try:
            data = self._spool.read_verified(record.seq)
        except SegmentUnavailable as exc:  # the spool recorded the loss; it is not pending
            log.warning("segment %d skipped, not uploaded: %s", record.seq, exc.reason)
            self.figures.skipped += 1
            self.schedule.forget(record.seq)
            self.publisher.segments_changed(record.seq)  # the gap shows in the playlists
            return
        try:
            self._put_segment(record, data)
        except RetryableUploadError as exc:
            self.schedule.failed(record.seq, time.monotonic(), exc.retry_after_s)
            self._failed(str(exc))
            return
        except RejectedUploadError as exc:
            self._refused(record, exc)
            return
        self._uploaded(record, len(data))

    def _put_segment(self, record: SegmentRecord, data: bytes) -> None:
        self._requests.put(record.object_name, data, TS_TYPE, record.sha256)
        captured = self._spool.captured_s(record.seq)
        if captured is not None:
            done_s = time.monotonic()
            self.glass_s.append((done_s - captured[0], done_s - captured[1]))
        manifest = self._spool.manifest(record.seq)
        if manifest is not None:  # signed: the manifest next to it, before a playlist names it
            sha256 = hashlib.sha256(manifest).hexdigest()
            self._requests.put(record.manifest_name, manifest, JSON_TYPE, sha256)

    def _uploaded(self, record: SegmentRecord, nbytes: int) -> None:
        recovered = self.schedule.consecutive_failures or self.schedule.rejected
        failures = self.schedule.consecutive_failures
        if self.schedule.succeeded(record.seq) is not None:
            log.info("segment %d, set aside, was accepted after all", record.seq)
        self._mark(record.seq, record.object_name)
        f = self.figures
        f.uploaded += 1
        f.bytes += nbytes
        f.last_upload_utc = utc_now_iso()
        f.last_error = None
        if recovered:
            self._sink.emit(
                Event(
                    "uplink_up",
                    "info",
                    f"uploads work again after {failures} failure(s)",
                    {"target": self.target.description},
                )
            )
        self.publisher.segments_changed(record.seq, nbytes)
        try:
            self.latencies_s.append(self._wall() - parse_utc(record.started_utc))
        except ValueError:
            log.debug("segment %d: unreadable started_utc", record.seq)

    def _mark(self, seq: int, object_name: str) -> None:
        """Record the upload in the spool; if the spool cannot (a full disk), remember it
        here and try again each round: the segment is never PUT twice meanwhile."""
        try:
            self._spool.mark_uploaded(seq, self.name)
        except (SpoolError, sqlite3.Error) as exc:
            if seq not in self._unmarked:
                log.warning("segment %d is upstream, the spool cannot record it yet: %s", seq, exc)
            self._unmarked[seq] = object_name
            return
        self._unmarked.pop(seq, None)

    def _retry_marks(self) -> None:
        for seq, object_name in list(self._unmarked.items()):
            self._mark(seq, object_name)
            if seq in self._unmarked:
                return  # still failing: try again next round

    def _failed(self, reason: str) -> None:
        self.figures.last_error = reason
        failures = self.schedule.consecutive_failures
        log.warning("upload failed (%d in a row): %s", failures, reason)
        if failures == 1:
            self._sink.emit(
                Event("uplink_down", "warning", f"uploads failing: {reason}", {"reason": reason})
            )

    def _refused(self, record: SegmentRecord, exc: RejectedUploadError) -> None:
        self.figures.last_error = str(exc)
        was_rejected = self.schedule.rejected
        outcome = self.schedule.refused(record.seq, time.monotonic(), exc.status, str(exc))
        log.error("upload of segment %d refused by the server: %s", record.seq, exc)
        if outcome is Refusal.ALL and not was_rejected:
            self._sink.emit(
                Event(
                    "upload_rejected",
                    "error",
                    f"the upload server refuses our segments ({exc}); check the URL and "
                    "the credential; nothing is lost, recording goes on",
                    {"status": exc.status, "reason": str(exc), "seq": None, "object": None},
                )
            )
        elif outcome is Refusal.SET_ASIDE:
            self._sink.emit(
                Event(
                    "upload_rejected",
                    "error",
                    f"the upload server refuses segment {record.seq} ({exc}) while it accepts "
                    f"the others; it is kept, set aside and retried every "
                    f"{self._set_aside_retry_s:.0f} s; the playlists show it as a gap",
                    {
                        "status": exc.status,
                        "reason": str(exc),
                        "seq": record.seq,
                        "object": record.object_name,
                    },
                )
            )

    # -- figures ---------------------------------------------------------------------------

    def progress(self) -> OutputProgress:
        return OutputProgress(self.figures.busy_since_s, self.figures.sent_bytes)

    def status(self, now_s: float) -> dict[str, Any]:
        segments, seconds, nbytes, lag_s = self._spool.backlog(self.name)
        # nothing upstream yet: no lag to tell (null, never a perfect 0.0: docs/telemetry.md)
        lag = None if self._spool.newest_uploaded(self.name) is None else round(lag_s, 3)
        f = self.figures
        estimate = self.estimator.estimate_bps(now_s)
        return {
            "target": self.target.description,
            "throughput_bps": None if estimate is None else round(estimate),
            "backlog_segments": segments,
            "backlog_s": round(seconds, 3),
            "backlog_bytes": nbytes,
            "live_lag_s": lag,
            "last_upload_utc": f.last_upload_utc,
            "consecutive_failures": self.schedule.consecutive_failures,
            "rejected": self.schedule.rejected,
            "set_aside": len(self.schedule.set_aside),
            "skipped_lost": f.skipped,
            "uploaded": f.uploaded,
            "last_error": f.last_error,
            "playlist_error": self.publisher.playlist_error,
            "index_error": self.publisher.index_error,
        }
