"""Camera health on real photographs (skimage.data) made into short noisy videos with people
walking and the light changing; every fault derived from them. Simulated time throughout."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.capture.privacy import PrivacyConfig, PrivacyMasker
from agent.health.camera import CONDITIONS, FPS_WINDOW_S, CameraHealth, Debouncer
from agent.health.config import HealthConfig
from agent.tools.health_cli import add_parser
from tests.peers.video import (
    CONDITION_OF,
    FAULT_KINDS,
    PHOTOS,
    RAMP_S,
    Fault,
    SceneVideo,
    TimedSink,
)

CFG = HealthConfig()
SLACK_S = 2.0  # the acceptance criterion: detected within debounce + 2 s
FAULT_AT_S = 14.0  # after the 10 s in which the station's baseline is learned


class Video(Protocol):
    def frame(self, t_s: float) -> np.ndarray: ...


def drive(
    video: Video,
    health: CameraHealth,
    sink: TimedSink,
    start_s: float,
    end_s: float,
    fps: float,
) -> None:
    n = round((end_s - start_s) * fps)
    for i in range(n):
        now_s = start_s + i / fps
        sink.now_s = now_s
        health.observe(now_s, video.frame(now_s))


def make(
    fps: float, cfg: HealthConfig = CFG, reference: np.ndarray | None = None
) -> tuple[CameraHealth, TimedSink]:
    sink = TimedSink()
    return CameraHealth(cfg, sink, reference=reference, expected_fps=fps), sink


CLEAN_CASES = [(photo, 320, 240, 10.0) for photo in PHOTOS] + [
    ("camera", 426, 240, 10.0),
    ("coffee", 1920, 1080, 4.0),
]


@pytest.mark.parametrize(("photo", "width", "height", "fps"), CLEAN_CASES)
def test_clean_minute_raises_nothing(photo: str, width: int, height: int, fps: float) -> None:
    video = SceneVideo(photo, width, height, seed=1)
    health, sink = make(fps)
    drive(video, health, sink, 0.0, 60.0, fps)
    assert sink.raised() == []
    snap = health.snapshot()
    assert snap["reference"] == "auto"  # the analysis did run: baseline and reference learned
    assert snap["baseline_sharpness"] > 0
    assert snap["metrics"]["frame_diff_levels"] > CFG.frozen.max_diff_levels
    assert snap["metrics"]["fps"] == pytest.approx(fps, rel=0.05)


def test_still_empty_room_with_a_quiet_sensor_is_not_frozen() -> None:
    """Nobody in the room, steady light, a camera with little noise: live, not frozen."""
    video = SceneVideo("chelsea", 320, 240, seed=1, people=0, noise_sigma=0.7, light_swing=0.0)
    health, sink = make(10.0)
    drive(video, health, sink, 0.0, 30.0, 10.0)
    assert sink.raised() == []
    assert health.snapshot()["metrics"]["frame_diff_levels"] > CFG.frozen.max_diff_levels


def test_snapshot_and_event_fields() -> None:
    fault = Fault("fade_black", FAULT_AT_S, 40.0, ramp_s=1.0)
    video = SceneVideo("rocket", 320, 240, [fault], seed=2)
    health, sink = make(10.0)
    drive(video, health, sink, 0.0, 20.0, 10.0)
    snap = health.snapshot()
    assert snap["flags"] == ["dark"] == health.flags()
    assert snap["metrics"]["dark_fraction"] >= CFG.dark.fraction
    assert json.loads(json.dumps(snap)) == snap  # goes into the heartbeat as is
    (_, event), *_ = [(t, e) for t, e in sink.events if e.kind == "health_raised"]
    assert event.severity == "error" and "dark" in event.message
    assert set(event.fields) >= {"condition", "value", "threshold", "held_s"}
    assert event.fields["held_s"] >= CFG.dark.raise_after_s


FAULT_CASES = [(kind, "astronaut", 320, 240, 10.0) for kind in FAULT_KINDS]
FAULT_CASES += [(kind, "chelsea", 426, 240, 10.0) for kind in FAULT_KINDS]
FAULT_CASES += [(kind, "coffee", 1920, 1080, 4.0) for kind in FAULT_KINDS]
FAULT_CASES += [(kind, "rocket", 320, 240, 10.0) for kind in ("occluder", "blur", "frozen")]


@pytest.mark.parametrize(("kind", "photo", "width", "height", "fps"), FAULT_CASES)
def test_fault_raised_in_time_and_cleared(
    kind: str, photo: str, width: int, height: int, fps: float
) -> None:
    condition = CONDITION_OF[kind]
    section = getattr(CFG, condition)
    fault = Fault(kind, FAULT_AT_S, 0.0, ramp_s=RAMP_S.get(kind, 0.0))
    fault = Fault(kind, FAULT_AT_S, fault.full_s + section.raise_after_s + 6.0, fault.ramp_s)
    video = SceneVideo(photo, width, height, faults=[fault], seed=2)
    health, sink = make(fps)

    drive(video, health, sink, 0.0, fault.end_s, fps)
    assert [c for _, c in sink.raised()] == [condition]
    raised_at_s = sink.raised()[0][0]
    assert fault.full_s <= raised_at_s + 0.5 <= fault.full_s + section.raise_after_s + SLACK_S
    assert health.flags() == [condition]
    assert sink.cleared() == []  # no flapping while the fault lasts

    drive(video, health, sink, fault.end_s, fault.end_s + section.clear_after_s + 4.0, fps)
    assert [c for _, c in sink.cleared()] == [condition]
    cleared_at_s = sink.cleared()[0][0]
    assert fault.end_s < cleared_at_s <= fault.end_s + section.clear_after_s + SLACK_S
    assert health.flags() == []
    raised_event = next(e for _, e in sink.events if e.kind == "health_raised")
    assert raised_event.fields["threshold"] == pytest.approx(_threshold(condition), abs=1e-3)
    assert raised_event.fields["value"] is not None


def _threshold(condition: str) -> float:
    section = getattr(CFG, condition)
    for name in ("fraction", "ratio", "max_diff_levels"):
        if hasattr(section, name):
            return float(getattr(section, name))
    raise AssertionError(condition)


def _left_mask(width: int, height: int, share: float) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[:, : int(width * share)] = True
    return mask


@dataclass
class _BlackMasked:
    """Masked pixels filled with black: the worst case for a dark/covered detector."""

    video: Video
    mask: np.ndarray

    def frame(self, t_s: float) -> np.ndarray:
        image = self.video.frame(t_s)
        image[self.mask] = 0
        return image


@dataclass
class _PrivacyMasked:
    """The agent's own privacy masker, applied right after capture as in the pipeline."""

    video: Video
    masker: PrivacyMasker

    def frame(self, t_s: float) -> np.ndarray:
        image = self.video.frame(t_s)
        self.masker.apply(image)
        return image


