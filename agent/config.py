"""Configuration: one TOML file, parsed once into typed, validated models.

`load_config(path)` is the only place that reads the config file and the secret files it names.
Each part of the agent receives only its own section. Any problem raises `ConfigError` with one
line naming the file, the key and what is wrong, so the CLI can print it and exit 2.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.capture.health_config import HealthConfig
from agent.capture.privacy import PrivacyConfig
from agent.encode.ladder import AdaptConfig
from agent.telemetry.config import MqttConfig

DEFAULT_CONFIG_PATH = Path("/etc/station-agent/config.toml")
STATION_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
SOURCE_SCHEMES = ("v4l2:", "rtsp://", "rtsps://", "http://", "https://", "file:", "test:")
HW_ENCODERS = ("h264_v4l2m2m", "h264_qsv", "h264_nvenc", "h264_vaapi")

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


class ConfigError(Exception):
    """A configuration problem a person can fix; the message is one line."""


def parse_size(value: object) -> int:
    """'20GB', '512 MiB', 1000000 -> bytes. Decimal units for KB/MB/GB, binary for KiB/MiB/GiB."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '20GB' or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size like '20GB' or a number of bytes")
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size; write e.g. '20GB', '500MB' or '2GiB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


ByteSize = Annotated[int, BeforeValidator(parse_size)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CaptureConfig(Section):
    source: str = "test:"
    width: int = Field(1280, ge=160, le=3840)
    height: int = Field(720, ge=120, le=2160)
    fps: int = Field(30, ge=1, le=60)
    stall_timeout_s: float = Field(5.0, gt=0, le=120)
    reconnect_max_s: float = Field(30.0, ge=1, le=600)

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(SOURCE_SCHEMES):
            raise ValueError(f"{value!r} must start with one of {', '.join(SOURCE_SCHEMES)}")
        return value

    @field_validator("width", "height")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"{value} must be even (H.264 4:2:0)")
        return value


class EncodeConfig(Section):
    encoder: Literal["libx264", "auto", "h264_v4l2m2m", "h264_qsv", "h264_nvenc", "h264_vaapi"] = (
        "libx264"
    )
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = (
        "veryfast"
    )
    segment_s: float = Field(2.0, ge=1.0, le=10.0)
    threads: int = Field(0, ge=0, le=16)  # 0 = libx264 decides


class SpoolConfig(Section):
    path: Path = Path("/var/lib/station-agent/spool")
    max_bytes: ByteSize = Field(20 * 10**9, ge=1_000_000)
    min_free_bytes: ByteSize = Field(500 * 10**6, ge=0)


class HttpUplinkConfig(Section):
    url: str
    token_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    live_window: int = Field(6, ge=3, le=60)  # segments in live.m3u8
    archive_interval_s: float = Field(30.0, ge=0, le=3600)  # archive.m3u8 rewrite interval
    # full-jitter backoff cap: about one segment, so a server that comes back gets the live
    # edge within ~2 segments (1,000 boxes at <= 2 s each is ~500 req/s for a CDN: fine)
    backoff_max_s: float = Field(2.0, ge=0.1, le=600)
    timeout_s: float | None = Field(None, gt=0, le=600)  # stall limit; default 5 segments, >= 10 s
    rejected_backoff_s: float = Field(60.0, ge=0.5, le=3600)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not re.match(r"^(https?://[^/@]+(/|$)|file:///?)", value):
            raise ValueError(
                f"{value!r} must be an http://, https:// or file:// URL without user:password "
                "(credentials go in token_file or password_file)"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _client_cert_pair(self) -> HttpUplinkConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate)")
        if self.password_file is not None and not self.username:
            raise ValueError("password_file needs a username (basic auth)")
        return self


class UplinkConfig(Section):
    http: HttpUplinkConfig | None = None


class WatchdogConfig(Section):
    """Seconds a stage may go without progress before the agent stops its systemd watchdog
    pings (and systemd restarts it). A stage with nothing to do is never stalled."""

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


class Secrets(BaseModel):
    """Secrets read from the files the config names; never logged, never on a command line."""

    model_config = ConfigDict(frozen=True)
    http_token: SecretStr | None = None
    http_password: SecretStr | None = None
    mqtt_password: SecretStr | None = None


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


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem as 'key 'a.b': what is wrong' (+ how many more)."""
    errors = exc.errors()
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "missing":
        what = "is required but missing"
    elif kind == "extra_forbidden":
        what = "is not a known setting (check the spelling)"
    else:
        what = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], dict | list | tuple):
            what += f" (got {first['input']!r})"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"key '{key}': {what}{more}"


def read_secret(path: Path, what: str, header_safe: bool = False) -> SecretStr:
    """Read a secret file (first line, stripped); errors name the file, never the content.
    utf-8-sig: editors on technicians' laptops add a byte-order mark. `header_safe` secrets go
    into HTTP headers, so only visible ASCII is allowed there (a pasted non-breaking space
    would otherwise stop every upload)."""
    try:
        text = path.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read the {what}: {detail}") from None
    if not text:
        raise ConfigError(f"{path}: the {what} file is empty")
    value = text.splitlines()[0].strip()
    if header_safe and not all(33 <= ord(c) <= 126 for c in value):
        raise ConfigError(
            f"{path}: the {what} may only hold visible ASCII characters (no spaces, accents "
            "or invisible characters; retype it in a plain text editor)"
        )
    return SecretStr(value)


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
