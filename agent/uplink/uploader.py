"""SegmentUploader: pushes every spooled segment upstream, live edge first, backlog backfilled.

One worker thread and one keep-alive connection. Each round picks the newest segment if the
upstream lacks it (viewers stay live), otherwise the oldest missing one (the archive fills in
order), PUTs it, marks it uploaded in the spool only after a 2xx, then rewrites the live
playlist (segment first, then playlist: DASH-IF Live Media Ingest, HLS interface). Failures are
retried by tenacity with capped exponential backoff and full jitter; a new pick is made on every
attempt, so a link that comes back serves the live edge first. A rejection (401/403/404...)
keeps every segment, raises an event once and backs off long.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import tenacity

from agent.adapt.throughput import ThroughputEstimator
from agent.core.backoff import floor_jitter_s, full_jitter_s
from agent.core.config import Secrets
from agent.core.events import Event, EventSink, utc_now_iso
from agent.spool.store import SegmentRecord, Spool
from agent.uplink.config import HttpUplinkConfig
from agent.uplink.output import OutputProgress
from agent.uplink.playlists import Entry, render_archive, render_live
from agent.uplink.targets import (
    HttpTarget,
    Progress,
    RejectedUploadError,
    RetryableUploadError,
    UploadTarget,
)

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.5  # wait for a new segment at most this long before looking again
BACKOFF_BASE_S = 0.5
LATENCY_SAMPLES = 512  # glass-to-upstream latencies kept for p50/p95
TS_TYPE = "video/mp2t"
M3U8_TYPE = "application/vnd.apple.mpegurl"


@dataclass
class UploadFigures:
    uploaded: int = 0
    bytes: int = 0
    failures: int = 0  # failed requests of any kind (segments and playlists)
    consecutive_failures: int = 0
    rejected: bool = False
    last_upload_utc: str | None = None
    last_error: str | None = None
    busy_since_s: float | None = None  # monotonic start of the upload in progress
    sent_bytes: int = 0  # bytes handed to the network so far (moves while an upload runs)
    playlist_error: str | None = None  # the last playlist failure, until one succeeds


class _Rejected(Exception):
    """Internal: a rejection, retried after the long backoff."""


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
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._cfg = cfg
        self.target = target
        self._spool = spool
        self._sink = sink
        self.estimator = estimator
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._wall = wall_clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._archive_written_s = -1e9
        self._archive_dirty = False
        self._playlists_stale = False
        self._playlist_retry_at_s = 0.0
        self._playlist_failures = 0
        self.figures = UploadFigures()
        self.latencies_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._lock = threading.Lock()

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"uplink-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop after the upload in progress; then write the playlists a last time. The
        archive gets ENDLIST; live.m3u8 does not: players stop reloading a playlist that has
        ended, and a restart (upgrade, reboot, watchdog) must not end the public stream."""
        if drain_s > 0:
            deadline_s = time.monotonic() + drain_s
            while time.monotonic() < deadline_s and self._spool.backlog(self.name)[0]:
                time.sleep(0.1)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        try:
            self._write_playlists(ended=True)
        except (RetryableUploadError, RejectedUploadError) as exc:
            log.warning("could not close the playlists: %s", exc)
        self.target.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((RetryableUploadError, _Rejected)),
            wait=self._wait,
            sleep=self._sleep,
            stop=tenacity.stop_never,
            reraise=True,
        )
        while not self._stop.is_set():
            try:
                for attempt in retrying:
                    with attempt:
                        if self._stop.is_set():
                            return
                        self._round()
            except Exception:  # a bug must not end uploading for the day: log, pause, go on
                log.exception("uploader round failed unexpectedly")
                self._stop.wait(BACKOFF_BASE_S * 10)

    def wake(self) -> None:
        """Cut the current backoff short (a credential was fixed)."""
        self._wake.set()

    def reload_credentials(self, secrets: Secrets) -> None:
        """SIGHUP: a technician fixed a credential file; uploads pick it up at once."""
        if isinstance(self.target, HttpTarget):  # a file:// target has no credential
            self.target.set_credentials(secrets)
            self.wake()

    def _sleep(self, seconds: float) -> None:
        deadline_s = time.monotonic() + seconds
        while not self._stop.is_set() and not self._wake.is_set():
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                break
            self._stop.wait(min(remaining_s, 0.2))  # shutdown or a wake-up cuts a backoff
        self._wake.clear()

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Full jitter capped at backoff_max_s; Retry-After honoured; rejections wait long."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Rejected):
            return floor_jitter_s(
                0, self._cfg.rejected_backoff_s, self._cfg.rejected_backoff_s, self._rng
            )
        delay_s = full_jitter_s(
            state.attempt_number, BACKOFF_BASE_S, self._cfg.backoff_max_s, self._rng
        )
        if isinstance(exc, RetryableUploadError) and exc.retry_after_s is not None:
            delay_s = max(delay_s, exc.retry_after_s)
        return delay_s

    def _round(self) -> None:
        """Upload one segment, then bring the playlists up to date (or wait briefly for a new
        segment). A segment failure raises (tenacity backs off); playlist failures have their
        own retry timer, so a refused playlist never holds the segments back."""
        record = self._pick()
        if record is not None:
            try:
                self._upload(record)
            except FileNotFoundError:
                log.info("segment %d was evicted before its upload", record.seq)
                return
            except RetryableUploadError as exc:
                self._failed(str(exc))
                raise
            except RejectedUploadError as exc:
                self._rejected(exc)
                raise _Rejected(str(exc)) from exc
            self._playlists_stale = True
        self._update_playlists()
        if record is None:
            self._spool.wait_for_segment(self._spool.next_seq() - 1, IDLE_POLL_S)

    def _update_playlists(self) -> None:
        now_s = time.monotonic()
        if now_s < self._playlist_retry_at_s:
            return
        try:
            if self._playlists_stale:
                self._write_playlists(ended=False)  # segment first, then the playlist
                self._playlists_stale = False
            elif self._archive_dirty and self._archive_due():
                self._write_archive(ended=False)
        except (RetryableUploadError, RejectedUploadError) as exc:
            self._playlist_failed(now_s, exc)
            return
        if self.figures.playlist_error is not None:
            log.info("playlists written again")
            self.figures.playlist_error = None
            self._playlist_failures = 0

    def _playlist_failed(self, now_s: float, exc: Exception) -> None:
        self._playlist_failures += 1
        with self._lock:
            self.figures.failures += 1  # every failed request; consecutive_ counts segments
        if isinstance(exc, RejectedUploadError):
            delay_s = self._cfg.rejected_backoff_s
        else:
            delay_s = full_jitter_s(
                self._playlist_failures, BACKOFF_BASE_S, self._cfg.backoff_max_s, self._rng
            )
        self._playlist_retry_at_s = now_s + delay_s
        log.warning("playlist upload failed (%d in a row): %s", self._playlist_failures, exc)
        if self.figures.playlist_error is None:
            self._sink.emit(
                Event(
                    "playlist_failed",
                    "error" if isinstance(exc, RejectedUploadError) else "warning",
                    f"the playlists cannot be updated ({exc}); segments still go up",
                    {"reason": str(exc)},
                )
            )
        self.figures.playlist_error = str(exc)

    def _pick(self) -> SegmentRecord | None:
        newest = self._spool.next_seq() - 1
        live_edge = self._spool.pending(self.name, newest_first=True, limit=1)
        if live_edge and live_edge[0].seq == newest:
            return live_edge[0]  # the live edge first
        oldest = self._spool.pending(self.name, limit=1)
        return oldest[0] if oldest else None  # then the oldest of the backlog

    def _upload(self, record: SegmentRecord) -> None:
        data = self._spool.read(record.seq)
        ticket = self.estimator.upload_started(time.monotonic(), len(data))
        ok = False
        try:

            def measured(sent: int) -> None:
                self.estimator.upload_progress(ticket, time.monotonic(), sent)

            self._put(record.file_name, data, TS_TYPE, record.sha256, measured)
            ok = True
        finally:
            self.estimator.upload_finished(ticket, time.monotonic(), ok)
        self._spool.mark_uploaded(record.seq, self.name)
        with self._lock:
            f = self.figures
            f.uploaded += 1
            f.bytes += len(data)
            f.last_upload_utc = utc_now_iso()
            f.last_error = None
            if f.consecutive_failures or f.rejected:
                self._sink.emit(
                    Event(
                        "uplink_up",
                        "info",
                        f"uploads work again after {f.consecutive_failures} failure(s)",
                        {"target": self.target.description},
                    )
                )
            f.consecutive_failures = 0
            f.rejected = False
        self._archive_dirty = True
        self.latencies_s.append(self._wall() - _epoch_s(record.started_utc))

    def _put(
        self,
        name: str,
        data: bytes,
        content_type: str,
        sha256: str | None,
        on_progress: Progress | None = None,
    ) -> None:
        """Every request goes through here: while it runs the uplink is busy, and the watchdog
        sees bytes moving (a PUT that hangs, segment or playlist, hangs the whole uplink)."""
        reported = 0

        def progress(sent: int) -> None:
            nonlocal reported
            self.figures.sent_bytes += sent - reported
            reported = sent
            if on_progress is not None:
                on_progress(sent)

        self.figures.busy_since_s = time.monotonic()
        try:
            self.target.put(name, data, content_type, sha256, progress=progress)
        finally:
            self.figures.busy_since_s = None

    def _failed(self, reason: str) -> None:
        with self._lock:
            f = self.figures
            f.failures += 1
            f.consecutive_failures += 1
            f.last_error = reason
            first = f.consecutive_failures == 1
        log.warning("upload failed (%d in a row): %s", self.figures.consecutive_failures, reason)
        if first:
            self._sink.emit(
                Event("uplink_down", "warning", f"uploads failing: {reason}", {"reason": reason})
            )

    def _rejected(self, exc: RejectedUploadError) -> None:
        with self._lock:
            f = self.figures
            f.failures += 1
            f.consecutive_failures += 1
            f.last_error = str(exc)
            first = not f.rejected
            f.rejected = True
        log.error("upload rejected by the server: %s", exc)
        if first:
            self._sink.emit(
                Event(
                    "upload_rejected",
                    "error",
                    f"the upload server refuses our segments ({exc}); check the URL and "
                    "the credential; nothing is lost, recording goes on",
                    {"status": exc.status, "reason": str(exc)},
                )
            )

    # -- playlists -------------------------------------------------------------------------

    def _entries(self, since_seq: int) -> list[Entry]:
        return [
            Entry(
                seq=r.seq,
                file_name=r.file_name,
                duration_s=r.duration_s,
                started_utc=r.started_utc,
                discontinuity=r.discontinuity,
                available=self.name in r.uploaded_to,
            )
            for r in self._spool.segments(since_seq)
        ]

    def _write_playlists(self, ended: bool) -> None:
        edge = self._spool.newest_uploaded(self.name)
        if edge is None:
            return
        first = max(0, edge - self._cfg.live_window + 1)
        window = [e for e in self._entries(first) if e.seq <= edge]
        breaks = self._spool.discontinuities_before(first)
        self._put("live.m3u8", render_live(window, breaks).encode(), M3U8_TYPE, None)
        if ended or self._archive_due():
            self._write_archive(ended)

    def _archive_due(self) -> bool:
        """archive.m3u8 grows with the day (~30 bytes a segment): rewrite it at most this often."""
        return time.monotonic() - self._archive_written_s >= self._cfg.archive_interval_s

    def _write_archive(self, ended: bool) -> None:
        entries = self._entries(0)
        if not entries:
            return
        text = render_archive(entries, ended)
        self._put("archive.m3u8", text.encode(), M3U8_TYPE, None)
        self._archive_written_s = time.monotonic()
        self._archive_dirty = False

    # -- figures ---------------------------------------------------------------------------

    def progress(self) -> OutputProgress:
        return OutputProgress(self.figures.busy_since_s, self.figures.sent_bytes)

    def status(self, now_s: float) -> dict[str, Any]:
        segments, seconds, nbytes, lag_s = self._spool.backlog(self.name)
        f = self.figures
        estimate = self.estimator.estimate_bps(now_s)
        return {
            "target": self.target.description,
            "throughput_bps": None if estimate is None else round(estimate),
            "backlog_segments": segments,
            "backlog_s": round(seconds, 3),
            "backlog_bytes": nbytes,
            "live_lag_s": round(lag_s, 3),
            "last_upload_utc": f.last_upload_utc,
            "consecutive_failures": f.consecutive_failures,
            "rejected": f.rejected,
            "uploaded": f.uploaded,
            "last_error": f.last_error,
            "playlist_error": f.playlist_error,
        }


def _epoch_s(utc_iso: str) -> float:
    return datetime.fromisoformat(utc_iso.replace("Z", "+00:00")).timestamp()