@pytest.mark.parametrize("fill", ["solid", "pixelate"])
def test_large_privacy_mask_raises_nothing(fill: str) -> None:
    width, height, fps = 320, 240, 10.0
    cfg = PrivacyConfig.model_validate({"masks": [{"rect": [0, 0, 0.85, 1]}], "fill": fill})
    masker = PrivacyMasker(cfg)
    video = _PrivacyMasked(SceneVideo("camera", width, height, seed=3), masker)
    health, sink = make(fps)
    health.set_ignore_mask(masker.mask_for(width * 4, height * 4))  # any resolution
    drive(video, health, sink, 0.0, 40.0, fps)
    assert sink.raised() == []
    assert health.snapshot()["reference"] == "auto"


def test_large_black_mask_is_not_dark_or_covered() -> None:
    width, height, fps = 320, 240, 10.0
    video = _BlackMasked(SceneVideo("astronaut", width, height, seed=3), _left_mask(320, 240, 0.8))
    health, sink = make(fps)
    health.set_ignore_mask(_left_mask(1280, 960, 0.8))  # any resolution: scaled down inside
    drive(video, health, sink, 0.0, 40.0, fps)
    assert sink.raised() == []
    assert health.snapshot()["metrics"]["dark_fraction"] < 0.5

    unaware, unaware_sink = make(fps)  # the same frames without the mask: black reads as covered
    drive(video, unaware, unaware_sink, 0.0, 40.0, fps)
    assert {c for _, c in unaware_sink.raised()} & {"dark", "covered"}


