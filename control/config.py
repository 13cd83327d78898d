"""The control centre's configuration: one TOML file, one validated section per part.

```toml
[mqtt]
url = "mqtts://broker.example.org:8883"
username = "central"
password_file = "/etc/station-control/mqtt-password"
prefix = "stations"

[store]
path = "/var/lib/station-control/control.sqlite"

[roster]
path = "/etc/station-control/roster.csv"

[web]
host = "127.0.0.1"
port = 8080
users_file = "/etc/station-control/users"

[alarms]
live_lag_segments = 5

[alarms.webhooks]
connectivity = "https://pager.example.org/hooks/stations"

[commands]
key_file = "/etc/station-control/command-key.pem"
```
Every key has a default except `[mqtt] url`; docs/control-centre.md explains each one.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator

from agent.core.config import ConfigError, Section, describe_validation_error
from agent.service.config import load_toml
from agent.telemetry.config import parse_broker_url

DEFAULT_CONFIG_PATH = Path("/etc/station-control/control.toml")
ALARM_CLASSES = ("connectivity", "camera", "uplink", "recording", "clock")


class ControlMqtt(Section):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = Field(None, min_length=1, max_length=256)
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    prefix: str = Field("stations", min_length=1, max_length=128)
    client_id: str = Field("station-control", min_length=1, max_length=128)
    # The broker keeps our subscriptions and queues QoS 1 events while the control centre is
    # away (restart, upgrade) for this long. A day covers an overnight outage of the server.
    session_expiry_s: int = Field(86_400, ge=0, le=7 * 86_400)
    keepalive_s: int = Field(30, ge=5, le=600)
    allow_insecure: bool = False  # a password over plain mqtt:// (a broker on the same box)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        parse_broker_url(value)
        return value

    @model_validator(mode="after")
    def _no_plaintext_password(self) -> ControlMqtt:
        tls = parse_broker_url(self.url).tls
        if self.password_file is not None and not tls and not self.allow_insecure:
            raise ValueError(
                "password_file over mqtt:// would send the password in clear: use mqtts:// "
                "(or allow_insecure = true for a broker on this machine)"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class StoreConfig(Section):
    path: Path = Path("/var/lib/station-control/control.sqlite")
    # Events and alarms of a whole election period stay; samples (rung, lag) are for charts.
    event_retention_days: float = Field(60.0, gt=0, le=3650)
    sample_retention_days: float = Field(7.0, gt=0, le=365)
    # One chart sample per station per minute: 1,440 rows a day; 100,000 stations write
    # 1,700 rows/s, which SQLite in WAL mode takes in one transaction a second.
    sample_every_s: float = Field(60.0, ge=1, le=3600)
    flush_every_s: float = Field(1.0, gt=0, le=60)


class RosterConfig(Section):
    path: Path | None = None


class WebConfig(Section):
    host: str = "127.0.0.1"  # bound to this machine only unless configured
    port: int = Field(8080, ge=0, le=65535)
    users_file: Path = Path("/etc/station-control/users")
    # With a reverse proxy that logs staff in (SSO), the user name it passes in this header;
    # the role still comes from the users file. Only set it when the proxy is the only way in.
    user_header: str | None = Field(None, min_length=1, max_length=64)
    session_hours: float = Field(12.0, gt=0, le=168)
    overview_rows: int = Field(200, ge=10, le=5000)


class AlarmConfig(Section):
    # Heartbeats carry a message expiry of 2 x heartbeat_s; without it we assume the agent's
    # default heartbeat_s = 10.
    heartbeat_expiry_s: float = Field(20.0, ge=2, le=7200)
    segment_s: float = Field(2.0, ge=0.5, le=60)  # the agents' [encode] segment_s
    live_lag_segments: int = Field(5, ge=1, le=10_000)
    backlog_minutes: float = Field(5.0, gt=0, le=1440)
    disk_low_percent: float = Field(10.0, ge=0, le=100)
    # A box clock more than this off the control centre's (both on NTP) is wrong: overlay times
    # and playlist times would mislead viewers.
    clock_max_skew_s: float = Field(30.0, ge=1, le=86_400)
    # Also alarm when a box says NTP does not keep its clock (heartbeat clock section).
    ntp_required: bool = True
    # A station offline for less than this raises no alarm yet (it shows offline at once): a
    # broker restart sends every station's last will, and the stations are back in seconds.
    offline_after_s: float = Field(15.0, ge=0, le=3600)
    # Loss and disk-low events hold their alarm this long after the last one.
    event_hold_s: float = Field(600.0, ge=10, le=86_400)
    # One URL per alarm class (ALARM_CLASSES); each raise and clear is POSTed there as JSON.
    webhooks: dict[str, str] = {}

    @field_validator("webhooks")
    @classmethod
    def _http_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if name not in ALARM_CLASSES:
                raise ValueError(
                    f"webhook {name!r}: not an alarm class ({', '.join(ALARM_CLASSES)})"
                )
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook {name}: {url!r} is not an http(s) URL")
        return value

    @property
    def live_lag_max_s(self) -> float:
        return self.live_lag_segments * self.segment_s


class CommandConfig(Section):
    key_file: Path | None = None  # the control centre's Ed25519 private key (PEM, PKCS#8)
    reply_timeout_s: float = Field(15.0, ge=1, le=120)
    signed_ttl_s: float = Field(60.0, gt=0, le=300)
    snapshot_max_age_s: float = Field(60.0, ge=0, le=3600)


class ControlConfig(Section):
    mqtt: ControlMqtt = ControlMqtt()
    store: StoreConfig = StoreConfig()
    roster: RosterConfig = RosterConfig()
    web: WebConfig = WebConfig()
    alarms: AlarmConfig = AlarmConfig()
    commands: CommandConfig = CommandConfig()


def load_control_config(path: Path) -> ControlConfig:
    data = load_toml(path)
    try:
        cfg = ControlConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None
    return _relative_to(cfg, path.parent)


def _relative_to(cfg: ControlConfig, base: Path) -> ControlConfig:
    """Relative file names in the config are relative to the config file's folder."""

    def fix(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else base / p

    def moved(section: Section, *names: str) -> Section:
        changes = {n: fix(getattr(section, n)) for n in names}
        return section.model_copy(update={k: v for k, v in changes.items() if v is not None})

    return cfg.model_copy(
        update={
            "mqtt": moved(cfg.mqtt, "password_file", "ca_file", "cert_file", "key_file"),
            "store": moved(cfg.store, "path"),
            "roster": moved(cfg.roster, "path"),
            "web": moved(cfg.web, "users_file"),
            "commands": moved(cfg.commands, "key_file"),
        }
    )
