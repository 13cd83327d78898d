"""Cut encoded packets into MPEG-TS segments, each starting with an IDR frame.

Each segment is muxed into its own in-memory MPEG-TS container (a few MB at most), so the spool
writes it in one go and hashes exactly the bytes that go upstream.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import av

from agent.adapt.ladder import Rung
from agent.encode.encoder import PTS_HZ, TIME_BASE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedSegment:
    data: bytes
    started_utc: str  # wall clock of the first frame, for people and PROGRAM-DATE-TIME
    start_pts: int  # 1/90000 s
    duration_s: float
    rung: Rung
    frames: int
    encoder: str
    discontinuity: bool  # timestamps or format do not continue from the previous segment
    # monotonic time its first and last frame left the camera (glass-to-upstream); None when
    # unknown (a segment made elsewhere, e.g. in tests)
    captured_s: tuple[float, float] | None = None


class SegmentWriter:
    """begin() -> add(packets)... -> finish(end_pts) -> EncodedSegment."""

    def __init__(self) -> None:
        self._buffer: io.BytesIO | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.stream.Stream | None = None
        self._meta: tuple[str, int, Rung, str, bool] | None = None
        self._frames = 0
        self._captured_s: tuple[float, float] | None = None

    @property
    def open(self) -> bool:
        return self._container is not None

    def begin(
        self, rung: Rung, started_utc: str, start_pts: int, encoder: str, discontinuity: bool
    ) -> None:
        self._buffer = io.BytesIO()
        container = av.open(self._buffer, "w", format="mpegts")
        # a stream for packets already encoded: no codec context, so no idle second libx264
        # opened per segment (add_stream did: ~2.8 ms, 4 threads and ~6 MB at each boundary)
        stream = container.add_mux_stream(
            "h264", rate=rung.fps, width=rung.width, height=rung.height, time_base=TIME_BASE
        )
        self._container, self._stream = container, stream
        self._meta = (started_utc, start_pts, rung, encoder, discontinuity)
        self._frames = 0
        self._captured_s = None

    def captured(self, captured_s: float) -> None:
        """The picture of the frame just encoded left the camera at `captured_s` (monotonic)."""
        first = captured_s if self._captured_s is None else self._captured_s[0]
        self._captured_s = (first, captured_s)

    def add(self, packets: list[av.Packet]) -> None:
        if self._container is None or self._stream is None:
            raise RuntimeError("add() before begin()")
        for packet in packets:
            packet.stream = self._stream
            packet.time_base = TIME_BASE
            self._container.mux(packet)
            self._frames += 1

    def abandon(self) -> None:
        """Drop a segment that cannot be finished (after an encoder failure)."""
        if self._container is not None:
            try:
                self._container.close()
            except av.FFmpegError as exc:  # it is being thrown away; nothing more to lose
                log.debug("closing an abandoned segment failed: %s", exc)
        self._container = self._stream = self._buffer = None
        self._meta = None

    def finish(self, end_pts: int) -> EncodedSegment:
        if self._container is None or self._buffer is None or self._meta is None:
            raise RuntimeError("finish() before begin()")
        self._container.close()
        started_utc, start_pts, rung, encoder, discontinuity = self._meta
        segment = EncodedSegment(
            data=self._buffer.getvalue(),
            started_utc=started_utc,
            start_pts=start_pts,
            duration_s=(end_pts - start_pts) / PTS_HZ,
            rung=rung,
            frames=self._frames,
            encoder=encoder,
            discontinuity=discontinuity,
            captured_s=self._captured_s,
        )
        self._container = self._stream = self._buffer = None
        self._meta = None
        return segment