@pytest.mark.parametrize("kind", ["fade_black", "occluder", "moved"])
def test_faults_behind_a_privacy_mask_are_still_found(kind: str) -> None:
    width, height, fps = 320, 240, 10.0
    fault = Fault(kind, FAULT_AT_S, FAULT_AT_S + 16.0, ramp_s=RAMP_S.get(kind, 0.0))
    scene = SceneVideo("coffee", width, height, [fault], seed=4)
    video = _BlackMasked(scene, _left_mask(width, height, 0.6))
    health, sink = make(fps)
    health.set_ignore_mask(_left_mask(width, height, 0.6))
    drive(video, health, sink, 0.0, fault.end_s, fps)
    assert [c for _, c in sink.raised()] == [CONDITION_OF[kind]]


def test_no_frames_then_recovered() -> None:
    video = SceneVideo("coffee", 320, 240, seed=5)
    health, sink = make(10.0)
    drive(video, health, sink, 0.0, 5.0, 10.0)
    last_frame_s = 4.9
    for i in range(1, 20):  # the camera stops: only the heartbeat polls
        sink.now_s = last_frame_s + 0.5 * i
        health.poll(sink.now_s)
    cfg = CFG.no_frames
    assert [c for _, c in sink.raised()] == ["no_frames"]
    raised_at_s = sink.raised()[0][0]
    assert raised_at_s <= last_frame_s + cfg.gap_s + cfg.raise_after_s + SLACK_S
    drive(video, health, sink, 15.0, 20.0, 10.0)
    assert [c for _, c in sink.cleared()] == ["no_frames"]
    assert sink.cleared()[0][0] <= 15.0 + cfg.clear_after_s + SLACK_S


def test_source_reported_lost_raises_no_frames() -> None:
    health, sink = make(10.0)
    sink.now_s = 1.0
    health.note_source_state(1.0, delivering=False)
    for i in range(1, 10):
        sink.now_s = 1.0 + 0.5 * i
        health.poll(sink.now_s)
    assert [c for _, c in sink.raised()] == ["no_frames"]
    assert sink.raised()[0][0] <= 1.0 + CFG.no_frames.raise_after_s + 0.5


def test_low_frame_rate() -> None:
    video = SceneVideo("chelsea", 320, 240, seed=6)
    health, sink = make(30.0)
    drive(video, health, sink, 0.0, 10.0, 30.0)
    drive(video, health, sink, 10.0, 40.0, 8.0)  # a USB camera falling back to raw YUYV
    assert [c for _, c in sink.raised()] == ["low_fps"]
    assert sink.raised()[0][0] <= 10.0 + FPS_WINDOW_S + CFG.low_fps.raise_after_s + SLACK_S
    drive(video, health, sink, 40.0, 70.0, 30.0)
    assert [c for _, c in sink.cleared()] == ["low_fps"]


def test_frames_repeated_by_the_encoder_are_not_delivered_frames() -> None:
    """The encoder keeps a constant rate by repeating the last frame object: that is a stalled
    camera (no frames), not a frozen picture."""
    video = SceneVideo("rocket", 320, 240, seed=7)
    health, sink = make(10.0)
    drive(video, health, sink, 0.0, 12.0, 10.0)
    stuck = video.frame(12.0)
    for i in range(100):
        sink.now_s = 12.0 + i / 10.0
        health.observe(sink.now_s, stuck)
    assert [c for _, c in sink.raised()] == ["no_frames"]


def test_configured_reference_catches_a_camera_already_moved_and_blurred() -> None:
    width, height, fps = 320, 240, 10.0
    reference = SceneVideo("astronaut", width, height, seed=8).frame(0.0)
    moved = SceneVideo("astronaut", width, height, [Fault("moved", 0.0, 1e9)], seed=8)
    health, sink = make(fps, reference=reference)
    drive(moved, health, sink, 0.0, CFG.moved.raise_after_s + 4.0, fps)
    assert [c for _, c in sink.raised()] == ["moved"]
    assert sink.raised()[0][0] <= CFG.moved.raise_after_s + SLACK_S
    assert health.snapshot()["reference"] == "configured"

    health.set_reference(moved.frame(20.0))  # the technician accepts the new view
    drive(moved, health, sink, 20.0, 20.0 + CFG.moved.clear_after_s + 3.0, fps)
    assert [c for _, c in sink.cleared()] == ["moved"]

    blurred = SceneVideo("astronaut", width, height, [Fault("blur", 0.0, 1e9)], seed=8)
    health, sink = make(fps, reference=reference)
    drive(blurred, health, sink, 0.0, CFG.blurred.raise_after_s + 3.0, fps)
    assert [c for _, c in sink.raised()] == ["blurred"]


