"""SpoolWriter: the thread between the encoder and the disk.

The encoder hands each finished segment to `put()`; a bounded queue absorbs a slow disk, and one
thread stores the segments in order. A full or failing disk is reported once
(`spool_write_failed`) and retried every second with the segment kept in memory; at shutdown each
segment gets a last few tries, and one that still cannot be stored is reported
(`segment_dropped`) so a stop stays within systemd's TimeoutStopSec.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time

from agent.core.events import Event, EventSink
from agent.encode.segmenter import EncodedSegment
from agent.spool.store import Spool, SpoolError

log = logging.getLogger(__name__)

SPOOL_QUEUE_SEGMENTS = 8  # segments waiting for a slow disk before the encoder blocks
SPOOL_RETRY_S = 1.0
# A clean stop must fit systemd's TimeoutStopSec (30 s): the encoder finishes its segment
# (<= segment_s), the spool gets SPOOL_DRAIN_S and each segment at most SHUTDOWN_STORE_ATTEMPTS
# tries, uploads UPLOAD_DRAIN_S (agent/service/pipeline.py), telemetry ~3 s.
SPOOL_DRAIN_S = 10.0
SHUTDOWN_STORE_ATTEMPTS = 2


class SpoolWriter:
    def __init__(self, spool: Spool, sink: EventSink) -> None:
        self._spool = spool
        self._sink = sink
        self._segments: queue.Queue[EncodedSegment | None] = queue.Queue(SPOOL_QUEUE_SEGMENTS)
        self._stopping = threading.Event()
        # a daemon: a disk that hangs for good must not keep the process from exiting
        self._thread = threading.Thread(target=self._run, name="spool", daemon=True)
        self.segments_stored = 0  # the watchdog's progress counter

    @property
    def queue_empty(self) -> bool:
        """Nothing waits to be stored (the watchdog counts the spool idle, not stalled)."""
        return self._segments.empty()

    def start(self) -> None:
        self._thread.start()

    def put(self, segment: EncodedSegment) -> None:
        """From the encode thread; blocks only when the disk is SPOOL_QUEUE_SEGMENTS behind."""
        self._segments.put(segment)

    def stop(self) -> None:
        """Store what is queued (each segment at most SHUTDOWN_STORE_ATTEMPTS more tries),
        waiting at most about 2 * SPOOL_DRAIN_S. Call after the encoder has stopped."""
        self._stopping.set()
        try:
            self._segments.put(None, timeout=SPOOL_DRAIN_S)
        except queue.Full:
            log.error("the spool is not keeping up; stopping without waiting for it")
        self._thread.join(timeout=SPOOL_DRAIN_S)

    def _run(self) -> None:
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
                self._spool.add(segment)
                self.segments_stored += 1
                return
            except (OSError, SpoolError, sqlite3.Error) as exc:
                failures += 1
                log.error("cannot store segment (attempt %d): %s", failures, exc)
                if failures == 1:
                    self._sink.emit(
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
        self._sink.emit(
            Event(
                "segment_dropped",
                "critical",
                f"a segment recorded at {segment.started_utc} could not be stored before "
                f"shutdown: {reason}",
                {"started_utc": segment.started_utc, "bytes": len(segment.data), "reason": reason},
            )
        )
