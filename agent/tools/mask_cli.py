"""`station-agent mask`: set the privacy masks and check them on a snapshot.

    station-agent mask --config /etc/station-agent/config.toml \\
        --preview /tmp/masks.png
    station-agent mask --config FILE --add-rect 0,0.4,0.25,1 --write

Takes a snapshot (from --image, or from the configured camera), draws the masks
on it as the stream will show them (filled, with a numbered outline) and saves
the preview; with --write, writes the masks into the [privacy] section of the
config file and leaves the rest of the file (comments too) as it was.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tomlkit
from pydantic import ValidationError
from tomlkit import TOMLDocument
from tomlkit.items import Array, InlineTable, Item, Table

from agent.capture.config import CaptureConfig
from agent.capture.privacy import (
    MAX_COVERAGE_SHARE,
    Fill,
    MaskRegion,
    PrivacyConfig,
    PrivacyMasker,
    coverage_share,
)
from agent.core.config import ConfigError, describe_validation_error
from agent.core.durable import rewrite_atomic
from agent.core.redact import redact_url
from agent.service.config import config_from_dict
from agent.tools.terminal import Waiting, camera_hints, fail, permission_hint, wrap

GRAB_TIMEOUT_S = 15.0  # a USB camera needs a few seconds to open and settle its exposure
DEFAULT_PREVIEW = Path("mask-preview.png")
# Outline colours (BGR) cycled over the masks: bright, distinct from the grey fill.
OUTLINE_BGR = ((0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 255, 0), (0, 128, 255))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mask",
        help="set the privacy masks (voting booths) and preview them on a snapshot",
        description=__doc__,
    )
    p.add_argument("--config", type=Path, required=True, help="the agent's TOML config file")
    p.add_argument("--image", type=Path, help="use this picture instead of a camera snapshot")
    p.add_argument(
        "--add-rect", action="append", default=[], metavar="x0,y0,x1,y1",
        help="add a rectangle (fractions of the frame: 0,0 is top left, 1,1 bottom right)",
    )  # fmt: skip
    p.add_argument(
        "--add-polygon", action="append", default=[], metavar='"x,y x,y x,y ..."',
        help="add a polygon of 3 or more points (fractions of the frame)",
    )  # fmt: skip
    p.add_argument(
        "--fill", choices=("solid", "pixelate"),
        help="fill of the masks added now (without --add-*: the default fill of every mask)",
    )  # fmt: skip
    p.add_argument("--clear", action="store_true", help="remove every mask first")
    p.add_argument(
        "--confirm-large-masks", action="store_true",
        help=f"allow masks covering more than {MAX_COVERAGE_SHARE * 100:.0f} %% of the frame",
    )  # fmt: skip
    p.add_argument("--write", action="store_true", help="save the masks into the config file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument(
        "--preview", type=Path, default=DEFAULT_PREVIEW,
        help=f"where to save the preview picture (PNG or JPEG; default {DEFAULT_PREVIEW})",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 done, 1 no snapshot from the camera, 2 bad input or a file that cannot be
    read or written."""
    try:
        text = args.config.read_text(encoding="utf-8")
        privacy, capture = load_sections(args.config, text)
        privacy = edited(privacy, args)
    except ConfigError as exc:
        return _error(args, str(exc), [], 2)
    except OSError as exc:
        hints = [h for h in [permission_hint("mask")] if h and isinstance(exc, PermissionError)]
        return _error(args, f"{args.config}: cannot read the file: {exc.strerror or exc}", hints, 2)
    try:
        image = snapshot(args.image, capture)
    except SnapshotError as exc:
        return _error(args, str(exc), exc.hints, 2 if args.image else 1)
    try:
        if not cv2.imwrite(str(args.preview), render_preview(image, privacy)):
            raise cv2.error(f"cannot write {args.preview}")
    except cv2.error:
        message = f"cannot save the preview as {args.preview} (use .png or .jpg)"
        return _error(args, message, [], 2)
    report = describe(privacy, image, args.preview)
    changed = bool(
        args.add_rect or args.add_polygon or args.clear or args.fill or args.confirm_large_masks
    )
    if args.write:
        try:
            write_config(args.config, text, privacy)
        except ConfigError as exc:
            hints = [h for h in [permission_hint("mask")] if h and "denied" in str(exc)]
            return _error(args, str(exc), hints, 1)
        report.append(f"saved the [privacy] section into {args.config}")
    elif changed:
        report.append(f"not saved: add --write to save these masks into {args.config}")
    if args.json:
        print(json.dumps(as_json(privacy, image, args, saved=args.write), indent=2))
    else:
        print("\n".join(wrap(line, indent=2) for line in report))
    return 0


