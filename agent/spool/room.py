"""Room on the disk besides the segments: so a full disk never jams the spool.

Each write needs room for the segment itself plus some for SQLite (the index's WAL and pages)
and the telemetry outbox, which live on the same disk. The spool keeps that headroom free, on
top of the configured floor, from free space measured before every write. For the moment when
something else ate it anyway (SQLite answers "database or disk is full"), a reserve file of
real zeros sits in the spool: deleting it gives the eviction's own bookkeeping room to commit,
after which segments are deleted and the reserve is written again.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.core.durable import fsync_directory, write_atomic
from agent.core.events import Event, EventSink
from agent.spool.eviction import StoredSegment, choose_evictions
from agent.spool.index import CAUSE_EVICTED, SpoolIndex
from agent.spool.layout import SEGMENT_DIR, segment_file_name

log = logging.getLogger(__name__)

RESERVE_FILE = ".reserve"
# Room kept for SQLite and the outbox between two measurements: one segment's row, a few upload
# marks and events take tens of KiB; the WAL grows by up to 1 MiB before it is checkpointed
# (index.WAL_AUTOCHECKPOINT_PAGES). On a small disk, a sixteenth of it.
HEADROOM_MAX_BYTES = 1 << 20
# The reserve: one eviction's bookkeeping needs a few pages; 4 MiB also lets the outbox keep a
# burst of events. On a small disk, a sixteenth of it.
RESERVE_MAX_BYTES = 4 << 20
SMALL_DISK_SHARE = 16
# A free-space floor above three quarters of the disk leaves no room to record once the system
# has its share: it is capped there (and reported as a config problem), never allowed to delete
# every segment at each write (a floor larger than the disk did exactly that).
FLOOR_MAX_SHARE = 0.75
WRITE_CHUNK_BYTES = 1 << 16
DISK_OK_FACTOR = 1.2  # disk_low is re-armed when free space is 20 % above what is kept free
# Segments are the service's alone (the unit's UMask=0077 always made them 0600).
SEGMENT_MODE = 0o600


@dataclass(frozen=True)
class RoomPlan:
    """The disk figures the spool keeps, from the disk's size and the configured floor."""

    floor_bytes: int  # effective min_free_bytes (capped at FLOOR_MAX_SHARE of the disk)
    headroom_bytes: int  # for the index and the outbox
    reserve_bytes: int
    floor_capped: bool  # the configured floor was larger than FLOOR_MAX_SHARE of the disk

    @property
    def keep_free_bytes(self) -> int:
        """Free space to keep after a segment is written: the floor, which already leaves room
        for the index, or the headroom when the floor is smaller."""
        return max(self.floor_bytes, self.headroom_bytes)


def plan_room(disk_bytes: int, min_free_bytes: int) -> RoomPlan:
    share = disk_bytes // SMALL_DISK_SHARE
    cap = int(disk_bytes * FLOOR_MAX_SHARE)
    return RoomPlan(
        floor_bytes=min(min_free_bytes, cap),
        headroom_bytes=min(HEADROOM_MAX_BYTES, share),
        reserve_bytes=min(RESERVE_MAX_BYTES, share),
        floor_capped=min_free_bytes > cap,
    )


