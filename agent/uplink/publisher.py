"""What describes the uploaded segments upstream: the live playlist, the recording's archive
playlist and the station index, each with its own timer, so a refused playlist never holds a
segment back. Runs in the uploader's thread; every request goes through the uploader's
`Requests` (the watchdog sees it busy).

    {station}/live.m3u8                  live edge of this recording ("<recording>/<seq>.ts")
    {station}/<recording>/archive.m3u8   every segment of the recording; ENDLIST at a clean stop
    {station}/<recording>/archive-NNNN.m3u8  part NNNN of it (uplink/archive.py)
    {station}/recordings.json            every recording of the station (uplink/recordings.py)

The archive documents are rewritten on the archive timer when their byte budget allows
(`ArchivePlan`): a long day's archive is not re-sent in full every 30 s.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from agent.core.backoff import full_jitter_s
from agent.core.clock import utc_iso
from agent.core.events import Event, EventSink
from agent.spool.store import SegmentRecord, Spool
from agent.uplink.archive import WHOLE, ArchivePlan, part_name, part_of, part_range
from agent.uplink.config import HttpUplinkConfig
from agent.uplink.playlists import Entry, render_archive, render_live
from agent.uplink.recordings import (
    INDEX_NAME,
    RecordingEntry,
    StationRecordings,
    parse_index,
    render_index,
)
from agent.uplink.schedule import BACKOFF_BASE_S
from agent.uplink.targets import RejectedUploadError, RetryableUploadError

log = logging.getLogger(__name__)

M3U8_TYPE = "application/vnd.apple.mpegurl"
JSON_TYPE = "application/json"
LIVE_NAME = "live.m3u8"
ARCHIVE_NAME = "archive.m3u8"
# The index is a GET and a PUT of a few kB: at most this often even when the archive is
# rewritten after every segment (archive_interval_s = 0); other boxes judge liveness from it.
MIN_INDEX_INTERVAL_S = 2.0
MACHINE_ID = Path("/etc/machine-id")
BOX_ID_HEX = 12  # 48 bits: tells boxes of one station apart, says nothing about the machine


class Requests(Protocol):
    """The uploader's requests to the target (marked busy for the watchdog)."""

    def put(self, name: str, data: bytes, content_type: str) -> None: ...

    def get(self, name: str) -> bytes | None: ...


def read_box_id(spool_path: Path, machine_id: Path = MACHINE_ID) -> str:
    """This box, for the station index: a hash of /etc/machine-id (or the host name) and the
    spool's folder, so a second agent on one machine (a test bench) is a second box."""
    try:
        machine = machine_id.read_text().strip()
    except OSError:
        machine = socket.gethostname()
    digest = hashlib.sha256(f"{machine}\n{spool_path.resolve()}".encode()).hexdigest()
    return digest[:BOX_ID_HEX]


class _Timer:
    """When a document is due next: after `interval_s`, or after a jittered backoff when its
    last write failed (a refusal waits `rejected_s`); and its last error, until it works."""

    def __init__(self, interval_s: float, backoff_max_s: float, rejected_s: float) -> None:
        self.interval_s = interval_s
        self.error: str | None = None
        self._backoff_max_s = backoff_max_s
        self._rejected_s = rejected_s
        self.written_s = -1e18
        self.retry_at_s = 0.0
        self.failures = 0

    def due(self, now_s: float) -> bool:
        return now_s >= self.retry_at_s and now_s - self.written_s >= self.interval_s

    def ok(self, now_s: float) -> None:
        self.written_s, self.retry_at_s, self.failures, self.error = now_s, 0.0, 0, None

    def failed(self, now_s: float, exc: Exception, rng: random.Random) -> None:
        self.failures += 1
        self.error = str(exc)
        if isinstance(exc, RejectedUploadError):
            delay_s = self._rejected_s
        else:
            delay_s = full_jitter_s(self.failures, BACKOFF_BASE_S, self._backoff_max_s, rng)
        self.retry_at_s = now_s + delay_s


