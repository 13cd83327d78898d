"""The `[mqtt]` section: where the broker is and how this station talks to it.

[mqtt]
url = "mqtts://broker.example.org:8883"   # mqtt:// (plain, 1883) or mqtts:// (TLS, 8883)
ca_file = "/etc/station-agent/mqtt-ca.pem"    # mqtts only; system CAs when absent
cert_file = "/etc/station-agent/mqtt.crt"     # mTLS client certificate (with key_file)
key_file = "/etc/station-agent/mqtt.key"
username = "AZ-0001"
password_file = "/etc/station-agent/mqtt-password"   # read by agent.service.config, never here
allow_insecure = false                    # true: a password over mqtt:// (tests only)
prefix = "stations"
heartbeat_s = 10
keepalive_s = 30
reply_prefix = "stations/AZ-0001/reply"   # default {prefix}/{station_id}/reply: replies only there
command_key_file = "/etc/station-agent/command-key.pub"   # control centre's Ed25519 public key:
                                          # then only commands it signed are run
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from agent.core.config import Section

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}  # IANA registrations for MQTT and MQTT over TLS
# Topic levels may not hold the MQTT wildcards (+ #) and must not be empty; keep to URL-safe
# characters so topics, ACL patterns and shell recipes never need quoting.
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class BrokerAddress(NamedTuple):
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """'mqtts://broker:8883' -> BrokerAddress('broker', 8883, True); ValueError when malformed."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{url!r} must start with mqtt:// or mqtts://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r}: put credentials in username/password_file, not in the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: only mqtt[s]://host[:port] is accepted (no path or query)")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} has no host name")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port (1-65535)") from None
    if port == 0:
        raise ValueError(f"{url!r} has an invalid port (1-65535)")
    return BrokerAddress(
        host, port if port is not None else DEFAULT_PORTS[scheme], scheme == "mqtts"
    )


class MqttConfig(Section):
    url: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = Field(None, min_length=1, max_length=256)
    password_file: Path | None = None  # agent.service.config reads it and hands the password over
    prefix: str = Field("stations", max_length=128)
    heartbeat_s: float = Field(10.0, ge=1.0, le=3600.0)
    keepalive_s: int = Field(30, ge=2, le=3600)
    client_id: str | None = Field(None, min_length=1, max_length=128)
    # Ceiling of the jittered reconnect delay. 60 s: a restarted broker sees 1,000 boxes spread
    # over a minute (about 17 connects/s) while a box still reconnects within a minute.
    reconnect_max_s: float = Field(60.0, ge=1.0, le=600.0)
    # A password over plain mqtt:// crosses the network readable by anyone on the way: refused
    # unless this is set (a test bench, a broker on the same box).
    allow_insecure: bool = False
    # Command replies go only to response topics under this prefix + "/" (default
    # {prefix}/{station_id}/reply, which the documented broker ACL lets the station write).
    reply_prefix: str | None = Field(None, max_length=256)
    # The control centre's Ed25519 public key (PEM or base64 of the 32 raw bytes); read by
    # agent.service.config. When set, only commands it signed are run (docs/telemetry.md).
    command_key_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        parse_broker_url(value)
        return value

    @field_validator("prefix", "reply_prefix")
    @classmethod
    def _valid_prefix(cls, value: str | None) -> str | None:
        if value is not None and not _PREFIX_RE.match(value):
            raise ValueError(
                f"{value!r} must be topic levels of A-Z a-z 0-9 . _ - separated by '/' "
                "(no wildcards, no leading or trailing '/')"
            )
        return value

    @model_validator(mode="after")
    def _tls_files(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mTLS needs both)")
        uses_tls_files = self.ca_file or self.cert_file
        if uses_tls_files and not self.broker.tls:
            raise ValueError("ca_file/cert_file/key_file need an mqtts:// url")
        if self.password_file is not None and not self.broker.tls and not self.allow_insecure:
            raise ValueError(
                "password_file over mqtt:// would send the password in clear: use an mqtts:// "
                "url (or set allow_insecure = true in [mqtt], for a test set-up only)"
            )
        return self

    @property
    def sends_plaintext_credentials(self) -> bool:
        return self.password_file is not None and not self.broker.tls

    @property
    def broker(self) -> BrokerAddress:
        return parse_broker_url(self.url)

    def effective_reply_prefix(self, station_id: str) -> str:
        """Where command replies may go: topics under this + "/"."""
        return self.reply_prefix or f"{self.prefix}/{station_id}/reply"

    def effective_client_id(self, station_id: str) -> str:
        """One id per station: a restarted agent takes over its old session at the broker."""
        return self.client_id or f"station-agent-{station_id}"