def test_disabled_does_nothing() -> None:
    health, sink = make(10.0, cfg=HealthConfig(enabled=False))
    video = SceneVideo("camera", 320, 240, [Fault("fade_black", 0.0, 1e9)])
    drive(video, health, sink, 0.0, 10.0, 10.0)
    health.poll(30.0)
    assert sink.events == [] and health.flags() == []


def test_config_section_validates() -> None:
    cfg = HealthConfig.model_validate(
        {"analysis_hz": 1, "dark": {"raise_after_s": 5}, "reference_image": "ref.png"}
    )
    assert cfg.dark.raise_after_s == 5 and cfg.dark.fraction == CFG.dark.fraction
    assert cfg.reference_image == Path("ref.png")
    with pytest.raises(ValidationError):
        HealthConfig.model_validate({"dark": {"fractoin": 0.9}})
    with pytest.raises(ValidationError):
        HealthConfig.model_validate({"analysis_hz": 50})
    assert set(CONDITIONS) <= set(HealthConfig.model_fields)


@given(
    raise_after_s=st.floats(0.0, 10.0),
    raws=st.lists(st.one_of(st.none(), st.booleans()), min_size=1, max_size=60),
)
def test_debouncer_never_raises_early(raise_after_s: float, raws: list[bool | None]) -> None:
    """Raised only after raw True held raise_after_s without a break, at 0.5 s steps."""
    deb = Debouncer(raise_after_s, clear_after_s=1.0)
    true_since_s: float | None = None
    for i, raw in enumerate(raws):
        now_s = 0.5 * i
        was_active = deb.active
        true_since_s = (true_since_s if true_since_s is not None else now_s) if raw else None
        deb.update(now_s, raw)
        if deb.active and not was_active:
            assert true_since_s is not None and now_s - true_since_s >= raise_after_s


# ---- the CLI over a real video file ---------------------------------------------------------


def _write_video(
    path: Path, photo: str, dark_from_s: float, dark_to_s: float, end_s: float
) -> None:
    fps = 10
    video = SceneVideo(
        photo, 320, 240, [Fault("fade_black", dark_from_s, dark_to_s, ramp_s=0.5)], seed=9
    )
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for i in range(int(end_s * fps)):
            frame = av.VideoFrame.from_ndarray(video.frame(i / fps), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="station-agent")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(scope="module")
def dark_stretch_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("healthcli") / "dark.mp4"
    _write_video(path, "coffee", 12.0, 18.0, 24.0)
    return path


