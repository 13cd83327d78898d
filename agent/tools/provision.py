"""Provisioning: one station's answers -> a validated config file and its secret files.

`StationValues` holds what a technician types (or a roster row gives). `validate` turns a bad
value into one line naming the flag or roster column; `write_station` writes the secrets, the
reference picture and the config (all 0600, written atomically) into a folder. The roster is a
CSV file with one station per row (provisioning/roster.example.csv); secrets appear there only
as paths of files, never inline. The CLI is agent/provision_cli.py.
"""

from __future__ import annotations

import csv
import grp
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tomlkit
from pydantic import SecretStr, ValidationError

from agent.capture.privacy import PrivacyConfig, PrivacyMasker
from agent.core.config import ConfigError, describe_validation_errors, read_secret
from agent.core.durable import write_atomic
from agent.health.camera import encode_reference
from agent.service.config import DEFAULT_CONFIG_PATH, AgentConfig, load_toml
from agent.tools.mask_cli import privacy_table
from agent.tools.station_key import KEY_NAME, StationKeyError, load_or_make_key, write_key_files

CONFIG_NAME = DEFAULT_CONFIG_PATH.name
UPLOAD_TOKEN_NAME = "upload-token"  # noqa: S105 - a file name, not a secret
MQTT_PASSWORD_NAME = "mqtt-password"  # noqa: S105 - a file name, not a secret
REFERENCE_NAME = "reference.png"
SERVICE_USER = "station-agent"
DEFAULT_SPOOL = Path("/var/lib/station-agent/spool")
DEFAULT_SIZE = (1280, 720, 30)  # 720p30: what the default ladder tops out at for a USB webcam
FILE_MODE = 0o600
DIR_MODE = 0o750

# key in the config -> (command-line flag, roster column)
FIELDS = {
    "station_id": ("--station-id", "station_id"),
    "capture.source": ("--camera", "camera"),
    "capture.width": ("--width", "width"),
    "capture.height": ("--height", "height"),
    "capture.fps": ("--fps", "fps"),
    "uplink.http.url": ("--upload-url", "upload_url"),
    "uplink.http.token_file": ("--upload-token-file", "upload_token_file"),
    "mqtt.url": ("--mqtt-url", "mqtt_url"),
    "mqtt.username": ("--mqtt-username", "mqtt_username"),
    "mqtt.password_file": ("--mqtt-password-stdin", "mqtt_password_file"),
    "mqtt.prefix": ("--mqtt-prefix", "mqtt_prefix"),
    "spool.path": ("--spool-path", "spool_path"),
}
REQUIRED_COLUMNS = ("station_id", "camera", "upload_url")
ROSTER_COLUMNS = (
    "station_id", "camera", "width", "height", "fps", "upload_url", "upload_token_file",
    "mqtt_url", "mqtt_username", "mqtt_password_file", "mqtt_prefix", "spool_path",
    "name", "region", "address", "lat", "lon",  # for the control centre (control/roster.py)
)  # fmt: skip
INT_COLUMNS = ("width", "height", "fps")


class ProvisionError(Exception):
    """Values the technician can fix: `problems` holds every one found (all of a roster's),
    each one line naming where it came from; str() is the first."""

    def __init__(self, *problems: str) -> None:
        super().__init__(problems[0] if problems else "invalid input")
        self.problems = list(problems) or [str(self)]


@dataclass(frozen=True)
class StationValues:
    station_id: str
    camera: str
    upload_url: str
    width: int = DEFAULT_SIZE[0]
    height: int = DEFAULT_SIZE[1]
    fps: int = DEFAULT_SIZE[2]
    upload_token: SecretStr | None = None
    mqtt_url: str | None = None
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_prefix: str | None = None
    spool_path: Path = DEFAULT_SPOOL
    allow_insecure: bool = False  # credentials over http:// / mqtt:// (test set-ups only)


def config_data(values: StationValues, install_dir: Path, reference: bool) -> dict[str, Any]:
    """The config as a TOML-shaped dict; secret files named where they will be on the box."""
    http: dict[str, Any] = {"url": values.upload_url}
    if values.upload_token is not None:
        http["token_file"] = str(install_dir / UPLOAD_TOKEN_NAME)
        if values.allow_insecure and values.upload_url.startswith("http://"):
            http["allow_insecure"] = True
    data: dict[str, Any] = {
        "station_id": values.station_id,
        "capture": {
            "source": values.camera,
            "width": values.width,
            "height": values.height,
            "fps": values.fps,
        },
        "spool": {
            "path": str(values.spool_path),
            "signing_key_file": str(install_dir / KEY_NAME),
        },
        "uplink": {"http": http},
    }
    if values.mqtt_url:
        mqtt: dict[str, Any] = {"url": values.mqtt_url}
        if values.mqtt_username:
            mqtt["username"] = values.mqtt_username
        if values.mqtt_password is not None:
            mqtt["password_file"] = str(install_dir / MQTT_PASSWORD_NAME)
            if values.allow_insecure and values.mqtt_url.startswith("mqtt://"):
                mqtt["allow_insecure"] = True
        if values.mqtt_prefix:
            mqtt["prefix"] = values.mqtt_prefix
        data["mqtt"] = mqtt
    if reference:
        data["health"] = {"reference_image": REFERENCE_NAME}
    return data


