"""SpoolWriter: the thread between the encoder and the disk.

The encoder hands each finished segment to `put()`; a bounded queue absorbs a slow disk, and one
thread stores the segments in order. A full or failing disk is reported once
(`spool_write_failed`) and retried every second with the segment kept in memory. At stop the
queue is drained against a deadline: each segment gets a last few tries while time is left,
and every segment not stored by then — queued, in hand, or put after the stop — is reported
(`segment_dropped` with its `started_utc`), so nothing vanishes unreported and the stop fits
systemd's TimeoutStopSec whatever the disk or the index lock does.
"""

from __future__ import annotations

import logging
import math
import queue
import sqlite3
import threading
import time
from collections import deque

from agent.core.events import Event, EventSink
from agent.encode.segmenter import EncodedSegment
from agent.spool.index import BUSY_TIMEOUT_S
from agent.spool.store import Spool, SpoolError

log = logging.getLogger(__name__)

# Segments waiting for a slow disk before the encoder blocks, in bytes (a count would hold 8 MB
# at 1080p and 2 s, 45 MB with 10 s segments): 16 MB is 8 segments of 2 s at 8 Mbit/s, 50 s of
# the top rung. One segment, however large, is always taken.
SPOOL_QUEUE_BYTES = 16 << 20
SPOOL_RETRY_S = 1.0
# A clean stop must fit systemd's TimeoutStopSec (30 s): the encoder finishes its segment
# (<= segment_s), the spool writer stores what is queued for at most SPOOL_DRAIN_S (a store
# begun just before that deadline may wait BUSY_TIMEOUT_S more on a locked index), each segment
# at most SHUTDOWN_STORE_ATTEMPTS tries; uploads get UPLOAD_DRAIN_S (agent/service/pipeline.py),
# telemetry ~3 s.
SPOOL_DRAIN_S = 10.0
MIN_DRAIN_S = 1.0  # even a squeezed stop tries each queued segment once
SHUTDOWN_STORE_ATTEMPTS = 2
STOP_GRACE_S = 2.0  # past the drain and one busy wait, the thread is given up (a hung disk)
QUEUE_POLL_S = 0.5  # how often an idle writer looks whether it is stopping


