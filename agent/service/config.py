"""Configuration: one TOML file, parsed once into typed, validated models.

`load_config(path)` is the only place that reads the config file, and `load_secrets` the only
place that reads the secret files it names. Each stage owns its section model; this module
assembles them. Any problem raises `ConfigError` with one line naming the file, the key and what
is wrong, so the CLI can print it and exit 2.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import Field, SecretStr, ValidationError

from agent.adapt.ladder import AdaptConfig
from agent.capture.config import CaptureConfig
from agent.capture.privacy import PrivacyConfig
from agent.core.config import ConfigError, Secrets, Section, describe_validation_error, read_secret
from agent.core.keys import parse_public_key
from agent.encode.config import EncodeConfig
from agent.health.config import HealthConfig
from agent.spool.config import SpoolConfig
from agent.telemetry.config import MqttConfig
from agent.uplink.config import UplinkConfig

DEFAULT_CONFIG_PATH = Path("/etc/station-agent/config.toml")
MAX_COMMAND_KEY_BYTES = 4096  # a PEM public key is ~113 bytes
STATION_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class WatchdogConfig(Section):
    """Seconds a stage may go without progress before the agent stops its systemd watchdog
    pings (and systemd restarts it). A stage with nothing to do is never stalled.

    A restart follows up to WatchdogSec (30 s) later. Origins of the defaults:
    - capture 60: a lost camera is retried with backoff up to capture.reconnect_max_s (30 s) and
      each finished attempt counts as progress; 60 s covers that plus a slow V4L2/RTSP open.
    - encode 20: ten 2-s segments; libx264 veryfast never takes a second per frame unless hung.
    - spool 60: fsync on a worn SD card can take seconds; a full disk is retried (counts as
      progress), only a write that never returns is a hang.
    - uplink 90: while busy, any bytes sent count; 90 s without a single byte is a hung socket
      (httpx timeouts should fire well before, so this only catches what they miss).
    """

    capture_s: float = Field(60.0, ge=1, le=3600)  # a frame, or a camera reopen attempt
    encode_s: float = Field(20.0, ge=1, le=3600)  # an encoded frame
    spool_s: float = Field(60.0, ge=1, le=3600)  # a segment stored while some are waiting
    uplink_s: float = Field(90.0, ge=1, le=3600)  # bytes moving while an upload is running

    def deadlines_s(self) -> dict[str, float]:
        return {
            "capture": self.capture_s,
            "encode": self.encode_s,
            "spool": self.spool_s,
            "uplink": self.uplink_s,
        }


class AgentConfig(Section):
    station_id: Annotated[str, Field(pattern=STATION_ID_PATTERN)]
    capture: CaptureConfig = CaptureConfig()
    encode: EncodeConfig = EncodeConfig()
    spool: SpoolConfig = SpoolConfig()
    uplink: UplinkConfig = UplinkConfig()
    adapt: AdaptConfig = AdaptConfig()
    health: HealthConfig = HealthConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    mqtt: MqttConfig | None = None  # None: heartbeats and events as JSON lines on stdout
    watchdog: WatchdogConfig = WatchdogConfig()


def load_config(path: Path) -> AgentConfig:
    """Read and validate the TOML file at `path`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    cfg = config_from_dict(data, source=str(path))
    reference = cfg.health.reference_image
    if reference is not None and not reference.is_absolute():
        # the reference picture is stored with the config: relative to the config's folder
        health = cfg.health.model_copy(update={"reference_image": path.parent / reference})
        cfg = cfg.model_copy(update={"health": health})
    return cfg


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> AgentConfig:
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def load_secrets(cfg: AgentConfig) -> Secrets:
    http = cfg.uplink.http
    values: dict[str, SecretStr] = {}
    if http is not None and http.token_file is not None:
        values["http_token"] = read_secret(http.token_file, "upload token", header_safe=True)
    if http is not None and http.password_file is not None:
        values["http_password"] = read_secret(
            http.password_file, "upload password", header_safe=True
        )
    if cfg.mqtt is not None and cfg.mqtt.password_file is not None:
        values["mqtt_password"] = read_secret(cfg.mqtt.password_file, "MQTT password")
    return Secrets(**values)


def load_command_key(cfg: AgentConfig) -> Ed25519PublicKey | None:
    """The control centre's public key `[mqtt] command_key_file` names (None without one).
    Anyone may read it, but whoever can write it decides who commands the station: a file
    group or others may write is refused."""
    path = cfg.mqtt.command_key_file if cfg.mqtt is not None else None
    if path is None:
        return None
    try:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read(MAX_COMMAND_KEY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the command key: {exc.strerror or exc}") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{path}: the command key may be changed by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); fix with: chmod go-w {path}"
        )
    try:
        return parse_public_key(data)
    except ValueError as exc:
        raise ConfigError(
            f"{path}: not the control centre's Ed25519 public key ({exc}); "
            "give its PEM or the base64 of its 32 bytes"
        ) from None