def validate(values: StationValues, install_dir: Path, name_of: Callable[[str], str]) -> None:
    """Raises ProvisionError naming the flag/column (`name_of(config key)`) of every bad
    value."""
    problems: list[str] = []
    if values.mqtt_password is not None and not values.mqtt_url:
        problems.append(f"{name_of('mqtt.url')}: an MQTT password needs an MQTT URL")
    in_clear = (
        ("uplink.http.url", "an upload token", "https://", values.upload_token, values.upload_url),
        ("mqtt.url", "an MQTT password", "mqtts://", values.mqtt_password, values.mqtt_url or ""),
    )
    for key, what, secure, secret, url in in_clear:
        scheme = secure.replace("s://", "://")
        if secret is not None and url.startswith(scheme) and not values.allow_insecure:
            problems.append(
                f"{name_of(key)}: {what} over {scheme} is sent in clear: use {secure} "
                "(or --allow-insecure, for a test set-up only)"
            )
    try:
        AgentConfig.model_validate(config_data(values, install_dir, reference=True))
    except ValidationError as exc:
        for loc, what in describe_validation_errors(exc):
            key = max(
                (k for k in FIELDS if loc == k or loc.startswith(k + ".")), key=len, default=""
            )
            problems.append(f"{name_of(key) if key else loc}: {what}")
    if problems:
        raise ProvisionError(*problems)


def config_text(values: StationValues, data: dict[str, Any], privacy: PrivacyConfig | None) -> str:
    """The config file: a header, then the keys in the order of the example config."""
    _refuse_control_characters(data)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"station-agent configuration for {values.station_id}, written by"))
    doc.add(
        tomlkit.comment(
            f"`station-agent provision` on {stamp}. Check it with `sudo station-agent check`;"
        )
    )
    doc.add(tomlkit.comment("every key is explained in /etc/station-agent/config.example.toml."))
    doc.add(tomlkit.nl())
    for key, value in data.items():  # config_data's order: the example config's
        doc.add(key, value)
    if privacy is not None and privacy.masks:
        doc.add("privacy", privacy_table(privacy))
    return tomlkit.dumps(doc)


def _refuse_control_characters(value: Any) -> None:
    """A tab or line break pasted into a value is a typo: refuse it rather than escape it."""
    if isinstance(value, dict):
        for item in value.values():
            _refuse_control_characters(item)
    elif isinstance(value, str) and any(ord(c) < 32 for c in value):
        raise ProvisionError(f"{value!r}: control characters are not allowed")


def existing_privacy(config_path: Path) -> PrivacyConfig | None:
    """The masks of a config being replaced (re-provisioning must not drop them)."""
    if not config_path.exists():
        return None
    try:
        return PrivacyConfig.model_validate(load_toml(config_path).get("privacy", {}))
    except (ConfigError, ValidationError):
        return None


# --- writing -----------------------------------------------------------------------------------


class Owner(NamedTuple):
    uid: int
    gid: int