def _error(args: argparse.Namespace, message: str, hints: list[str], code: int) -> int:
    fail(message, hints)
    if args.json:
        print(json.dumps({"ok": False, "error": message, "hints": hints}, indent=2))
    return code


def as_json(
    privacy: PrivacyConfig, image: np.ndarray, args: argparse.Namespace, saved: bool
) -> dict[str, Any]:
    h, w = image.shape[:2]
    return {
        "ok": True,
        "config": str(args.config),
        "snapshot": {"width": w, "height": h},
        "fill": privacy.fill,
        "masks": [mask_value(r) | {"fill": privacy.fill_of(r)} for r in privacy.masks],
        "masked_share": round(coverage_share(privacy), 4),
        "preview": str(args.preview),
        "saved": saved,
    }


def load_sections(path: Path, text: str) -> tuple[PrivacyConfig, CaptureConfig]:
    """The [privacy] and [capture] sections of the whole config, validated."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    cfg = config_from_dict(data, source=str(path))
    return cfg.privacy, cfg.capture


def _prefixed(exc: ValidationError, section: str) -> str:
    """describe_validation_error() for one section, without echoing a whole table back."""
    message = describe_validation_error(exc)
    message = message.replace("key '", f"key '{section}.", 1)
    return message.replace(f"'{section}.(top level)'", f"'{section}'")


def edited(privacy: PrivacyConfig, args: argparse.Namespace) -> PrivacyConfig:
    """The section after --clear, --add-rect, --add-polygon, --fill and --confirm-large-masks."""
    masks = [] if args.clear else list(privacy.masks)
    added: list[dict[str, Any]] = [{"rect": _numbers(r, "--add-rect", 4)} for r in args.add_rect]
    added += [{"polygon": _points(p)} for p in args.add_polygon]
    for raw in added:
        if args.fill:
            raw["fill"] = args.fill
        try:
            masks.append(MaskRegion.model_validate(raw))
        except ValidationError as exc:
            shape = "--add-rect" if "rect" in raw else "--add-polygon"
            what = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{shape}: {what}") from None
    fill: Fill = args.fill if args.fill and not added else privacy.fill
    confirm = privacy.confirm_large_masks or args.confirm_large_masks
    share = coverage_share(PrivacyConfig.model_construct(masks=tuple(masks)))  # (unvalidated)
    if share > MAX_COVERAGE_SHARE and not confirm:
        raise ConfigError(
            f"the masks would cover {share:.1%} of the picture (more than "
            f"{MAX_COVERAGE_SHARE:.0%}): the stream would show almost nothing. If that is "
            "really meant, add --confirm-large-masks (it saves confirm_large_masks = true "
            "with the masks)."
        )
    try:
        return PrivacyConfig(masks=tuple(masks), fill=fill, confirm_large_masks=confirm)
    except ValidationError as exc:
        raise ConfigError(_prefixed(exc, "privacy")) from None


def _numbers(text: str, option: str, count: int) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise ConfigError(f"{option} {text!r}: expected {count} numbers separated by commas")
    return values


def _points(text: str) -> list[list[float]]:
    return [_numbers(point, "--add-polygon point", 2) for point in text.split()]


class SnapshotError(Exception):
    """No picture to draw on; `hints` are the next steps."""

    def __init__(self, message: str, hints: list[str] | None = None) -> None:
        super().__init__(message)
        self.hints = hints or []


def snapshot(image_path: Path | None, capture: CaptureConfig) -> np.ndarray:
    """The picture to draw on: the file's, or one from the camera. Raises SnapshotError."""
    if image_path is not None:
        if not image_path.is_file():
            raise SnapshotError(f"{image_path}: no such file")
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise SnapshotError(f"{image_path}: not a picture OpenCV can read")
        return image
    from agent.capture.sources import SourceError, grab_frame  # a camera only when asked for

    try:
        with Waiting(f"taking a snapshot from {redact_url(capture.source)}", GRAB_TIMEOUT_S):
            return grab_frame(
                capture.source, capture.width, capture.height, timeout_s=GRAB_TIMEOUT_S
            )
    except SourceError as exc:
        raise SnapshotError(
            f"no snapshot from the camera: {exc}", camera_hints(capture.source)
        ) from None


