"""H.264 encoding with PyAV: libx264 by default, hardware encoders when asked and working.

One `VideoEncoder` per rung. Timestamps are in 1/90000 s (the MPEG-TS clock) so they stay
continuous across rung changes. Every rung change opens a new context at a segment boundary
(where an IDR starts anyway, so the stream stays seamless): FFmpeg's libx264 wrapper can
reconfigure the bitrate of an open encoder, but PyAV exposes rc_max_rate (the VBV cap we rely
on to keep segments within the link) only before opening. Opening costs ~2 ms at 1080p.
"""

from __future__ import annotations

import logging
from fractions import Fraction

import av
import numpy as np

from agent.adapt.ladder import Rung

log = logging.getLogger(__name__)

PTS_HZ = 90_000
TIME_BASE = Fraction(1, PTS_HZ)
HW_ENCODERS_AUTO_ORDER = ("h264_v4l2m2m", "h264_vaapi", "h264_qsv", "h264_nvenc")
# VBV buffer of one second of the rung's bitrate: caps each segment's size near the target
# while leaving x264 room for the keyframe at every segment start (libx264 guidance, zerolatency).
VBV_BUFFER_S = 1.0


class EncoderError(Exception):
    """No H.264 encoder could be opened."""


class VideoEncoder:
    def __init__(self, codec_name: str, rung: Rung, preset: str, threads: int, gop: int) -> None:
        ctx = av.CodecContext.create(codec_name, "w")
        if not isinstance(ctx, av.VideoCodecContext):
            raise ValueError(f"{codec_name} is not a video encoder")
        ctx.width, ctx.height = rung.width, rung.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = TIME_BASE
        ctx.framerate = Fraction(rung.fps, 1)
        ctx.bit_rate = rung.bitrate_bps
        ctx.gop_size = gop
        ctx.max_b_frames = 0
        if threads:
            ctx.thread_count = threads
        options = {
            "maxrate": str(rung.bitrate_bps),
            "bufsize": str(int(rung.bitrate_bps * VBV_BUFFER_S)),
        }
        if codec_name == "libx264":
            # forced-idr: our keyframe request at a segment boundary becomes an IDR, so each
            # segment decodes on its own; scenecut=0 keeps x264 from adding keyframes of its own.
            options |= {
                "preset": preset,
                "tune": "zerolatency",
                "x264-params": f"keyint={gop * 2}:min-keyint={gop}:scenecut=0:forced-idr=1",
            }
        ctx.options = options
        ctx.open()
        self._ctx = ctx
        self.name = codec_name
        self.rung = rung
        # libx264 with tune=zerolatency returns each frame's packet at once; hardware encoders
        # (QSV async depth, NVENC surfaces, V4L2 M2M buffers) hold a few frames back
        self.has_latency = codec_name != "libx264"
        # ...and may read a frame's memory after encode() returned (libx264 has copied it)
        self.keeps_frames = self.has_latency

    def encode(self, i420: np.ndarray, pts: int, keyframe: bool) -> list[av.Packet]:
        """Encode an I420 frame (agent/capture/frames.py). The frame wraps the array without a
        copy; libx264 copies the picture into its own buffers before this returns, so the
        array may change afterwards. Other encoders may keep it (`keeps_frames`)."""
        frame = av.VideoFrame.from_numpy_buffer(i420, format="yuv420p")
        frame.pts = pts
        frame.time_base = TIME_BASE
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        return self._ctx.encode(frame)

    def flush(self) -> list[av.Packet]:
        return self._ctx.encode(None)

    @property
    def extradata(self) -> bytes:
        """The codec's global header (SPS/PPS) when it keeps one apart from the packets; libx264
        as opened here has none (its SPS/PPS travel in-band before every IDR)."""
        return bytes(self._ctx.extradata or b"")


def open_video_encoder(
    preference: str, rung: Rung, preset: str, threads: int, gop: int
) -> VideoEncoder:
    """libx264, or the hardware encoder asked for ("auto" tries each), falling back to libx264."""
    if preference == "libx264":
        candidates: tuple[str, ...] = ("libx264",)
    elif preference == "auto":
        candidates = (*HW_ENCODERS_AUTO_ORDER, "libx264")
    else:
        candidates = (preference, "libx264")
    failures = []
    for name in candidates:
        if name not in av.codecs_available:
            failures.append(f"{name}: not in this PyAV build")
            continue
        try:
            encoder = VideoEncoder(name, rung, preset, threads, gop)
            if name != "libx264":
                _probe(encoder, rung)  # hardware contexts may open yet fail on the first frame
                encoder = VideoEncoder(name, rung, preset, threads, gop)
            return encoder
        except (av.FFmpegError, ValueError, OSError) as exc:
            failures.append(f"{name}: {exc}")
            log.info("H.264 encoder %s unavailable: %s", name, exc)
    raise EncoderError("no H.264 encoder could be opened: " + "; ".join(failures))


def _probe(encoder: VideoEncoder, rung: Rung) -> None:
    blank = np.full((rung.height * 3 // 2, rung.width), 128, np.uint8)
    encoder.encode(blank, 0, keyframe=True)
    encoder.flush()