class DiskReserve:
    """A file of `nbytes` real zeros (allocated, not sparse), deleted when room is needed at
    once and written again when there is room."""

    def __init__(self, path: Path, nbytes: int) -> None:
        self.path = path
        self.nbytes = nbytes

    @property
    def present(self) -> bool:
        return self.path.exists()

    def ensure(self) -> bool:
        """Write the reserve if it is missing; False when the disk has no room for it."""
        if self.present or self.nbytes <= 0:
            return True
        temp = self.path.with_name(self.path.name + ".new")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _allocate(fd, self.nbytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("no room to write the spool's disk reserve (%d bytes)", self.nbytes)
            return False
        return True

    def release(self) -> bool:
        """Delete the reserve; True when that freed its bytes."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning("the disk is full: released the spool's %d-byte reserve", self.nbytes)
        return True


def _allocate(fd: int, nbytes: int) -> None:
    """Real blocks: posix_fallocate where the file system has it, else zeros written."""
    try:
        os.posix_fallocate(fd, 0, nbytes)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    zeros = bytes(WRITE_CHUNK_BYTES)
    left = nbytes
    while left > 0:
        left -= os.write(fd, zeros[: min(left, WRITE_CHUNK_BYTES)])


class DiskRoom:
    """Room for each segment before it is written, from free space measured then; called by
    the spool under its index's lock."""

    def __init__(
        self, folder: Path, plan: RoomPlan, max_bytes: int, uplinks: int,
        disk_free: Callable[[Path], int], sink: EventSink,
    ) -> None:  # fmt: skip
        self.plan = plan
        self.reserve = DiskReserve(folder / RESERVE_FILE, plan.reserve_bytes)
        self._folder = folder
        self._segment_dir = folder / SEGMENT_DIR
        self._max_bytes = max_bytes
        self._uplinks = uplinks
        self._disk_free = disk_free
        self._sink = sink
        self._disk_low = False

    def write_segment(self, ix: SpoolIndex, final: Path, data: bytes) -> None:
        """Write the file (durably); if the disk is full after all, make room once more."""
        try:
            write_atomic(final, data, mode=SEGMENT_MODE)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # something else took the room measured a moment ago: measure and evict again
            log.warning("no room for segment %s (%s); making room again", final.name, exc)
            self.reserve.release()
            self.make_room(ix, len(data))
            write_atomic(final, data, mode=SEGMENT_MODE)

    def make_room(self, ix: SpoolIndex, incoming_bytes: int) -> None:
        """Evict before writing, so the new segment fits the quota and the disk keeps its
        floor and the headroom for the index and outbox. Cheap when nothing needs to go (one
        statvfs, one SUM). The reserve is written again whenever there is room for it."""
        plan, reserve = self.plan, self.reserve
        free_after = self._disk_free(self._folder) - incoming_bytes
        if not reserve.present and free_after - plan.keep_free_bytes >= reserve.nbytes:
            if reserve.ensure():
                free_after -= reserve.nbytes
        self._watch(free_after)
        keep_free = plan.keep_free_bytes + (0 if reserve.present else reserve.nbytes)
        total = int(
            ix.db.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM segments WHERE evicted = 0"
            ).fetchone()[0]
        )
        over_quota = total + incoming_bytes > self._max_bytes
        if not over_quota and free_after >= keep_free:
            return
        if free_after + incoming_bytes < plan.headroom_bytes and reserve.release():
            # so little is free that the eviction's own bookkeeping might not fit
            free_after += reserve.nbytes
            keep_free += reserve.nbytes
        stored = [
            StoredSegment(seq, nbytes, bool(uploaded))
            for seq, nbytes, uploaded in ix.db.execute(
                "SELECT s.seq, s.bytes,"
                " ?1 > 0 AND (SELECT COUNT(*) FROM uploads u WHERE u.seq = s.seq) >= ?1"
                " FROM segments s WHERE s.evicted = 0 ORDER BY s.seq",
                (self._uplinks,),
            )
        ]
        victims = choose_evictions(stored, self._max_bytes - incoming_bytes, free_after, keep_free)
        if victims:
            self._evict(ix, victims, "the spool quota" if over_quota else "a full disk")
        if not reserve.present:
            free_after = self._disk_free(self._folder) - incoming_bytes
            if free_after - plan.keep_free_bytes >= reserve.nbytes:
                reserve.ensure()

    def _evict(self, ix: SpoolIndex, victims: list[StoredSegment], forced_by: str) -> None:
        """The rows marked evicted and the `lost` rows of segments no uplink had, in one
        transaction; then the files go; then the losses are reported."""
        if self._uplinks:
            reason = f"evicted for room ({forced_by}) before every uplink had it"
        else:
            reason = f"evicted for room ({forced_by}); no uplink is configured: the only copy"
        lost = [v for v in victims if not v.uploaded]

        def book(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE segments SET evicted = 1 WHERE seq = ?", [(v.seq,) for v in victims]
            )
            for victim in lost:
                ix.insert_loss(db, victim.seq, reason, CAUSE_EVICTED)

        ix.commit(book)
        for victim in victims:
            (self._segment_dir / segment_file_name(victim.seq)).unlink(missing_ok=True)
        fsync_directory(self._segment_dir)
        for victim in lost:
            ix.report_loss(victim.seq, victim.nbytes, reason)

    def _watch(self, free_after: int) -> None:
        """One `disk_low` event when the free space kept (the floor, or the headroom for the
        index) starts forcing evictions; re-armed once there is clearly room again
        (hysteresis, so it does not flap)."""
        keep_free = self.plan.keep_free_bytes
        if free_after < keep_free and not self._disk_low:
            self._disk_low = True
            self._sink.emit(
                Event(
                    "disk_low",
                    "warning",
                    f"disk nearly full: {free_after / 1e6:.1f} MB free, floor "
                    f"{keep_free / 1e6:.1f} MB; the oldest segments are deleted (uploaded "
                    "ones first)",
                    {"free_bytes": free_after, "min_free_bytes": keep_free},
                )
            )
        elif free_after > keep_free * DISK_OK_FACTOR and self._disk_low:
            self._disk_low = False
