"""Files and IP cameras through PyAV: the decoder's YUV as the pipeline's I420, no BGR."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from agent.capture.av_source import AvSource, camera_frame
from agent.capture.frames import frame_size, i420_from_av, planes, to_bgr
from agent.capture.sources import SourceError, open_capture_source, open_source
from tests.peers.nginx import Nginx
from tests.peers.ports import free_port

W, H, FPS, FRAMES = 160, 96, 10, 12


def gradient(k: int, width: int = W, height: int = H) -> np.ndarray:
    """I420 frame k: a luma ramp that moves with k, chroma that differs per plane."""
    out = np.empty((height * 3 // 2, width), np.uint8)
    y, u, v = planes(out)
    y[:] = (np.arange(width)[None, :] * 2 + np.arange(height)[:, None] + k * 8) % 200 + 20
    u[:] = 90 + k
    v[:] = 160 - k
    return out


def write_video(path: Path, pix_fmt: str, codec: str = "ffv1", width: int = W) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, H, pix_fmt
        for k in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(gradient(k, width), format="yuv420p")
            frame = frame.reformat(format=pix_fmt)
            frame.pts, frame.time_base = k, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


class Clock:
    """Hand-stepped time: the file source's pacing sleeps advance it."""

    def __init__(self) -> None:
        self.now_s = 100.0
        self.slept_s = 0.0

    def monotonic(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds
        self.slept_s += seconds


def test_a_4_2_0_file_arrives_as_it_was_decoded_and_loops(tmp_path: Path) -> None:
    path = tmp_path / "lossless.mkv"
    write_video(path, "yuv420p")
    clock = Clock()
    source = AvSource(f"file:{path}", W, H, 30, clock=clock.monotonic, sleep=clock.sleep)
    source.open()
    try:
        decoded = [source.read() for _ in range(FRAMES + 2)]
    finally:
        source.close()
    frames = [i420_from_av(d) for d in decoded if d is not None]
    assert len(frames) == len(decoded)
    for k, frame in enumerate(frames):
        assert frame.flags.c_contiguous
        assert frame_size(frame) == (W, H)
        assert np.array_equal(frame, gradient(k % FRAMES)), f"frame {k} changed on the way"
    # paced to the file's own rate (10 fps), not the configured 30
    assert clock.slept_s == pytest.approx((FRAMES + 1) / FPS)


def test_other_formats_are_converted_once_keeping_the_stream_size(tmp_path: Path) -> None:
    path = tmp_path / "camera.mkv"
    write_video(path, "yuvj422p", codec="mjpeg")  # a webcam's MJPEG: 4:2:2, full range
    source = AvSource(f"file:{path}", 2 * W, 2 * H, FPS)  # (a capture size the file ignores)
    source.open()
    try:
        decoded = source.read()
    finally:
        source.close()
    assert decoded is not None
    frame = i420_from_av(decoded)
    assert frame.shape == (H * 3 // 2, W)
    y, u, v = planes(frame)
    expected_y, _, _ = planes(gradient(0))
    assert np.abs(y.astype(int) - expected_y.astype(int)).mean() < 3  # video range again
    assert abs(int(u.mean()) - 90) <= 3 and abs(int(v.mean()) - 160) <= 3


def test_the_tools_get_bgr(tmp_path: Path) -> None:
    path = tmp_path / "lossless.mkv"
    write_video(path, "yuv420p")
    source = open_source(f"file:{path}", W, H, FPS)  # as `check` and `health` open it
    source.open()
    try:
        frame = source.read()
    finally:
        source.close()
    assert frame is not None and frame.shape == (H, W, 3)


def test_missing_file_and_unreachable_camera_are_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        AvSource(f"file:{tmp_path / 'gone.mkv'}", W, H, FPS).open()
    with pytest.raises(SourceError, match="cannot open"):
        AvSource(f"rtsp://user:pw@127.0.0.1:{free_port()}/stream", W, H, FPS).open()


def test_a_file_removed_while_playing_stops_at_its_end(tmp_path: Path) -> None:
    path = tmp_path / "lossless.mkv"
    write_video(path, "yuv420p")
    clock = Clock()
    source = AvSource(f"file:{path}", W, H, FPS, clock=clock.monotonic, sleep=clock.sleep)
    source.open()
    try:
        for _ in range(FRAMES):
            assert source.read() is not None
        path.unlink()
        with pytest.raises(SourceError, match="disappeared"):
            source.read()
    finally:
        source.close()


def test_a_network_stream_that_ends_is_a_source_error(tmp_path: Path, nginx: Nginx) -> None:
    """An HTTP camera stream (here a file nginx serves) is live: no looping, and its end
    means reconnect."""
    write_video(nginx.root / "cam.ts", "yuv420p", codec="libx264")
    source = AvSource(f"{nginx.url}/cam.ts", W, H, FPS)
    assert "cam.ts" in source.description
    source.open()
    try:
        got = 0
        with pytest.raises(SourceError, match="stopped delivering"):
            for _ in range(FRAMES + 5):
                assert source.read() is not None
                got += 1
        assert got == FRAMES
    finally:
        source.close()


def test_a_v4l2_cameras_own_frames_become_i420_without_bgr() -> None:
    """What OpenCV hands over with CONVERT_RGB off: MJPEG bytes in one row, or YUYV (h, w, 2);
    a backend that converted anyway gives BGR, taken as it is."""
    decoder = av.CodecContext.create("mjpeg", "r")
    assert isinstance(decoder, av.VideoCodecContext)
    expected_y, _, _ = planes(gradient(0))
    picture = to_bgr(gradient(0))
    ok, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    decoded = camera_frame(jpeg.reshape(1, -1), decoder)
    assert isinstance(decoded, av.VideoFrame)
    y, u, v = planes(i420_from_av(decoded))
    assert np.abs(y.astype(int) - expected_y.astype(int)).mean() < 3  # video range, as sent
    assert abs(int(u.mean()) - 90) <= 4 and abs(int(v.mean()) - 160) <= 4
    yuyv = av.VideoFrame.from_ndarray(gradient(0), format="yuv420p").reformat(format="yuyv422")
    raw = yuyv.to_ndarray()  # (h, w, 2), as V4L2 delivers YUYV
    from_yuyv = camera_frame(raw, decoder)
    assert isinstance(from_yuyv, av.VideoFrame)
    y, _, _ = planes(i420_from_av(from_yuyv))
    assert np.abs(y.astype(int) - expected_y.astype(int)).max() <= 1
    assert camera_frame(picture, decoder) is picture
    with pytest.raises(ValueError, match="neither JPEG nor YUYV"):
        camera_frame(np.zeros((1, 64), np.uint8), decoder)


def test_a_camera_that_is_not_there_is_a_source_error() -> None:
    with pytest.raises(SourceError):
        open_capture_source("v4l2:/dev/video-none", W, H, FPS).open()
