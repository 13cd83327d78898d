"""Configuration: one TOML file, parsed once into typed, validated models.

`load_config(path)` is the only place that reads the config file, and `load_secrets` the only
place that reads the secret files it names. Each stage owns its section model; this module
assembles them. Any problem raises `ConfigError` with one line naming the file, the key and what
is wrong, so the CLI can print it and exit 2.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import AfterValidator, Field, SecretStr, ValidationError

from agent.adapt.ladder import AdaptConfig
from agent.capture.config import CaptureConfig
from agent.capture.privacy import PrivacyConfig
from agent.core.config import (
    CREDENTIALS_ENV,
    ConfigError,
    Secrets,
    Section,
    check_secret_file,
    describe_validation_error,
    read_secret,
)
from agent.core.keys import parse_private_key, parse_public_key
from agent.core.redact import url_secrets
from agent.encode.config import EncodeConfig
from agent.health.config import HealthConfig
from agent.spool.config import SpoolConfig
from agent.telemetry.config import MqttConfig
from agent.uplink.config import UplinkConfig

DEFAULT_CONFIG_PATH = Path("/etc/station-agent/config.toml")
# Letters, digits, . _ - and a letter or digit first: the id names a folder (provision), a URL
# path level and MQTT topic levels, so "." and ".." (the parent folder) must never pass.
STATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
STATION_ID_WORDS = (
    "must be 1 to 64 letters (a-z, A-Z), digits, dots, dashes or underscores, starting with "
    "a letter or a digit, e.g. AZ-0001"
)


def _station_id(value: str) -> str:
    """The station id, refused in plain words (not as the regular expression)."""
    if not re.fullmatch(STATION_ID_PATTERN, value):
        raise ValueError(STATION_ID_WORDS)
    return value


# A station's config is a few KiB (with privacy masks a few tens); a bigger file is not a
# config, and is not read whole.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_COMMAND_KEY_BYTES = 4096  # a PEM public key is ~113 bytes


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
    station_id: Annotated[str, AfterValidator(_station_id)]
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
    data = load_toml(path)
    cfg = config_from_dict(data, source=str(path))
    reference = cfg.health.reference_image
    if reference is not None and not reference.is_absolute():
        # the reference picture is stored with the config: relative to the config's folder
        health = cfg.health.model_copy(update={"reference_image": path.parent / reference})
        cfg = cfg.model_copy(update={"health": health})
    return cfg


def load_toml(path: Path) -> dict[str, Any]:
    """The TOML file at `path` as a dict. Whatever the file holds (binary garbage, thousands of
    nested arrays, a 5,000-digit integer, a gigabyte), the only exception is ConfigError."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise ConfigError(f"{path}: cannot read the file: {exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        limit_kib = MAX_CONFIG_BYTES // 1024
        raise ConfigError(f"{path}: larger than {limit_kib} KiB: not a station config")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except ValueError as exc:  # a value TOML allows but Python refuses: a 5,000-digit integer
        raise ConfigError(f"{path}: not a usable TOML value: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> AgentConfig:
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: values nested too deeply") from None


def load_secrets(cfg: AgentConfig, environ: Mapping[str, str] = os.environ) -> Secrets:
    """The secret files' contents. Each file (the TLS client keys too, which the TLS library
    reads later) must belong to root or the service user and be readable by nobody else.
    Under systemd's LoadCredential= ($CREDENTIALS_DIRECTORY in `environ`), a credential named
    like a secret file's last path component is read instead of that file (TLS client keys
    excepted: the TLS library opens their configured path)."""
    creds = Path(environ[CREDENTIALS_ENV]) if environ.get(CREDENTIALS_ENV) else None
    http = cfg.uplink.http
    values: dict[str, SecretStr] = {}
    if http is not None and http.token_file is not None:
        values["http_token"] = read_secret(
            http.token_file, "upload token", header_safe=True, credentials_dir=creds
        )
    if http is not None and http.password_file is not None:
        values["http_password"] = read_secret(
            http.password_file, "upload password", header_safe=True, credentials_dir=creds
        )
    if http is not None and http.key_file is not None:
        check_secret_file(http.key_file, "upload client key")
    if cfg.mqtt is not None and cfg.mqtt.password_file is not None:
        values["mqtt_password"] = read_secret(
            cfg.mqtt.password_file, "MQTT password", credentials_dir=creds
        )
    if cfg.mqtt is not None and cfg.mqtt.key_file is not None:
        check_secret_file(cfg.mqtt.key_file, "MQTT client key")
    if cfg.spool.signing_key_file is not None:
        values["signing_key"] = read_signing_key(cfg.spool.signing_key_file, creds)
    rtmp_keys = {
        name: read_secret(
            rtmp.key_file, f"{name} stream key", header_safe=True, credentials_dir=creds
        )
        for name, rtmp in cfg.uplink.rtmp_outputs()
    }
    return Secrets(**values, rtmp_keys=rtmp_keys)


def read_signing_key(path: Path, credentials_dir: Path | None = None) -> SecretStr:
    """The station key's line from its secret file, checked to be an Ed25519 private key."""
    text = read_secret(path, "station signing key", credentials_dir=credentials_dir)
    try:
        parse_private_key(text.get_secret_value())
    except ValueError as exc:
        raise ConfigError(
            f"{path}: not a station signing key ({exc}); `station-agent provision` makes one"
        ) from None
    return text


def secret_values(cfg: AgentConfig, secrets: Secrets) -> list[str]:
    """Every credential this station knows, as text: what must never be shown anywhere (the
    secret files' contents and the passwords and tokens inside configured URLs)."""
    found = [s.get_secret_value() for s in (secrets.http_token, secrets.http_password) if s]
    if secrets.mqtt_password is not None:
        found.append(secrets.mqtt_password.get_secret_value())
    if secrets.signing_key is not None:
        found.append(secrets.signing_key.get_secret_value())
    found += [key.get_secret_value() for key in secrets.rtmp_keys.values()]
    urls = [cfg.capture.source]
    urls += [cfg.uplink.http.url] if cfg.uplink.http is not None else []
    urls += [cfg.mqtt.url] if cfg.mqtt is not None else []
    return found + [value for url in urls for value in url_secrets(url)]


def plaintext_credentials(cfg: AgentConfig) -> list[str]:
    """Credentials that cross the network unencrypted because `allow_insecure = true` lets
    them (without it the config is refused): for `check` to warn about."""
    found = []
    http = cfg.uplink.http
    if http is not None and http.sends_plaintext_credentials:
        found.append(f"[uplink.http] sends its credential over {http.url.split(':')[0]}://")
    if cfg.mqtt is not None and cfg.mqtt.sends_plaintext_credentials:
        found.append("[mqtt] sends its password over mqtt://")
    for name, rtmp in cfg.uplink.rtmp_outputs():
        if rtmp.sends_plaintext_credentials:
            found.append(f"[[uplink.rtmp]] {name} sends its stream key over rtmp://")
    return found


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
