"""`station-agent mask`: set the privacy masks and check them on a snapshot.

    station-agent mask --config /etc/station-agent/config.toml --preview /tmp/masks.png
    station-agent mask --config FILE --add-rect 0,0.4,0.25,1 --fill solid --write

Takes a snapshot (from --image, or from the configured camera), draws the masks on it as the
stream will show them (filled, with a numbered outline) and saves the preview; with --write,
replaces the `[privacy]` section of the config file and leaves the rest of the file as it was.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError

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
from agent.service.config import config_from_dict

GRAB_TIMEOUT_S = 15.0  # a USB camera needs a few seconds to open and settle its exposure
DEFAULT_PREVIEW = Path("mask-preview.png")
# Outline colours (BGR) cycled over the masks: bright, distinct from the grey fill.
OUTLINE_BGR = ((0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 255, 0), (0, 128, 255))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mask", help="set the privacy masks (voting booths) and preview them on a snapshot"
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
    p.add_argument(
        "--preview", type=Path, default=DEFAULT_PREVIEW,
        help=f"where to save the preview picture (PNG or JPEG; default {DEFAULT_PREVIEW})",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        text = args.config.read_text(encoding="utf-8")
        privacy, capture = load_sections(args.config, text)
        privacy = edited(privacy, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {args.config}: cannot read the file: {exc.strerror or exc}", file=sys.stderr)
        return 2
    image = snapshot(args.image, capture)
    if image is None:
        return 2 if args.image else 1
    try:
        if not cv2.imwrite(str(args.preview), render_preview(image, privacy)):
            raise cv2.error(f"cannot write {args.preview}")
    except cv2.error:
        print(
            f"error: cannot save the preview as {args.preview} (use .png or .jpg)", file=sys.stderr
        )
        return 2
    describe(privacy, image, args.preview)
    if not args.write:
        if args.add_rect or args.add_polygon or args.clear or args.fill or args.confirm_large_masks:
            print(f"not saved: add --write to save these masks into {args.config}")
        return 0
    try:
        write_config(args.config, text, privacy)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"saved the [privacy] section into {args.config}")
    return 0


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


def snapshot(image_path: Path | None, capture: CaptureConfig) -> np.ndarray | None:
    """The picture to draw on, or None after printing why there is none."""
    if image_path is not None:
        if not image_path.is_file():
            print(f"error: {image_path}: no such file", file=sys.stderr)
            return None
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            print(f"error: {image_path}: not a picture OpenCV can read", file=sys.stderr)
        return image
    from agent.capture.sources import SourceError, grab_frame  # a camera only when asked for

    try:
        return grab_frame(capture.source, capture.width, capture.height, timeout_s=GRAB_TIMEOUT_S)
    except SourceError as exc:
        print(f"error: no snapshot from the camera: {exc}", file=sys.stderr)
        return None


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


def describe(privacy: PrivacyConfig, image: np.ndarray, preview: Path) -> None:
    h, w = image.shape[:2]
    print(f"snapshot {w}x{h}, {len(privacy.masks)} mask(s):")
    for k, region in enumerate(privacy.masks):
        print(f"  {k}: {_mask_toml(region)}  -> {privacy.fill_of(region)}")
    share = coverage_share(privacy)
    print(f"masked share of the frame: {share:.1%}")
    if share > MAX_COVERAGE_SHARE:
        print(f"warning: over {MAX_COVERAGE_SHARE:.0%} of the frame is masked (confirmed)")
    print(f"preview saved to {preview}: check by eye that every voting booth is covered")


# -- the config file ---------------------------------------------------------------------------


def format_section(privacy: PrivacyConfig) -> str:
    lines = [
        "[privacy]",
        "# Privacy masks, set with `station-agent mask`. Coordinates are fractions of the frame:",
        "# x from the left edge, y from the top edge, both 0..1.",
        f'fill = "{privacy.fill}"',
        f"confirm_large_masks = {'true' if privacy.confirm_large_masks else 'false'}",
    ]
    if not privacy.masks:
        return "\n".join([*lines, "masks = []", ""])
    lines.append("masks = [")
    lines += [f"    {_mask_toml(region)}," for region in privacy.masks]
    return "\n".join([*lines, "]", ""])


def _mask_toml(region: MaskRegion) -> str:
    if region.rect is not None:
        shape = f"rect = [{', '.join(repr(float(v)) for v in region.rect)}]"
    else:
        points = ", ".join(f"[{float(x)!r}, {float(y)!r}]" for x, y in region.polygon or ())
        shape = f"polygon = [{points}]"
    fill = f', fill = "{region.fill}"' if region.fill else ""
    return f"{{ {shape}{fill} }}"


_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_\-\"'. ]+?)\s*\]\]?\s*(?:#.*)?$")


def replace_section(text: str, privacy: PrivacyConfig) -> str:
    """`text` with every privacy table replaced by one freshly written [privacy] section.

    The new section takes the place of the first privacy table (or goes at the end); comments
    and blank lines just before the next table stay with that table.
    """
    lines = text.splitlines(keepends=True)
    keep: list[str] = []
    insert_at: int | None = None
    in_privacy = False
    pending: list[str] = []  # blank/comment lines that may belong to the next table
    for line, is_header, name in _scan(lines):
        if is_header:
            in_privacy = name.split(".")[0] == "privacy"
            if in_privacy:
                pending.clear()
                insert_at = len(keep) if insert_at is None else insert_at
                continue
            keep += pending
            pending.clear()
        if not in_privacy:
            keep.append(line)
        elif not line.strip() or line.lstrip().startswith("#"):
            pending.append(line)
        else:
            pending.clear()
    keep += pending
    section = format_section(privacy)
    if insert_at is None:
        body = "".join(keep)
        return body + ("\n" if body and not body.endswith("\n") else "") + "\n" + section
    return "".join(keep[:insert_at]) + section + "\n" + "".join(keep[insert_at:])


def _scan(lines: list[str]) -> list[tuple[str, bool, str]]:
    """(line, is a table header, normalised table name) with multi-line strings and arrays
    skipped. A small scanner, not a TOML parser: `write_config` re-parses the result."""
    out: list[tuple[str, bool, str]] = []
    depth, string = 0, ""
    for line in lines:
        match = _HEADER.match(line) if depth == 0 and not string else None
        name = ""
        if match:
            name = ".".join(part.strip().strip("\"'") for part in match.group(1).split("."))
        out.append((line, match is not None, name))
        if match:
            continue
        i = 0
        while i < len(line):
            if string:
                if line.startswith(string, i) and (
                    string == "'" * len(string) or line[i - 1] != "\\"
                ):
                    i += len(string) - 1
                    string = ""
            elif line[i] == "#":
                break
            elif line.startswith(('"""', "'''"), i):
                string = line[i : i + 3]
                i += 2
            elif line[i] in "\"'":
                string = line[i]
            elif line[i] == "[":
                depth += 1
            elif line[i] == "]":
                depth = max(0, depth - 1)
            i += 1
        if string in ('"', "'"):
            string = ""  # single-line strings end with their line
    return out


def write_config(path: Path, text: str, privacy: PrivacyConfig) -> None:
    """Replace the [privacy] section, check the result re-reads identically, write atomically."""
    new_text = replace_section(text, privacy)
    try:
        before, after = tomllib.loads(text), tomllib.loads(new_text)
        reread = PrivacyConfig.model_validate(after.get("privacy", {}))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path}: could not update [privacy] safely ({exc}); edit it by hand"
        ) from None
    except ValidationError as exc:
        what = describe_validation_error(exc)
        raise ConfigError(
            f"{path}: could not update [privacy] safely ({what}); edit it by hand"
        ) from None
    before.pop("privacy", None)
    after.pop("privacy", None)
    if before != after or reread != privacy:
        raise ConfigError(f"{path}: could not update [privacy] safely; edit it by hand")
    try:
        rewrite_atomic(path, new_text.encode("utf-8"))  # keeps the file's mode and owner
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the file: {exc.strerror or exc}") from None