def test_cli_finds_the_dark_stretch_json(
    dark_stretch_video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(["health", str(dark_stretch_video), "--json"]) == 1  # a finding: exit 1
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 240
    assert [c["condition"] for c in report["conditions"]] == ["dark"]
    dark = report["conditions"][0]
    assert 12.0 <= dark["start_s"] <= 13.5  # the fade reaches black at 12.5 s
    assert dark["end_s"] is not None and 17.5 <= dark["end_s"] <= 19.0
    assert dark["threshold"] == CFG.dark.fraction


def test_cli_table_and_config_thresholds(
    dark_stretch_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[health.dark]\nraise_after_s = 8\n")  # longer than the 6 s dark stretch
    assert _cli(["health", str(dark_stretch_video), "--config", str(config)]) == 0
    assert "no problem found" in capsys.readouterr().out
    assert _cli(["health", str(dark_stretch_video)]) == 1
    out = capsys.readouterr().out
    assert "dark" in out and "picture dark" in out


def test_cli_bad_inputs_exit_2(
    tmp_path: Path, dark_stretch_video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    for argv in (
        ["health", str(tmp_path / "missing.mp4")],
        ["health", str(junk)],
        ["health", str(dark_stretch_video), "--reference", str(junk)],
    ):
        assert _cli(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("station-agent health:")
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[health]\nanalysis_hz = 100\n")
    assert _cli(["health", str(dark_stretch_video), "--config", str(bad_config)]) == 2
    assert "analysis_hz" in capsys.readouterr().err


def test_cli_reference_image_is_used(
    dark_stretch_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = tmp_path / "ref.png"
    cv2.imwrite(str(ref), SceneVideo("coffee", 320, 240, seed=9).frame(0.0))
    assert _cli(["health", str(dark_stretch_video), "--reference", str(ref), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["reference"] == "configured"
    assert [c["condition"] for c in report["conditions"]] == ["dark"]


def test_real_entry_point(dark_stretch_video: Path, tmp_path: Path) -> None:
    """`station-agent health` through the agent's own CLI, as a technician runs it."""
    cmd = [sys.executable, "-m", "agent", "health", str(dark_stretch_video), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr  # it found the dark stretch
    assert [c["condition"] for c in json.loads(done.stdout)["conditions"]] == ["dark"]
    missing = [sys.executable, "-m", "agent", "health", str(tmp_path / "nope.mp4")]
    done = subprocess.run(missing, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "nope.mp4" in done.stderr


def test_cli_take_reference(
    dark_stretch_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reference.png"
    assert _cli(["health", str(dark_stretch_video), "--take-reference", str(out)]) == 0
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape == (240, 320, 3)
    assert "reference picture saved" in capsys.readouterr().out


def test_cli_take_reference_is_masked_and_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: the reference picture shows the room; it is masked like the stream and 0600,
    with the masks of --config or else of the config.toml beside it."""
    from agent.capture.privacy import SOLID_FILL_LEVEL

    masked = "[privacy]\nmasks = [{ rect = [0.0, 0.0, 0.5, 0.5] }]\n"
    masked += "[capture]\nwidth = 320\nheight = 240\n"
    config = tmp_path / "station.toml"
    config.write_text(masked)
    out = tmp_path / "given" / "reference.png"
    out.parent.mkdir()
    assert _cli(["health", "test:", "--config", str(config), "--take-reference", str(out)]) == 0
    beside = tmp_path / "beside" / "reference.png"
    beside.parent.mkdir()
    (beside.parent / "config.toml").write_text(masked)
    assert _cli(["health", "test:", "--take-reference", str(beside)]) == 0
    assert "1 privacy mask(s) applied" in capsys.readouterr().out
    for path in (out, beside):
        picture = cv2.imread(str(path))
        assert picture is not None and picture.shape == (240, 320, 3)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert (picture[8:112, 8:152] == SOLID_FILL_LEVEL).all(), "the booth is visible"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_the_service_rewrites_its_reference_in_a_folder_it_cannot_write() -> None:
    """retake_reference under the unit: the config folder is root's and only the picture is
    granted to the service (ReadWritePaths=), so it is rewritten in place, still 0600."""
    with tempfile.TemporaryDirectory() as top:  # pytest's tmp_path is root-only (0700)
        Path(top).chmod(0o755)
        _rewrite_as_nobody(Path(top) / "etc")


def _rewrite_as_nobody(folder: Path) -> None:
    folder.mkdir(mode=0o755)
    picture = folder / "reference.png"
    picture.write_bytes(b"old")
    nobody = 65534
    os.chown(picture, nobody, nobody)
    picture.chmod(0o644)
    script = (
        "import numpy as np, sys; from pathlib import Path; "
        "from agent.health.camera import write_reference; "
        "write_reference(Path(sys.argv[1]), np.full((24, 32, 3), 77, np.uint8))"
    )
    done = subprocess.run(
        ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
         sys.executable, "-c", script, str(picture)],
        capture_output=True, text=True, timeout=60, check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(picture.stat().st_mode) == 0o600 and picture.stat().st_uid == nobody
    image = cv2.imread(str(picture))
    assert image is not None and image.shape == (24, 32, 3) and (image == 77).all()
    assert sorted(p.name for p in folder.iterdir()) == ["reference.png"]  # no temporary left
