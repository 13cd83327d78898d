"""`[uplink.*]`: where the segments and playlists go and how to authenticate."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, FilePath, field_validator, model_validator

from agent.core.config import Section
from agent.core.redact import redact_url


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
    # a segment the server refuses (4xx) this many times while it accepts others is set aside:
    # reported once, retried every set_aside_retry_s, never in the way of the live edge. Three
    # refusals a rejected_backoff_s apart tell a refusal that lasts from a server hiccup.
    refused_max_attempts: int = Field(3, ge=1, le=100)
    set_aside_retry_s: float = Field(600.0, ge=1, le=86400)  # one request per 10 min per segment
    # A token or password over plain http:// crosses the network readable by anyone on the way:
    # refused unless this is set (a test bench, a server on the same box).
    allow_insecure: bool = False

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not re.match(r"^(https?://[^/@]+(/|$)|file:///?)", value) or redact_url(value) != value:
            raise ValueError(
                f"{redact_url(value)!r} must be an http://, https:// or file:// URL without "
                "user:password (credentials go in token_file or password_file)"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _client_cert_pair(self) -> HttpUplinkConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate)")
        if self.password_file is not None and not self.username:
            raise ValueError("password_file needs a username (basic auth)")
        if self.sends_plaintext_credentials and not self.allow_insecure:
            raise ValueError(
                "a token_file or password_file over http:// would send the credential in "
                "clear: use an https:// url (or set allow_insecure = true in [uplink.http], "
                "for a test set-up only)"
            )
        return self

    @property
    def sends_plaintext_credentials(self) -> bool:
        has_credential = self.token_file is not None or self.password_file is not None
        return has_credential and self.url.startswith("http://")


class RtmpOutputConfig(Section):
    """One `[[uplink.rtmp]]`: a live RTMP(S) stream beside the record (docs/operations.md)."""

    url: str  # rtmp[s]://host[:port]/app: the server's ingest URL without the stream key
    key_file: Path  # the stream key (a secret: 0600, the service user's), one line
    enabled: bool = True
    ca_file: FilePath | None = None  # rtmps://: the CA that signed the server's certificate
    # A stream key over plain rtmp:// is readable on the way, and whoever has it can publish in
    # the station's place: refused unless this is set (a private network, a test bench).
    allow_insecure: bool = False
    # connect, TLS, handshake and publish, all of it: a server that says nothing this long is
    # down for us (platforms answer within a second or two; 10 s covers a slow mobile link)
    connect_timeout_s: float = Field(10.0, ge=1, le=120)
    stall_timeout_s: float = Field(10.0, ge=1, le=120)  # no byte taken this long: reconnect
    # jittered backoff cap between connection attempts: 1,000 boxes retry at <= 100/s
    backoff_max_s: float = Field(10.0, ge=0.5, le=600)
    # the most a picture may wait in the agent before its group of pictures is dropped
    max_lag_s: float = Field(1.0, ge=0.2, le=30)

    @field_validator("url")
    @classmethod
    def _rtmp_url(cls, value: str) -> str:
        if not re.match(r"^rtmps?://[^/@?#]+(/[^?#]*)?$", value) or redact_url(value) != value:
            raise ValueError(
                f"{redact_url(value)!r} must be an rtmp:// or rtmps:// URL (server and "
                "application, e.g. rtmps://live.example.org/live) without user, password or "
                "stream key: the key goes in key_file"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _key_in_clear(self) -> RtmpOutputConfig:
        if self.sends_plaintext_credentials and not self.allow_insecure:
            raise ValueError(
                "over rtmp:// the stream key crosses the network in clear: use an rtmps:// url "
                "(or set allow_insecure = true in this [[uplink.rtmp]], for a private network "
                "or a test set-up only)"
            )
        if self.ca_file is not None and not self.url.startswith("rtmps://"):
            raise ValueError("ca_file is for rtmps:// urls")
        return self

    @property
    def sends_plaintext_credentials(self) -> bool:
        return self.url.startswith("rtmp://")


def rtmp_output_name(index: int) -> str:
    """'rtmp-1' for the first [[uplink.rtmp]] (disabled ones keep their number)."""
    return f"rtmp-{index + 1}"


class UplinkConfig(Section):
    http: HttpUplinkConfig | None = None
    rtmp: list[RtmpOutputConfig] = Field(default_factory=list, max_length=8)

    def rtmp_outputs(self) -> list[tuple[str, RtmpOutputConfig]]:
        """(name, section) of each enabled [[uplink.rtmp]], in the file's order."""
        return [(rtmp_output_name(i), rtmp) for i, rtmp in enumerate(self.rtmp) if rtmp.enabled]