def render_preview(image: np.ndarray, privacy: PrivacyConfig, outlines: bool = True) -> np.ndarray:
    """A masked copy of `image` as the stream will show it, each mask outlined and numbered."""
    preview = np.ascontiguousarray(image).copy()
    PrivacyMasker(privacy).apply(preview)
    if not outlines:
        return preview
    h, w = preview.shape[:2]
    thickness = max(1, h // 360)
    for k, region in enumerate(privacy.masks):
        colour = OUTLINE_BGR[k % len(OUTLINE_BGR)]
        pts = np.array([[x * (w - 1), y * (h - 1)] for x, y in region.points()], np.int32)
        cv2.polylines(preview, [pts.reshape(-1, 1, 2)], True, colour, thickness, cv2.LINE_AA)
        x, y = pts.min(axis=0)
        label = f"{k} {privacy.fill_of(region)}"
        org = (int(x) + 3 * thickness, int(y) + 12 * thickness + 4)
        cv2.putText(
            preview, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, colour, thickness,
            cv2.LINE_AA,
        )  # fmt: skip
    return preview


def describe(privacy: PrivacyConfig, image: np.ndarray, preview: Path) -> list[str]:
    """The report's lines: the snapshot, each mask, the masked share, the preview."""
    h, w = image.shape[:2]
    lines = [f"snapshot {w}x{h}, {len(privacy.masks)} mask(s):"]
    for k, region in enumerate(privacy.masks):
        lines.append(f"  {k}: {mask_item(region).as_string()}  -> {privacy.fill_of(region)}")
    share = coverage_share(privacy)
    lines.append(f"masked share of the frame: {share:.1%}")
    if share > MAX_COVERAGE_SHARE:
        lines.append(f"warning: over {MAX_COVERAGE_SHARE:.0%} of the frame is masked (confirmed)")
    lines.append(f"preview saved to {preview}: check by eye that every voting booth is covered")
    return lines


# -- the config file ---------------------------------------------------------------------------


SECTION_KEYS = ("fill", "confirm_large_masks", "masks")  # what `mask` writes, in this order
SECTION_COMMENT = (
    "Privacy masks, set with `station-agent mask`. Coordinates are fractions of the frame:",
    "x from the left edge, y from the top edge, both 0..1.",
)


def mask_value(region: MaskRegion) -> dict[str, Any]:
    """One mask as plain TOML data, as `MaskRegion` reads it back."""
    value: dict[str, Any] = (
        {"rect": [float(v) for v in region.rect]}
        if region.rect is not None
        else {"polygon": [[float(x), float(y)] for x, y in region.polygon or ()]}
    )
    if region.fill:
        value["fill"] = region.fill
    return value


def mask_item(region: MaskRegion) -> InlineTable:
    """`{ rect = [x0, y0, x1, y1], fill = "..." }`: one line of the masks list."""
    item = tomlkit.inline_table()
    item.add(tomlkit.ws(" "))
    for key, value in mask_value(region).items():
        item.add(key, value)
    item.add(tomlkit.ws(" "))
    return item


def masks_array(privacy: PrivacyConfig) -> Array:
    masks = tomlkit.array()
    for region in privacy.masks:
        masks.append(mask_item(region))
    return masks.multiline(bool(privacy.masks))


def privacy_table(privacy: PrivacyConfig) -> Table:
    """A new [privacy] section, with a comment saying how to read it."""
    table = tomlkit.table()
    for line in SECTION_COMMENT:
        table.add(tomlkit.comment(line))
    for key in SECTION_KEYS:
        table.add(key, _new_item(privacy, key))
    return table


def set_privacy(doc: TOMLDocument, privacy: PrivacyConfig) -> None:
    """Write `privacy` into the [privacy] table of `doc`, leaving everything else as the
    technician wrote it: the rest of the file, comments in the section, and values that stay
    the same. Masks added after the existing ones are appended to the list (its comments
    stay); keys the section lacks go after its last key. Raises ValueError for a [privacy]
    that is not one plain table."""
    old = doc.get("privacy")
    if old is None:
        doc.add("privacy", privacy_table(privacy))
        return
    if not isinstance(old, Table) or old.is_super_table():
        raise ValueError("[privacy] is not one plain table")
    missing = [key for key in SECTION_KEYS if key not in old]
    body = old.value.body
    last_key = max((i for i, (key, _) in enumerate(body) if key is not None), default=-1)
    updated = tomlkit.table()

    def add_missing() -> None:
        for name in missing:
            updated.add(name, _new_item(privacy, name))

    if last_key < 0:
        add_missing()
    for i, (key, item) in enumerate(body):
        if key is not None and key.key in SECTION_KEYS:
            item = _updated(item, key.key, privacy)
        updated.raw_append(key, item)
        if i == last_key:
            add_missing()
    # Ending on (empty) whitespace stops tomlkit adding a blank line of its own before the
    # next table, which would separate that table from the comment just above its header.
    updated.add(tomlkit.ws(""))
    doc["privacy"] = updated  # replaced in place: same position, same header line


def _new_item(privacy: PrivacyConfig, key: str) -> Item:
    return masks_array(privacy) if key == "masks" else tomlkit.item(getattr(privacy, key))


def _updated(item: Item, key: str, privacy: PrivacyConfig) -> Item:
    """The item for `key`: the same one if its value stays, the old list with the new masks
    appended if masks were only added, else a new value keeping the line's comment."""
    plain = [mask_value(r) for r in privacy.masks] if key == "masks" else getattr(privacy, key)
    if item.unwrap() == plain:
        return item
    if key == "masks" and isinstance(item, Array) and 0 < len(item) < len(plain):
        if item.unwrap() == plain[: len(item)]:  # masks only added: keep the list's comments
            for region in privacy.masks[len(item) :]:
                item.append(mask_item(region))
            if "\n" not in item.as_string():
                item.multiline(True)  # a one-line list grew: one mask a line, as we write it
            return item
    new = _new_item(privacy, key)
    new.trivia.indent = item.trivia.indent
    new.trivia.comment_ws = item.trivia.comment_ws
    new.trivia.comment = item.trivia.comment
    new.trivia.trail = item.trivia.trail
    return new


def write_config(path: Path, text: str, privacy: PrivacyConfig) -> None:
    """Write `privacy` into the config file, check the result re-reads identically apart from
    [privacy], and replace the file atomically."""
    unsafe = f"{path}: could not update [privacy] safely"
    try:
        doc = tomlkit.parse(text)
        set_privacy(doc, privacy)
        new_text = doc.as_string()
        before, after = tomllib.loads(text), tomllib.loads(new_text)
        reread = PrivacyConfig.model_validate(after.get("privacy", {}))
    except ValidationError as exc:
        what = describe_validation_error(exc)
        raise ConfigError(f"{unsafe} ({what}); edit it by hand") from None
    except ValueError as exc:  # tomlkit's and tomllib's parse errors, a [privacy] we cannot edit
        raise ConfigError(f"{unsafe} ({exc}); edit it by hand") from None
    before.pop("privacy", None)
    after.pop("privacy", None)
    if before != after or reread != privacy:
        raise ConfigError(f"{unsafe}; edit it by hand")
    try:
        rewrite_atomic(path, new_text.encode("utf-8"))  # keeps the file's mode and owner
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the file: {exc.strerror or exc}") from None