def service_owner() -> Owner | None:
    """The service user, when we run as root on a box prepared by install.sh."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return Owner(user.pw_uid, user.pw_gid)


def write_private(path: Path, data: bytes, owner: Owner | None) -> None:
    """0600 from the start, owned by `owner`, durable before this returns."""
    write_atomic(path, data, mode=FILE_MODE, owner=owner)


def ensure_dir(path: Path, owner: Owner | None) -> None:
    if path.is_dir():
        return
    path.mkdir(mode=DIR_MODE, parents=True)
    if owner is not None:
        try:
            os.chown(path, 0, grp.getgrnam(SERVICE_USER).gr_gid)  # root:station-agent 0750
        except KeyError:
            return


def write_station(
    values: StationValues,
    output_dir: Path,
    install_dir: Path,
    reference_frame: np.ndarray | None,
    owner: Owner | None,
    privacy: PrivacyConfig | None = None,
) -> list[Path]:
    """Writes the secret files, the station key (kept when there is one), the reference
    picture and the config; the written paths."""
    ensure_dir(output_dir, owner)
    written: list[Path] = []
    try:
        key, new = load_or_make_key(output_dir)
    except StationKeyError as exc:
        raise ProvisionError(str(exc)) from None
    written += write_key_files(output_dir, key, new, owner)
    secrets = ((UPLOAD_TOKEN_NAME, values.upload_token), (MQTT_PASSWORD_NAME, values.mqtt_password))
    for name, secret in secrets:
        if secret is not None:
            path = output_dir / name
            write_private(path, (secret.get_secret_value() + "\n").encode(), owner)
            written.append(path)
    if reference_frame is not None:  # the room as the camera sees it: masked like the stream
        masked = np.ascontiguousarray(reference_frame).copy()
        PrivacyMasker(privacy or PrivacyConfig()).apply(masked)
        path = output_dir / REFERENCE_NAME
        write_private(path, encode_reference(masked, path.suffix), owner)
        written.append(path)
    data = config_data(values, install_dir, reference=reference_frame is not None)
    config_path = output_dir / CONFIG_NAME
    write_private(config_path, config_text(values, data, privacy).encode(), owner)
    return [config_path, *written]


# --- roster ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RosterRow:
    line: int  # as a spreadsheet numbers it: the header is row 1
    cells: dict[str, str]
    problems: tuple[str, ...] = ()  # of its shape (a station id twice), found by read_roster


def read_roster(path: Path) -> list[RosterRow]:
    """The roster's station rows, each with the problems of its shape (too many cells, a
    station id twice); ProvisionError for the columns (every problem) or no rows at all."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets add a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"{path}: cannot read the roster: {exc}") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    problems = [
        f"{path.name}: unknown column {column!r} (known: {', '.join(ROSTER_COLUMNS)})"
        for column in header
        if column not in ROSTER_COLUMNS
    ]
    problems += [
        f"{path.name}: the column {column!r} is missing"
        for column in REQUIRED_COLUMNS
        if column not in header
    ]
    if problems:
        raise ProvisionError(*problems)
    rows: list[RosterRow] = []
    seen: dict[str, int] = {}
    for raw in reader:
        shape: list[str] = []
        if None in raw:
            shape.append(f"{path.name} row {reader.line_num}: more cells than columns")
        cells = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(cells.values()) and not shape:
            continue  # blank line
        sid = cells.get("station_id", "")
        if sid and sid in seen:
            shape.append(
                f"{path.name} row {reader.line_num}, column station_id: {sid!r} is also in row "
                f"{seen[sid]}"
            )
        seen.setdefault(sid, reader.line_num)
        rows.append(RosterRow(reader.line_num, cells, tuple(shape)))
    if not rows:
        raise ProvisionError(f"{path.name}: no station rows")
    return rows


def roster_values(rows: list[RosterRow], roster_path: Path) -> list[StationValues]:
    """Every row as StationValues; ProvisionError with the problems of all rows at once."""
    stations: list[StationValues] = []
    problems: list[str] = []
    for row in rows:
        try:
            stations.append(row_values(row, roster_path))
        except ProvisionError as exc:
            problems += exc.problems
    if problems:
        raise ProvisionError(*problems)
    return stations


def row_values(row: RosterRow, roster_path: Path) -> StationValues:
    """A roster row as StationValues (secret files read now); ProvisionError with every
    problem of the row, each naming row and column."""
    where = f"{roster_path.name} row {row.line}"
    cells = row.cells
    problems: list[str] = list(row.problems)

    def fail(column: str, what: str) -> None:
        problems.append(f"{where}, column {column}: {what}")

    for column in REQUIRED_COLUMNS:
        if not cells.get(column):
            fail(column, "is empty (required)")
    sizes = dict(zip(INT_COLUMNS, DEFAULT_SIZE, strict=True))
    for column in INT_COLUMNS:
        if cells.get(column):
            try:
                sizes[column] = int(cells[column])
            except ValueError:
                fail(column, f"{cells[column]!r} is not a whole number")

    def secret(column: str, what: str) -> SecretStr | None:
        if not cells.get(column):
            return None
        path = Path(cells[column])
        path = path if path.is_absolute() else roster_path.parent / path
        try:
            return read_secret(path, what, private=False)  # copied into a 0600 file
        except ConfigError as exc:
            fail(column, str(exc))
            return None

    mqtt_password = secret("mqtt_password_file", "MQTT password")
    upload_token = secret("upload_token_file", "upload token")
    values = StationValues(
        station_id=cells["station_id"],
        camera=cells["camera"],
        upload_url=cells["upload_url"],
        width=sizes["width"],
        height=sizes["height"],
        fps=sizes["fps"],
        upload_token=upload_token,
        mqtt_url=cells.get("mqtt_url") or None,
        mqtt_username=cells.get("mqtt_username")
        or (cells["station_id"] if mqtt_password else None),
        mqtt_password=mqtt_password,
        mqtt_prefix=cells.get("mqtt_prefix") or None,
        spool_path=Path(cells["spool_path"]) if cells.get("spool_path") else DEFAULT_SPOOL,
    )
    try:
        validate(values, Path("/etc/station-agent"), lambda key: f"{where}, column {_column(key)}")
    except ProvisionError as exc:  # the rest, without a column reported already
        reported = {problem.split(":", 1)[0] for problem in problems}
        problems += [p for p in exc.problems if p.split(":", 1)[0] not in reported]
    if problems:
        raise ProvisionError(*problems)
    return values


def _column(key: str) -> str:
    return FIELDS[key][1] if key in FIELDS else key
