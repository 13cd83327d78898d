"""What central staff can ask a running station to do (MQTT `cmd/{name}`).

Each handler validates its payload strictly and raises `CommandError` with a plain message for
anything it cannot do; the telemetry part turns that into an error reply. Nothing here blocks
for long: changes take effect at the next segment boundary or in the capture thread.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2

from agent.adapt.ladder import parse_label
from agent.capture.frames import to_bgr
from agent.health.camera import write_reference
from agent.service.pipeline import Pipeline
from agent.telemetry import CommandError, CommandHandler

log = logging.getLogger(__name__)

SNAPSHOT_JPEG_QUALITY = 80
SNAPSHOT_MAX_WIDTH = 1280  # keeps a snapshot reply well under typical broker message limits


def _no_arguments(name: str, payload: dict[str, Any]) -> None:
    if payload:
        raise CommandError(f"{name} takes no arguments (got {sorted(payload)})")


def command_handlers(pipeline: Pipeline) -> dict[str, CommandHandler]:
    def snapshot(payload: dict[str, Any]) -> bytes:
        _no_arguments("snapshot", payload)
        frame = pipeline.capture.newest_copy()  # already privacy-masked
        if frame is None:
            raise CommandError("no camera frame yet")
        image = to_bgr(frame.image)
        if image.shape[1] > SNAPSHOT_MAX_WIDTH:
            scale = SNAPSHOT_MAX_WIDTH / image.shape[1]
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_JPEG_QUALITY])
        if not ok:
            raise CommandError("could not encode the snapshot")
        return jpeg.tobytes()

    def set_rung(payload: dict[str, Any]) -> dict[str, Any]:
        label = payload.get("rung")
        if set(payload) != {"rung"} or not isinstance(label, str):
            raise CommandError('set_rung takes {"rung": "<height>p<fps>"}, e.g. "720p30"')
        try:
            parse_label(label)
            rung = pipeline.pin_rung(label)
        except ValueError as exc:
            raise CommandError(f"cannot pin {label!r}: {exc}") from None
        log.info("rung pinned to %s by command", rung.name)
        return {"pinned": rung.as_dict(), "name": rung.name, "applies": "next segment"}

    def auto(payload: dict[str, Any]) -> dict[str, Any]:
        _no_arguments("auto", payload)
        pipeline.auto_rung()
        log.info("rung adaptation resumed by command")
        return {"pinned": None, "applies": "next segment"}

    def restart_capture(payload: dict[str, Any]) -> dict[str, Any]:
        _no_arguments("restart_capture", payload)
        pipeline.capture.restart()
        return {"restarting": True}

    def retake_reference(payload: dict[str, Any]) -> dict[str, Any]:
        _no_arguments("retake_reference", payload)
        frame = pipeline.capture.newest_copy()
        if frame is None:
            raise CommandError("no camera frame yet")
        picture = to_bgr(frame.image)
        pipeline.health.set_reference(picture)
        path = pipeline.cfg.health.reference_image
        if path is None:
            return {"reference": "in memory only (no health.reference_image configured)"}
        try:
            write_reference(path, picture)
        except OSError as exc:
            raise CommandError(f"reference taken but not saved: {exc}") from None
        return {"reference": str(path)}

    return {
        "snapshot": snapshot,
        "set_rung": set_rung,
        "auto": auto,
        "restart_capture": restart_capture,
        "retake_reference": retake_reference,
    }
