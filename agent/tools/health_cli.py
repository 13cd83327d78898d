"""`station-agent health FILE|SOURCE`: run the camera-health analysis over a
recording or a live camera and print every condition found with its time range.

A file is analysed as fast as it decodes, on its own timestamps; a live source
(v4l2:, rtsp://, http(s)://, test:) is watched for --duration-s seconds.
--take-reference IMG stores one frame of the source as the reference picture (to
keep next to the config) instead.

Exit code: 0 no problem found, 1 a condition was found, 2 bad input (the camera
cannot be opened, no such file...).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError

from agent.capture.privacy import PrivacyConfig, PrivacyMasker
from agent.capture.sources import SourceError, grab_frame, open_source
from agent.core.config import ConfigError, describe_validation_error
from agent.core.events import Event
from agent.core.redact import redact_url
from agent.health.camera import CameraHealth, read_reference, write_reference
from agent.health.config import HealthConfig
from agent.service.config import load_toml
from agent.tools.terminal import Waiting, camera_hints, wrap

LIVE_SCHEMES = ("v4l2:", "rtsp://", "rtsps://", "http://", "https://", "test:")
DEFAULT_SIZE = (1280, 720, 30)  # live sources without a [capture] section: the agent's default
MAX_FILE_FPS = 120.0  # container frame rates outside 1..120 are bogus (0, 90000...)


class UsageError(Exception):
    """Bad input the user can fix; the message is one line, `hints` the next steps."""

    def __init__(self, message: str, hints: list[str] | None = None) -> None:
        super().__init__(message)
        self.hints = hints or []


@dataclass
class Timeline:
    """An EventSink that stamps each event with the media time at which it was emitted."""

    now_s: float = 0.0
    entries: list[tuple[float, Event]] = field(default_factory=list)

    def emit(self, event: Event) -> None:
        self.entries.append((self.now_s, event))

    def ranges(self) -> list[dict[str, Any]]:
        """One entry per raised condition: start and end (None = still on at the end)."""
        found: list[dict[str, Any]] = []
        open_by_condition: dict[str, dict[str, Any]] = {}
        for at_s, event in self.entries:
            name = event.fields["condition"]
            onset_s = round(max(0.0, at_s - float(event.fields.get("held_s", 0.0))), 2)
            if event.kind == "health_raised":
                entry = {
                    "condition": name,
                    "start_s": onset_s,
                    "end_s": None,
                    "value": event.fields.get("value"),
                    "threshold": event.fields.get("threshold"),
                    "severity": event.severity,
                    "message": event.message,
                }
                found.append(entry)
                open_by_condition[name] = entry
            elif event.kind == "health_cleared" and name in open_by_condition:
                open_by_condition.pop(name)["end_s"] = onset_s
        return found


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "health",
        help="check a camera or a recording for dark, covered, frozen, blurred or moved picture",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="video file, or v4l2:/dev/video0, rtsp://..., test:")
    parser.add_argument("--reference", type=Path, metavar="IMG", help="reference picture")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML whose [health] section sets thresholds"
    )
    parser.add_argument(
        "--duration-s", type=float, default=30.0, help="how long to watch a live source"
    )
    parser.add_argument(
        "--take-reference", type=Path, metavar="IMG", help="save one frame as reference, exit"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        table = _load_toml(args.config)
        cfg = _health_config(table, args.config)
        if args.take_reference is not None:
            return _take_reference(args.source, args.take_reference, table, args.config)
        reference = _load_reference(args.reference)
        if args.source.startswith(LIVE_SCHEMES):
            report = _watch_live(args.source, cfg, reference, args.duration_s, table)
        else:
            report = _analyse_file(Path(args.source.removeprefix("file:")), cfg, reference)
    except UsageError as exc:
        print(f"station-agent health: {exc}", file=sys.stderr)
        for hint in exc.hints:
            print(wrap(hint, indent=2, first_indent=2), file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 1 if report["conditions"] else 0


def _load_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return load_toml(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _health_config(table: dict[str, Any], path: Path | None) -> HealthConfig:
    try:
        return HealthConfig.model_validate(table.get("health", {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UsageError(f"{path}: [health] {where}: {first['msg']}") from exc


def _load_reference(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    try:
        return read_reference(path)
    except OSError as exc:
        raise UsageError(str(exc)) from exc


def _capture_size(table: dict[str, Any]) -> tuple[int, int, int]:
    capture = table.get("capture", {})
    width, height, fps = DEFAULT_SIZE
    return (
        int(capture.get("width", width)),
        int(capture.get("height", height)),
        int(capture.get("fps", fps)),
    )


def _take_reference(source: str, out: Path, table: dict[str, Any], config: Path | None) -> int:
    """One frame, masked with the config's privacy masks (the --config file's, else those of
    the config.toml beside the picture), written 0600."""
    if config is None and (out.parent / "config.toml").is_file():
        config = out.parent / "config.toml"
        table = _load_toml(config)
    masker = PrivacyMasker(_privacy_config(table, config))
    width, height, _fps = _capture_size(table)
    spec = source if source.startswith(LIVE_SCHEMES + ("file:",)) else f"file:{source}"
    try:
        with Waiting(f"taking a picture from {redact_url(spec)}"):
            frame = np.ascontiguousarray(grab_frame(spec, width, height)).copy()
    except SourceError as exc:
        raise UsageError(str(exc), camera_hints(spec)) from exc
    masker.apply(frame)
    try:
        write_reference(out, frame)
    except OSError as exc:
        raise UsageError(str(exc)) from exc
    masks = f"{masker.active_count} privacy mask(s) applied" if masker.active_count else "no mask"
    print(wrap(f"reference picture saved to {out} ({frame.shape[1]}x{frame.shape[0]}, {masks})"))
    return 0


def _privacy_config(table: dict[str, Any], path: Path | None) -> PrivacyConfig:
    try:
        return PrivacyConfig.model_validate(table.get("privacy", {}))
    except ValidationError as exc:
        raise UsageError(f"{path}: [privacy] {describe_validation_error(exc)}") from exc


def _analyse_file(path: Path, cfg: HealthConfig, reference: np.ndarray | None) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise UsageError(f"{path}: not a video file OpenCV can open")
        file_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        fps = file_fps if 1.0 <= file_fps <= MAX_FILE_FPS else None
        timeline = Timeline()
        health = CameraHealth(cfg, timeline, reference, expected_fps=fps)
        frames, now_s = 0, 0.0
        with Waiting(f"analysing {path.name}"):
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                pos_s = float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
                by_index_s = frames / fps if fps else now_s + 1.0 / 30
                now_s = pos_s if frames == 0 or pos_s > now_s else by_index_s
                timeline.now_s = now_s
                health.observe(now_s, frame)
                frames += 1
    finally:
        cap.release()
    if frames == 0:
        raise UsageError(f"{path}: no video frame could be decoded")
    return _report(str(path), frames, now_s, timeline, health)


def _watch_live(
    spec: str,
    cfg: HealthConfig,
    reference: np.ndarray | None,
    duration_s: float,
    table: dict[str, Any],
) -> dict[str, Any]:
    width, height, fps = _capture_size(table)
    source = open_source(spec, width, height, fps)
    shown = redact_url(spec)
    try:
        with Waiting(f"opening {shown}"):
            source.open()
    except SourceError as exc:
        raise UsageError(str(exc), camera_hints(spec)) from exc
    timeline = Timeline()
    health = CameraHealth(cfg, timeline, reference, expected_fps=float(fps))
    start_s = time.monotonic()
    frames, now_s = 0, 0.0
    watching = Waiting(f"watching {shown} for {duration_s:g} s", after_s=0.0)
    try:
        with watching:
            while now_s < duration_s:
                frame = source.read()
                now_s = time.monotonic() - start_s
                timeline.now_s = now_s
                if frame is None:
                    health.poll(now_s)
                    continue
                health.observe(now_s, frame)
                frames += 1
    except SourceError as exc:
        health.note_source_state(now_s, delivering=False)
        print(f"station-agent health: {exc}; reporting what was seen", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        source.close()
    return _report(redact_url(spec), frames, now_s, timeline, health)


def _report(
    source: str, frames: int, duration_s: float, timeline: Timeline, health: CameraHealth
) -> dict[str, Any]:
    snapshot = health.snapshot()
    return {
        "source": source,
        "frames": frames,
        "duration_s": round(duration_s, 2),
        "conditions": timeline.ranges(),
        "reference": snapshot["reference"],
        "final_metrics": snapshot["metrics"],
    }


def _table(report: dict[str, Any]) -> str:
    """The report for people, 80 columns wide: one row per condition, its message below."""
    lines = [wrap(f"{report['source']}: {report['frames']} frames, {report['duration_s']:.1f} s")]
    if not report["conditions"]:
        lines.append("no problem found")
        return "\n".join(lines)
    lines.append(f"{'condition':<11} {'from':>8} {'to':>8}  {'value':>7} {'limit':>7}")
    for c in report["conditions"]:
        end = "end" if c["end_s"] is None else f"{c['end_s']:.1f}s"
        value = "-" if c["value"] is None else f"{c['value']:.3f}"
        limit = "-" if c["threshold"] is None else f"{c['threshold']:.3f}"
        lines.append(f"{c['condition']:<11} {c['start_s']:>7.1f}s {end:>8}  {value:>7} {limit:>7}")
        lines.append(wrap(c["message"], indent=12, first_indent=12))
    return "\n".join(lines)