class Publisher:
    def __init__(
        self,
        cfg: HttpUplinkConfig,
        spool: Spool,
        uplink: str,
        requests: Requests,
        sink: EventSink,
        *,
        station_id: str,
        box_id: str,
        rng: random.Random,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._spool = spool
        self._uplink = uplink
        self._requests = requests
        self._sink = sink
        self.station_id = station_id
        self.box_id = box_id
        self._rng = rng
        self._wall = wall_clock
        backoff = (cfg.backoff_max_s, cfg.rejected_backoff_s)
        self._live = _Timer(0.0, *backoff)
        self._archive = _Timer(cfg.archive_interval_s, *backoff)
        self._index = _Timer(max(cfg.archive_interval_s, MIN_INDEX_INTERVAL_S), *backoff)
        self._live_stale = False  # a segment went up (or turned out lost) since live.m3u8
        self._plan = ArchivePlan()  # which archive documents are due (their byte budgets)
        self._recordings: StationRecordings | None = None  # once the spool is open
        self._kept_bad: set[str] = set()  # SHA-256 of malformed indexes already kept aside
        self._last_words: dict[str, bytes] = {}  # archive documents written at stop

    @property
    def playlist_error(self) -> str | None:
        """Why a playlist cannot be written, until it can."""
        return self._live.error or self._archive.error

    @property
    def index_error(self) -> str | None:
        """Why the station index cannot be written, until it can."""
        return self._index.error

    @property
    def recordings(self) -> StationRecordings:
        if self._recordings is None:
            recording_id = self._spool.recording_id
            self._recordings = StationRecordings(recording_id, self.box_id, self._index.interval_s)
        return self._recordings

    def segments_changed(self, seq: int, video_bytes: int = 0) -> None:
        """Segment `seq` went up (`video_bytes` of it), or was found lost: the playlists must
        say so."""
        self._live_stale = True
        self._plan.changed(seq, video_bytes)

    # -- the worker's round ---------------------------------------------------------------

    def update(self, now_s: float) -> None:
        """Write whatever is due; a failure is counted, reported and retried on its own timer."""
        if self._live_stale and self._live.due(now_s):
            self._write(self._live, now_s, self._write_live)
        if self._archive.due(now_s):
            due = self._plan.due(self._spool.next_seq() - 1)
            if due:
                self._write(self._archive, now_s, lambda: self._write_archive(due, ended=False))
        if self._index.due(now_s):
            self._write(self._index, now_s, lambda: self._write_index(now_s, ended=False))

    def close(self, deadline_s: float) -> None:
        """At stop: the live playlist, the archive with ENDLIST, the index saying `ended`;
        whatever the deadline leaves room for (a hanging one is abandoned by the uploader)."""
        steps: list[tuple[str, Callable[[], None]]] = [
            (LIVE_NAME, self._write_live),
            (ARCHIVE_NAME, lambda: self._write_archive(self._last_word(), ended=True)),
            (INDEX_NAME, lambda: self._write_index(time.monotonic(), ended=True, verify=True)),
            (ARCHIVE_NAME, self._verify_archive),
        ]
        for name, write in steps:
            if time.monotonic() >= deadline_s:
                log.warning("stop deadline reached: %s not written a last time", name)
                return
            try:
                write()
            except (RetryableUploadError, RejectedUploadError) as exc:
                log.warning("could not write %s at stop: %s", name, exc)

    def _write(self, timer: _Timer, now_s: float, write: Callable[[], None]) -> None:
        failing = self.playlist_error is not None
        try:
            write()
        except (RetryableUploadError, RejectedUploadError) as exc:
            timer.failed(now_s, exc, self._rng)
            self._failed(timer, exc, first=not failing)
            return
        timer.ok(now_s)
        if failing and self.playlist_error is None:
            log.info("playlists written again")

    def _failed(self, timer: _Timer, exc: Exception, first: bool) -> None:
        what = "the station index" if timer is self._index else "playlist"
        log.warning("%s upload failed (%d in a row): %s", what, timer.failures, exc)
        if timer is self._index:
            return  # retried on its timer; the heartbeat's uplink.index_error says why
        if first:
            self._sink.emit(
                Event(
                    "playlist_failed",
                    "error" if isinstance(exc, RejectedUploadError) else "warning",
                    f"the playlists cannot be updated ({exc}); segments still go up",
                    {"reason": str(exc)},
                )
            )

    # -- playlists ------------------------------------------------------------------------

    def _entries(self, records: Iterable[SegmentRecord], live: bool) -> Iterator[Entry]:
        for r in records:
            yield Entry(
                seq=r.seq,
                uri=r.object_name if live else r.file_name,
                duration_s=r.duration_s,
                started_utc=r.started_utc,
                discontinuity=r.discontinuity,
                available=self._uplink in r.uploaded_to,
            )

    def _write_live(self) -> None:
        edge = self._spool.newest_uploaded(self._uplink)
        if edge is None:
            return
        first = max(0, edge - self._cfg.live_window + 1)
        window = self._spool.segments(first, edge)
        breaks = self._spool.discontinuities_before(first)
        text = render_live(list(self._entries(window, live=True)), breaks)
        self._requests.put(LIVE_NAME, text.encode(), M3U8_TYPE)
        self._live_stale = False

    def _write_archive(self, documents: list[int], ended: bool) -> None:
        """Parts (keys >= 0) and the whole archive (WHOLE); a part ends (ENDLIST) once the
        recording has moved past it, everything at a clean stop (`ended`)."""
        newest = self._spool.next_seq() - 1
        for key in documents:
            if key == WHOLE:
                first, last, name, done = 0, newest, self.archive_name, ended
            else:
                first, last = part_range(key)
                name = f"{self._spool.recording_id}/{part_name(key)}"
                done = ended or newest > last
            records = self._spool.iter_segments(first, last)  # a page at a time
            head = next(records, None)
            if head is None:
                continue  # no segment in that range (yet)
            entries = self._entries(itertools.chain([head], records), live=False)
            body = render_archive(entries, done).encode()
            self._requests.put(name, body, M3U8_TYPE)
            self._plan.written(key, len(body), body.count(b"#EXTINF:"))  # one per entry
            if ended:
                self._last_words[name] = body

    def _verify_archive(self) -> None:
        """The last step at stop: read the ended archive documents back. A playlist PUT that
        timed out earlier may still have been held in the network and landed after the final
        one (an older archive, without ENDLIST, would then stay upstream for good): write it
        again. Last, so that such a request has had the longest time to land."""
        for name, body in self._last_words.items():
            if self._requests.get(name) != body:
                log.warning("%s upstream is not the one written at stop; writing it again", name)
                self._requests.put(name, body, M3U8_TYPE)

    def _last_word(self) -> list[int]:
        """At a clean stop: what changed, the newest part and the whole (ENDLIST)."""
        newest = self._spool.next_seq() - 1
        newest_part = [] if newest < 0 else [part_of(newest)]
        return sorted({*self._plan.dirty(), *newest_part, WHOLE}, key=lambda k: (k == WHOLE, k))

    @property
    def archive_name(self) -> str:
        return f"{self._spool.recording_id}/{ARCHIVE_NAME}"

    # -- the station index ----------------------------------------------------------------

    def _write_index(self, now_s: float, ended: bool, verify: bool = False) -> None:
        """GET, keep aside what cannot be read, merge, PUT. With `verify` (the last word at
        stop) read it back once: a concurrent writer may have put an older version of ours."""
        self._merge_from_server(now_s)
        own = self._own_entry(ended)
        body = render_index(self.station_id, utc_iso(self._wall()), self.recordings.document(own))
        self._requests.put(INDEX_NAME, body, JSON_TYPE)
        self._report_duplicates(now_s)
        if verify:
            raw = self._requests.get(INDEX_NAME)
            seen = parse_index(raw)[0].get(own.recording_id) if raw is not None else None
            if seen != own:
                log.info("the station index changed under us at stop; writing it again")
                self._merge_from_server(now_s)
                body = render_index(
                    self.station_id, utc_iso(self._wall()), self.recordings.document(own)
                )
                self._requests.put(INDEX_NAME, body, JSON_TYPE)

    def _merge_from_server(self, now_s: float) -> None:
        raw = self._requests.get(INDEX_NAME)
        if raw is None:
            return  # the first recording of this station
        fetched, problems = parse_index(raw)
        if problems:
            self._keep_aside(raw, problems)  # raises if it cannot: then no PUT either
        self.recordings.merge(fetched, now_s, self._wall())

    def _keep_aside(self, raw: bytes, problems: list[str]) -> None:
        """A malformed index is saved as recordings.json.bad-<UTC>-<box> before ours replaces
        it: entries this agent could not read are never lost, only moved aside."""
        digest = hashlib.sha256(raw).hexdigest()
        if digest in self._kept_bad:
            return
        stamp = utc_iso(self._wall()).replace("-", "").replace(":", "").split(".")[0]
        name = f"{INDEX_NAME}.bad-{stamp}Z-{self.box_id}"
        self._requests.put(name, raw, "application/octet-stream")
        self._kept_bad.add(digest)
        log.warning("the station index could not be read (%s); kept as %s", problems[0], name)
        self._sink.emit(
            Event(
                "station_index_malformed",
                "warning",
                f"{INDEX_NAME} on the server could not be read ({problems[0]}); the original is "
                f"kept as {name} and a fresh index is written",
                {"kept_as": name, "problems": problems[:5]},
            )
        )

    def _own_entry(self, ended: bool) -> RecordingEntry:
        next_seq = self._spool.next_seq()
        try:
            first = self._spool.get(0)
        except KeyError:
            first = None
        lost = self._spool.stats()["lost_segments"]
        return RecordingEntry(
            recording_id=self._spool.recording_id,
            box_id=self.box_id,
            started_utc=None if first is None else first.started_utc,
            updated_utc=utc_iso(self._wall()),
            ended=ended,
            revision=self.recordings.next_revision(),
            first_seq=None if first is None else first.seq,
            last_seq=next_seq - 1 if next_seq > 0 else None,
            segments=next_seq - (0 if first is None else first.seq),
            lost_segments=lost if isinstance(lost, int) else 0,
            archive=self.archive_name,
        )

    def _report_duplicates(self, now_s: float) -> None:
        for other in self.recordings.new_duplicates(now_s):
            log.error(
                "another box records station %s now: recording %s, box %s",
                self.station_id, other.recording_id, other.box_id,
            )  # fmt: skip
            self._sink.emit(
                Event(
                    "duplicate_station",
                    "error",
                    f"another box is recording station {self.station_id} at the same time "
                    f"(recording {other.recording_id}, box {other.box_id}); two boxes must not "
                    "share a station id: check the configuration of both",
                    {
                        "other_recording_id": other.recording_id,
                        "other_box_id": other.box_id,
                        "recording_id": self._spool.recording_id,
                        "box_id": self.box_id,
                    },
                )
            )
