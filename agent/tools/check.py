"""`station-agent check`: the technician's pre-flight list, one `CheckResult` per item.

Each check takes the config (and secrets) plus the few things it must measure, and returns a
result: PASS / WARN / FAIL (or SKIP when what it needs is missing), the measured value and, when
it is not a PASS, a fix in plain words. `run_checks` runs them in order, each in its own thread
with a time limit (`bounded`), so a hung camera or server never stops the list. The network
checks (upload, throughput, MQTT, clock) are in agent/check_net.py; agent/check_cli.py runs the
list in order and formats it.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from agent.adapt.ladder import Rung, build_ladder
from agent.capture.privacy import PrivacyMasker, coverage_share
from agent.capture.sources import SourceError, TestPatternSource, open_source
from agent.core.config import ConfigError, Secrets
from agent.core.durable import write_atomic
from agent.core.events import DiscardSink
from agent.core.redact import redact_data, redact_text, redact_url
from agent.core.timesync import kernel_max_error_us, synchronized, zone_name
from agent.encode.encoder import PTS_HZ, EncoderError, open_video_encoder
from agent.health.camera import CameraHealth, read_reference
from agent.service.config import AgentConfig, load_config, load_secrets, plaintext_credentials
from agent.tools.mask_cli import render_preview

log = logging.getLogger(__name__)

Result = Literal["PASS", "WARN", "FAIL", "SKIP"]
SERVICE = "station-agent"
SERVICE_USER = "station-agent"

CAMERA_FIRST_FRAME_S = 10.0  # a USB camera takes a few seconds to open and start streaming
CAMERA_SAMPLE_S = 2.0  # fps measured over this long after the first frame
CAMERA_KEEP_FRAMES = 8  # frames kept (spread over the sample) for the picture and encoder checks
LOW_FPS_SHARE = 0.8  # delivered fps below 80 % of the configured rate: WARN
ENCODE_VIDEO_S = 2.0  # seconds of video encoded at the top rung
ENCODE_MAX_WALL_S = 12.0  # stop early on a very slow box; the speed is measured on what was done
ENCODE_WARN_SPEED = 1.2  # under 1.2x real time the box has no headroom for overlay and uploads
ENCODE_FAIL_SPEED = 1.0
DEFAULT_HOURS = 14.0  # polls open ~07:00-20:00 plus the count
SECONDS_PER_HOUR = 3600
# Per-check wall-time limits (the checks bound their own I/O well inside these).
LIMITS_S = {
    "config": 10.0,
    "camera": CAMERA_FIRST_FRAME_S + CAMERA_SAMPLE_S + 8.0,
    "picture": 20.0,
    "encoder": ENCODE_MAX_WALL_S + 10.0,
    "upload": 30.0,
    "throughput": 40.0,
    "mqtt": 15.0,
    "clock": 15.0,
    "spool": 20.0,
    "service": 15.0,
}
NO_CAMERA_FIX = (
    "Check that the camera's USB cable is plugged in; `ls /dev/video*` should list it. "
    "Try another USB port, then run check again."
)
# a camera that is there but does not open or deliver: another program may hold it
CAMERA_BUSY_FIX = (
    f"{NO_CAMERA_FIX} Only one program can use the camera: if the service runs, run check "
    f"with --pause-service (or `sudo systemctl stop {SERVICE}` first)."
)
SNAPSHOT_MODE = 0o600  # the room as the camera sees it: the technician's eyes only


@dataclass(frozen=True)
class CheckResult:
    name: str
    result: Result
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "result": self.result,
            "detail": self.detail,
            "fix": self.fix,
            "data": self.data,
        }


def run_command(argv: list[str], timeout_s: float) -> tuple[int, str]:
    """(exit code, stdout) of a system command; 127 when it is not installed."""
    try:
        proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
            argv, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except FileNotFoundError:
        return 127, ""
    except subprocess.TimeoutExpired:
        return 124, ""
    return proc.returncode, proc.stdout.strip()


def systemd_running() -> bool:
    """sd_booted(): systemd is PID 1 when /run/systemd/system exists."""
    return Path("/run/systemd/system").is_dir()


@dataclass(frozen=True)
class System:
    """What the checks need from the machine; tests replace parts of it."""

    monotonic: Callable[[], float] = time.monotonic
    wall_s: Callable[[], float] = time.time
    run: Callable[[list[str], float], tuple[int, str]] = run_command
    systemd: Callable[[], bool] = systemd_running
    # the kernel's NTP state (adjtimex; None: cannot tell) and the time zone's name
    ntp_synchronized: Callable[[], bool | None] = lambda: synchronized(kernel_max_error_us())
    time_zone: Callable[[], str | None] = zone_name


@dataclass(frozen=True)
class Technician:
    """Who ran the command through sudo: their home folder gets the snapshot, theirs to
    copy with scp (the state folder is the service's, 0700)."""

    home: Path
    uid: int
    gid: int


def sudo_technician(
    environ: Mapping[str, str], home_of: Callable[[int], Path] | None = None
) -> Technician | None:
    """The user behind `sudo` (SUDO_UID/SUDO_GID, which sudo sets), or None."""
    uid, gid = environ.get("SUDO_UID", ""), environ.get("SUDO_GID", "")
    if not uid.isdigit() or not gid.isdigit() or int(uid) == 0:
        return None
    try:
        home = home_of(int(uid)) if home_of else Path(pwd.getpwuid(int(uid)).pw_dir)
    except KeyError:
        return None
    return Technician(home, int(uid), int(gid)) if home.is_dir() else None


@dataclass
class CameraSample:
    """What the camera check saw: a few frames spread over the sample, for later checks."""

    frames: list[np.ndarray]
    width: int
    height: int
    fps: float


@dataclass
class CheckOptions:
    config_path: Path
    snapshot_dir: Path | None = None
    hours: float = DEFAULT_HOURS
    pause_service: bool = False  # stop the service for the camera checks, start it at the end
    public_key: str | None = None  # the station key central staff hold (base64, PEM or a file)
    system: System = field(default_factory=System)
    technician: Technician | None = None  # run through sudo: the snapshot goes to their home


def top_rung(cfg: AgentConfig) -> Rung:
    cap = cfg.capture
    return build_ladder(cfg.adapt, cap.width, cap.height, cap.fps)[-1]


# --- config ----------------------------------------------------------------------------------


def check_config(path: Path) -> tuple[CheckResult, AgentConfig | None, Secrets | None]:
    try:
        cfg = load_config(path)
        secrets = load_secrets(cfg)
    except ConfigError as exc:
        fix = exc.fix or (
            f"Edit {path} (compare with /etc/station-agent/config.example.toml) or run "
            "`sudo station-agent provision` again."
        )
        if os.geteuid() != 0 and "Permission denied" in str(exc):  # the sudo is missing
            fix = "Run it with sudo: `sudo station-agent check ...` (the same options)."
        return CheckResult("config", "FAIL", str(exc), fix), None, None
    detail = f"{path} is valid (station {cfg.station_id})"
    data = {"station_id": cfg.station_id}
    insecure = plaintext_credentials(cfg)
    if insecure:
        detail += f"; allow_insecure: {'; '.join(insecure)}, readable on the network"
        fix = "Use https:// and mqtts:// URLs, then remove allow_insecure (test set-ups only)."
        return CheckResult("config", "WARN", detail, fix, data), cfg, secrets
    return CheckResult("config", "PASS", detail, data=data), cfg, secrets


def redact_result(result: CheckResult, secrets: list[str]) -> CheckResult:
    """The result with every URL credential and known secret value replaced by ***: check's
    output is pasted into chats and tickets."""
    return CheckResult(
        result.name,
        result.result,
        redact_text(result.detail, secrets),
        None if result.fix is None else redact_text(result.fix, secrets),
        redact_data(result.data, secrets),
    )


# --- camera ----------------------------------------------------------------------------------


def _camera_fix(source: str) -> str:
    if source.startswith("v4l2:"):
        return CAMERA_BUSY_FIX
    if source.startswith("file:"):
        return (
            f"The video file {source.removeprefix('file:')} does not exist: fix [capture] source."
        )
    if source.startswith(("rtsp", "http")):
        return (
            "Check the IP camera is powered and on the network (`ping` its address) and that the "
            "address, user and password in [capture] source are right."
        )
    return "Check [capture] source."


def check_camera(cfg: AgentConfig, system: System) -> tuple[CheckResult, CameraSample | None]:
    cap = cfg.capture
    shown = redact_url(cap.source)
    device = cap.source.removeprefix("v4l2:")
    if cap.source.startswith("v4l2:/") and not Path(device).exists():
        return CheckResult("camera", "FAIL", f"{device} does not exist", NO_CAMERA_FIX), None
    src = open_source(cap.source, cap.width, cap.height, cap.fps)
    times: list[float] = []
    kept: list[np.ndarray] = []
    last: np.ndarray | None = None
    every = max(1, round(cap.fps * CAMERA_SAMPLE_S / CAMERA_KEEP_FRAMES))
    try:
        src.open()
        started_s = system.monotonic()
        while True:
            now_s = system.monotonic()
            if not times and now_s - started_s > CAMERA_FIRST_FRAME_S:
                break
            if times and now_s - times[0] >= CAMERA_SAMPLE_S:
                break
            frame = src.read()
            if frame is None:
                continue
            times.append(system.monotonic())
            last = frame
            if (len(times) - 1) % every == 0 and len(kept) < CAMERA_KEEP_FRAMES:
                kept.append(frame)
    except SourceError as exc:
        return CheckResult("camera", "FAIL", f"{shown}: {exc}", _camera_fix(cap.source)), None
    finally:
        src.close()
    if last is None:
        detail = f"{shown}: no frame within {CAMERA_FIRST_FRAME_S:.0f} s"
        return CheckResult("camera", "FAIL", detail, _camera_fix(cap.source)), None
    if kept[-1] is not last:
        kept.append(last)  # the newest frame is the snapshot
    height, width = last.shape[:2]
    fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    sample = CameraSample(kept, width, height, fps)
    data = {"width": width, "height": height, "fps": round(fps, 2), "frames": len(times)}
    detail = f"{shown} delivers {width}x{height} at {fps:.1f} fps ({len(times)} frames)"
    if (width, height) != (cap.width, cap.height):
        fix = (
            f"The camera delivers {width}x{height}, not the configured {cap.width}x{cap.height}: "
            f"set [capture] width = {width} and height = {height}, or pick a size it offers "
            f"(`v4l2-ctl --list-formats-ext -d {device}`)."
        )
        return CheckResult("camera", "WARN", detail, fix, data), sample
    if fps < LOW_FPS_SHARE * cap.fps:
        fix = (
            f"The camera delivers {fps:.0f} fps instead of {cap.fps}: more light in the room "
            "helps (cameras slow down in the dark); plug it into a USB port of its own, or set "
            f"[capture] fps = {max(1, int(fps))}."
        )
        return CheckResult("camera", "WARN", detail, fix, data), sample
    return CheckResult("camera", "PASS", detail, data=data), sample


# --- picture -------------------------------------------------------------------------------


def default_snapshot_dir(cfg: AgentConfig) -> Path:
    parent = cfg.spool.path.parent
    if parent.is_dir() and os.access(parent, os.W_OK):
        return parent
    return Path(tempfile.gettempdir())


def check_picture(
    cfg: AgentConfig,
    sample: CameraSample | None,
    snapshot_dir: Path | None,
    system: System,
    technician: Technician | None = None,
) -> CheckResult:
    if sample is None:
        return CheckResult("picture", "SKIP", "skipped: no frames from the camera")
    masker = PrivacyMasker(cfg.privacy)
    frames = []
    for frame in sample.frames:
        masked = np.ascontiguousarray(frame).copy()
        masker.apply(masked)
        frames.append(masked)
    reference, ref_problem = None, None
    ref_path = cfg.health.reference_image
    if ref_path is not None:
        try:
            reference = read_reference(ref_path)
        except OSError as exc:
            ref_problem = str(exc)
    health_cfg = cfg.health.model_copy(update={"enabled": True})
    health = CameraHealth(health_cfg, DiscardSink("picture check"), reference=reference)
    health.set_ignore_mask(masker.mask_for(sample.width, sample.height))
    step_s = 1.0 / health_cfg.analysis_hz
    measured: list[dict[str, float | None]] = []
    for k, frame in enumerate(frames):
        health.observe(k * step_s, frame)
        measured.append(dict(health.snapshot()["metrics"]))
    metrics = best_of(measured)
    share = coverage_share(cfg.privacy)
    snapshot = _save_snapshot(cfg, sample.frames[-1], snapshot_dir, system, technician)
    count = len(cfg.privacy.masks)
    masks = f"{count} privacy mask(s) hide {share:.1%} of the frame" if count else "no masks"
    data: dict[str, Any] = {"snapshot": str(snapshot) if snapshot else None}
    data |= {"masked_share": round(share, 4), "metrics": metrics}
    shown = f"snapshot {snapshot}" if snapshot else "snapshot could not be saved"
    result, why, fix = judge_picture(cfg, metrics, ref_path, ref_problem)
    return CheckResult("picture", result, f"{why}; {masks}; {shown}", fix, data)


def best_of(measured: list[dict[str, float | None]]) -> dict[str, float | None]:
    """The newest figures, but the view comparison and the sharpness of the best frame: a
    person passing in front of the camera during the sample is not a moved or blurred camera."""
    metrics = dict(measured[-1]) if measured else {}
    for key, pick in (("reference_mismatch", min), ("sharpness_ratio", max)):
        values = [m[key] for m in measured if m.get(key) is not None]
        if values:
            metrics[key] = pick(v for v in values if v is not None)
    return metrics


def judge_picture(
    cfg: AgentConfig,
    metrics: dict[str, float | None],
    ref_path: Path | None,
    ref_problem: str | None,
) -> tuple[Result, str, str | None]:
    """Pure: the measured picture figures against the [health] thresholds."""
    h = cfg.health
    dark, bright = metrics.get("dark_fraction") or 0.0, metrics.get("bright_fraction") or 0.0
    covered = metrics.get("covered_fraction") or 0.0
    ratio, mismatch = metrics.get("sharpness_ratio"), metrics.get("reference_mismatch")
    if dark >= h.dark.fraction:
        fix = "Turn on the room light, remove the lens cap, and check the camera faces the room."
        return "FAIL", f"picture is dark ({dark:.0%} of it black)", fix
    if bright >= h.washed_out.fraction:
        fix = "The camera faces a window or a lamp: turn it away, or close the curtain."
        return "FAIL", f"picture is washed out ({bright:.0%} of it white)", fix
    if covered >= h.covered.fraction:
        fix = "Something covers the lens (cap, tape, a coat?): clear the camera's view."
        return "FAIL", f"lens looks covered ({covered:.0%} of the picture blank)", fix
    target = ref_path or Path("/etc/station-agent") / "reference.png"
    retake = (
        f"take a new reference picture: `sudo systemctl stop {SERVICE}`, then `sudo "
        f"station-agent health {redact_url(cfg.capture.source)} --config "
        f"{target.parent / 'config.toml'} --take-reference {target}`, then `sudo systemctl "
        f"start {SERVICE}`"
    )
    if ref_problem is not None or ref_path is None:
        why = ref_problem or "no reference picture configured"
        fix = f"Aim the camera, then {retake}"
        if ref_path is None:
            fix += f' and add `reference_image = "{target}"` under [health] in the config'
        return "WARN", f"picture usable, {why}", fix + "."
    if mismatch is not None and mismatch >= h.moved.fraction:
        fix = (
            "The view differs from the reference picture: aim the camera as it was (compare the "
            f"snapshot with {ref_path}); if the new aim is right, {retake}."
        )
        return "FAIL", f"view does not match the reference ({mismatch:.0%} differs)", fix
    if ratio is not None and ratio < h.blurred.ratio:
        fix = "Clean the lens and turn the focus ring until the snapshot is sharp."
        return "FAIL", f"picture is blurred ({ratio:.0%} of the reference's sharpness)", fix
    sharp = "n/a" if ratio is None else f"{ratio:.0%}"
    differs = "n/a" if mismatch is None else f"{mismatch:.0%}"
    return "PASS", f"picture fine (sharpness {sharp} of reference, {differs} differs)", None


def _save_snapshot(
    cfg: AgentConfig,
    frame: np.ndarray,
    snapshot_dir: Path | None,
    system: System,
    technician: Technician | None = None,
) -> Path | None:
    """The masked snapshot, 0600: in `snapshot_dir`, else the home of the technician who ran
    check through sudo (theirs, for scp), else next to the spool."""
    if snapshot_dir is None and technician is not None:
        folder: Path = technician.home
    else:
        folder, technician = snapshot_dir or default_snapshot_dir(cfg), None
    stamp = datetime.fromtimestamp(system.wall_s(), UTC).strftime("%Y%m%d-%H%M%S")
    path = folder / f"check-{cfg.station_id}-{stamp}.jpg"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ok, data = cv2.imencode(".jpg", render_preview(frame, cfg.privacy))
        if not ok:
            return None
        owner = None if technician is None else (technician.uid, technician.gid)
        write_atomic(path, data.tobytes(), mode=SNAPSHOT_MODE, owner=owner)
        return path
    except (OSError, cv2.error) as exc:
        log.warning("cannot save the snapshot in %s: %s", folder, exc)
    return None


# --- encoder -------------------------------------------------------------------------------


def _synthetic_frames(rung: Rung) -> list[np.ndarray]:
    """A busy picture (test pattern with sensor-like noise): the worst case for the encoder."""
    src = TestPatternSource(rung.width, rung.height, rung.fps, sleep=lambda _s: None, noise=True)
    src.open()
    frames = [src.read() for _ in range(CAMERA_KEEP_FRAMES)]
    return [f for f in frames if f is not None]


def measure_encode_speed(
    cfg: AgentConfig, rung: Rung, frames: list[np.ndarray], system: System
) -> tuple[float, int]:
    """(speed factor vs real time, frames encoded): resize + I420 + H.264, as the agent does."""
    gop = max(1, round(cfg.encode.segment_s * rung.fps))
    encoder = open_video_encoder(
        cfg.encode.encoder, rung, cfg.encode.preset, cfg.encode.threads, gop
    )
    wanted = max(1, round(ENCODE_VIDEO_S * rung.fps))
    started_s = system.monotonic()
    done = 0
    for i in range(wanted):
        image = frames[i % len(frames)]
        if image.shape[1] != rung.width or image.shape[0] != rung.height:
            image = cv2.resize(image, (rung.width, rung.height), interpolation=cv2.INTER_AREA)
        i420 = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
        encoder.encode(i420, i * PTS_HZ // rung.fps, keyframe=i % gop == 0)
        done += 1
        if system.monotonic() - started_s > ENCODE_MAX_WALL_S:
            break
    encoder.flush()
    elapsed_s = max(system.monotonic() - started_s, 1e-6)
    return (done / rung.fps) / elapsed_s, done


def check_encoder(cfg: AgentConfig, sample: CameraSample | None, system: System) -> CheckResult:
    rung = top_rung(cfg)
    ladder = build_ladder(cfg.adapt, cfg.capture.width, cfg.capture.height, cfg.capture.fps)
    frames = sample.frames if sample is not None else _synthetic_frames(rung)
    what = "camera frames" if sample is not None else "a synthetic busy picture"
    try:
        speed, done = measure_encode_speed(cfg, rung, frames, system)
    except EncoderError as exc:
        fix = 'Set [encode] encoder = "libx264" (software), which every install has.'
        return CheckResult("encoder", "FAIL", str(exc), fix)
    data = {"rung": rung.name, "speed": round(speed, 2), "frames": done}
    detail = f"top rung {rung.name} ({cfg.encode.encoder}, {cfg.encode.preset}): "
    detail += f"{speed:.1f}x real time on {what}"
    lower = ladder[-2] if len(ladder) > 1 else None
    step_down = f'set [adapt] max_rung = "{lower.label}"' if lower else "lower [capture]"
    if speed < ENCODE_FAIL_SPEED:
        fix = (
            f"This box cannot encode {rung.name} in real time: {step_down}, or set [encode] "
            'encoder = "auto" to use a hardware encoder, or use a faster box.'
        )
        return CheckResult("encoder", "FAIL", detail, fix, data)
    if speed < ENCODE_WARN_SPEED:
        fix = (
            f"Little headroom: close other programs; if the stream stutters, {step_down} "
            '(the agent also steps down by itself when overloaded) or set encoder = "auto".'
        )
        return CheckResult("encoder", "WARN", detail, fix, data)
    return CheckResult("encoder", "PASS", detail, data=data)


# --- spool -----------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue  # removed while we looked (the running agent evicts segments)
    return total


def check_spool(cfg: AgentConfig, hours: float) -> CheckResult:
    path = cfg.spool.path
    perms_fix = (
        f"The service user must own it: `sudo mkdir -p {path} && sudo chown -R "
        f"{SERVICE_USER}: {path} && sudo chmod 0700 {path}`, or change [spool] path."
    )
    base = _existing_ancestor(path)
    if not base.is_dir():
        fix = f"{base} is a file, not a folder: move it away, or change [spool] path."
        return CheckResult("spool", "FAIL", f"{path}: {base} is in the way (a file)", fix)
    probe_dir = path if path.is_dir() else base
    try:  # write and remove a file; never leave a folder behind (it would be root's)
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".check-") as probe:
            probe.write(b"check")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return CheckResult("spool", "FAIL", f"{probe_dir} is not writable: {exc}", perms_fix)
    rung = top_rung(cfg)
    need_bytes = int(hours * SECONDS_PER_HOUR * rung.bitrate_bps / 8)
    usage = shutil.disk_usage(probe_dir)
    own_bytes = _tree_bytes(path) if path.is_dir() else 0
    room_bytes = usage.free + own_bytes - cfg.spool.min_free_bytes
    hours_disk = room_bytes * 8 / rung.bitrate_bps / SECONDS_PER_HOUR
    hours_quota = cfg.spool.max_bytes * 8 / rung.bitrate_bps / SECONDS_PER_HOUR
    data = {"free_bytes": usage.free, "need_bytes": need_bytes, "hours_disk": round(hours_disk, 1)}
    detail = (
        f"{path}: writable, {usage.free / 1e9:.1f} GB free = {hours_disk:.1f} h at {rung.name} "
        f"(quota {cfg.spool.max_bytes / 1e9:.1f} GB = {hours_quota:.1f} h; need {hours:g} h)"
    )
    if room_bytes < need_bytes:
        fix = (
            f"Free {max(0, need_bytes - room_bytes) / 1e9:.1f} GB more on that disk (delete old "
            "files) or use a bigger card; or set a lower [adapt] max_rung."
        )
        return CheckResult("spool", "FAIL", detail, fix, data)
    if cfg.spool.max_bytes < need_bytes:
        fix = f'Raise [spool] max_bytes to at least "{need_bytes / 1e9 + 1:.0f}GB".'
        return CheckResult("spool", "WARN", detail, fix, data)
    owner_problem = _owner_problem(path)
    if owner_problem:
        return CheckResult("spool", "WARN", f"{detail}; {owner_problem}", perms_fix, data)
    return CheckResult("spool", "PASS", detail, data=data)


def _owner_problem(path: Path) -> str | None:
    """Run as root, `check` can write anywhere; the service cannot."""
    if os.geteuid() != 0 or not path.is_dir():
        return None
    try:
        uid = pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None  # not installed with install.sh (a test box): nothing to compare with
    if path.stat().st_uid != uid:
        return f"owned by uid {path.stat().st_uid}, not by the service user {SERVICE_USER}"
    return None


# --- service ---------------------------------------------------------------------------------


def check_service(system: System) -> CheckResult:
    if not system.systemd():
        fix = (
            "On the station box systemd runs the agent; here start it by hand: "
            "`station-agent run --config FILE`."
        )
        return CheckResult("service", "WARN", "cannot check: systemd not running", fix)
    _, enabled = system.run(["systemctl", "is-enabled", SERVICE], 10.0)
    _, active = system.run(["systemctl", "is-active", SERVICE], 10.0)
    detail = f"{SERVICE}: {enabled or 'unknown'}, {active or 'unknown'}"
    data = {"enabled": enabled, "active": active}
    if enabled != "enabled":
        fix = f"`sudo systemctl enable --now {SERVICE}` (or run provisioning/install.sh again)."
        return CheckResult("service", "FAIL", detail, fix, data)
    if active != "active":
        fix = (
            f"`sudo systemctl restart {SERVICE}`; if it stops again, read why with "
            f"`journalctl -u {SERVICE} -b -n 50`."
        )
        return CheckResult("service", "FAIL", detail, fix, data)
    return CheckResult("service", "PASS", detail, data=data)


def bounded(name: str, limit_s: float, work: Callable[[], CheckResult]) -> CheckResult:
    """Runs one check in a thread; a check that hangs is reported, never waited for forever."""
    box: list[CheckResult] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            box.append(work())
        except Exception as exc:  # reported as this check's FAIL; the other checks carry on
            log.exception("check %s failed unexpectedly", name)
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"check-{name}", daemon=True)
    thread.start()
    thread.join(limit_s)
    if box:
        return box[0]
    if failure:
        detail = f"the check itself failed: {type(failure[0]).__name__}: {failure[0]}"
        return CheckResult(name, "FAIL", detail, "Report this line to central staff.")
    fix = "Something hangs (camera, network or disk): unplug/replug, then run check again."
    return CheckResult(name, "FAIL", f"did not finish within {limit_s:.0f} s", fix)