class SegmentQueue:
    """FIFO of segments bounded by their bytes (queue.Queue's interface, as used here)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._items: deque[EncodedSegment] = deque()
        self._bytes = 0
        self._changed = threading.Condition()

    def put(self, segment: EncodedSegment) -> None:
        """Blocks while the queue holds something and this segment would overfill it."""
        with self._changed:
            self._changed.wait_for(
                lambda: not self._items or self._bytes + len(segment.data) <= self._max_bytes
            )
            self._items.append(segment)
            self._bytes += len(segment.data)
            self._changed.notify_all()

    def get(self, timeout: float) -> EncodedSegment:
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self._items), timeout):
                raise queue.Empty
            return self._take()

    def get_nowait(self) -> EncodedSegment:
        with self._changed:
            if not self._items:
                raise queue.Empty
            return self._take()

    def empty(self) -> bool:
        with self._changed:
            return not self._items

    @property
    def nbytes(self) -> int:
        with self._changed:
            return self._bytes

    def _take(self) -> EncodedSegment:
        segment = self._items.popleft()
        self._bytes -= len(segment.data)
        self._changed.notify_all()
        return segment


class SpoolWriter:
    def __init__(self, spool: Spool, sink: EventSink, drain_s: float = SPOOL_DRAIN_S) -> None:
        self._spool = spool
        self._sink = sink
        self._drain_s = drain_s
        self._segments = SegmentQueue(SPOOL_QUEUE_BYTES)
        self._stopping = threading.Event()
        self._deadline_s = math.inf  # monotonic; set by stop()
        # who reports a segment that was not stored: the thread, until stop() gives it up
        self._lock = threading.Lock()
        self._in_hand: EncodedSegment | None = None
        self._given_up = False
        # a daemon: a disk that hangs for good must not keep the process from exiting
        self._thread = threading.Thread(target=self._run, name="spool", daemon=True)
        self.segments_stored = 0  # the watchdog's progress counter
        self.segments_dropped = 0

    @property
    def queue_empty(self) -> bool:
        """Nothing waits to be stored (the watchdog counts the spool idle, not stalled)."""
        return self._segments.empty()

    def start(self) -> None:
        self._thread.start()

    def put(self, segment: EncodedSegment) -> None:
        """From the encode thread; blocks only when the disk is SPOOL_QUEUE_BYTES behind.
        A segment put after the stop is reported, never silently left in the queue."""
        with self._lock:
            given_up = self._given_up
        if given_up:
            self._drop(segment, "it arrived after the spool writer stopped")
            return
        self._segments.put(segment)

    def stop(self, budget_s: float | None = None) -> None:
        """Store what is queued while the drain lasts, then report every segment left.
        Returns within about drain + BUSY_TIMEOUT_S + STOP_GRACE_S, which is `budget_s` when
        given (the pipeline's stop plan) or SPOOL_DRAIN_S + the two. Call after the encoder
        has stopped."""
        drain_s = self._drain_s
        if budget_s is not None:
            drain_s = max(MIN_DRAIN_S, budget_s - BUSY_TIMEOUT_S - STOP_GRACE_S)
        self._deadline_s = time.monotonic() + drain_s
        self._stopping.set()
        self._thread.join(timeout=drain_s + BUSY_TIMEOUT_S + STOP_GRACE_S)
        with self._lock:
            self._given_up = True
            left = [self._in_hand] if self._in_hand is not None else []
        if left:
            log.error("the spool writer is stuck on a segment; stopping without it")
        while True:
            try:
                left.append(self._segments.get_nowait())
            except queue.Empty:
                break
        for segment in left:
            self._drop(segment, "the disk did not take it before shutdown")

    def _run(self) -> None:
        while not (self._stopping.is_set() and self._segments.empty()):
            try:
                segment = self._segments.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                continue
            with self._lock:
                if self._given_up:  # stop() has already reported what it could see
                    self._drop(segment, "the disk did not take it before shutdown")
                    return
                self._in_hand = segment
            problem = self._store(segment)
            with self._lock:
                self._in_hand = None
                given_up = self._given_up
            if problem is not None and not given_up:  # (else stop() reported it)
                self._drop(segment, problem)
            if given_up:
                return

    def _store(self, segment: EncodedSegment) -> str | None:
        """Store with retries: a full or failing disk is reported and retried every second,
        the segment kept in memory meanwhile. Once stopping, it gets at most
        SHUTDOWN_STORE_ATTEMPTS more tries and no try after the drain deadline. Returns None
        when stored, else why not."""
        failures = 0
        error = "queued behind a slow disk"
        while True:
            if self._stopping.is_set() and time.monotonic() >= self._deadline_s:
                return f"no time left before shutdown ({error})"
            try:
                self._spool.add(segment)
                self.segments_stored += 1
                return None
            except (OSError, SpoolError, sqlite3.Error) as exc:
                failures += 1
                error = str(exc)
                log.error("cannot store segment (attempt %d): %s", failures, exc)
                if failures == 1:
                    self._sink.emit(
                        Event(
                            "spool_write_failed",
                            "critical",
                            f"cannot store segment: {exc}",
                            {"error": error},
                        )
                    )
                if self._stopping.is_set() and failures >= SHUTDOWN_STORE_ATTEMPTS:
                    return error
                self._stopping.wait(SPOOL_RETRY_S)  # no wait once stopping: the deadline rules

    def _drop(self, segment: EncodedSegment, reason: str) -> None:
        """A segment that never got a place in the spool: no seq, no row; the event carries
        its recording time, and the spool counts it with the lost segments."""
        self.segments_dropped += 1
        self._spool.count_unstored()
        log.error("segment recorded at %s dropped: %s", segment.started_utc, reason)
        self._sink.emit(
            Event(
                "segment_dropped",
                "critical",
                f"a segment recorded at {segment.started_utc} could not be stored before "
                f"shutdown: {reason}",
                {
                    "started_utc": segment.started_utc,
                    "recording_id": self._spool.recording_id,
                    "bytes": len(segment.data),
                    "reason": reason,
                },
            )
        )
