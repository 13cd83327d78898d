"""Where segments and playlists go: an HTTP server that accepts PUT, or a local directory.

Both take `put(name, data, content_type, sha256)` for `{station_id}/{name}` (a name may hold a
folder: `{recording_id}/00000012.ts`) and `get(name)` (the bytes, or None if there is no such
object), and raise `RetryableUploadError` (the link or the server is unwell: try again later) or
`RejectedUploadError` (the server said no: wrong credential, wrong path, too large; keep the
data, tell central staff). Secrets are held as SecretStr and never logged.
"""

from __future__ import annotations

import email.utils
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import httpx

from agent.core.config import Secrets
from agent.core.durable import write_atomic
from agent.core.redact import redact_url
from agent.uplink.config import HttpUplinkConfig

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504, 507}
MAX_RETRY_AFTER_S = 300.0  # a server asking for longer than this is treated as 5 minutes


class RetryableUploadError(Exception):
    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class RejectedUploadError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


Progress = Callable[[int], None]  # called with the bytes sent so far
PROGRESS_CHUNK_BYTES = 32 * 1024


class UploadTarget(Protocol):
    description: str

    def put(
        self,
        name: str,
        data: bytes,
        content_type: str,
        sha256: str | None,
        progress: Progress | None = None,
    ) -> None: ...

    def get(self, name: str) -> bytes | None:
        """The object's bytes; None when the server has no such object (HTTP 404)."""

    def delete(self, name: str) -> None: ...

    def set_credentials(self, secrets: Secrets) -> None:
        """Use these secrets from now on (a technician fixed a credential file: SIGHUP)."""

    def close(self) -> None: ...


def parse_retry_after(value: str | None, now_epoch_s: float) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), clamped to [0, 300]."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when.timestamp() - now_epoch_s, MAX_RETRY_AFTER_S))


class HttpTarget:
    """PUT over one pooled httpx connection (keep-alive: no reconnect per request)."""

    def __init__(
        self, cfg: HttpUplinkConfig, station_id: str, secrets: Secrets, segment_s: float
    ) -> None:
        self._base = f"{cfg.url}/{quote(station_id)}"
        self.description = redact_url(cfg.url)  # shown in events and `check`
        self._cfg = cfg
        # connect within about one segment; a write or a response may take longer on a thin
        # link but must keep moving (httpx applies write/read timeouts per socket operation)
        stall_s = cfg.timeout_s or max(10.0, 5 * segment_s)
        connect_s = min(stall_s, max(2.0, segment_s))
        timeout = httpx.Timeout(connect=connect_s, write=stall_s, read=stall_s, pool=connect_s)
        self._client = httpx.Client(
            timeout=timeout,
            verify=_tls_context(cfg),
            headers={"User-Agent": "station-agent"},
            follow_redirects=False,
        )
        self.set_credentials(secrets)

    def set_credentials(self, secrets: Secrets) -> None:
        """Called again after the technician fixes a credential (SIGHUP reload)."""
        self._auth: httpx.Auth | None = None
        self._bearer: str | None = None
        if secrets.http_token is not None:
            self._bearer = secrets.http_token.get_secret_value()
        elif self._cfg.username and secrets.http_password is not None:
            self._auth = httpx.BasicAuth(
                self._cfg.username, secrets.http_password.get_secret_value()
            )

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {}
        if self._bearer:
            headers["Authorization"] = f"Bearer {self._bearer}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def put(
        self,
        name: str,
        data: bytes,
        content_type: str,
        sha256: str | None,
        progress: Progress | None = None,
    ) -> None:
        headers = self._headers(content_type)
        headers["Content-Length"] = str(len(data))  # also keeps an iterator body unchunked
        if sha256:
            headers["X-Content-SHA256"] = sha256
        if content_type.startswith("application/vnd.apple.mpegurl"):
            headers["Cache-Control"] = "max-age=1"  # the CDN must not hold a live playlist
        body: bytes | Iterator[bytes] = data if progress is None else _chunks(data, progress)
        self._send("PUT", name, body, headers)

    def get(self, name: str) -> bytes | None:
        response = self._send("GET", name, None, self._headers(), absent_ok=True)
        return None if response is None else response.content

    def delete(self, name: str) -> None:
        self._send("DELETE", name, None, self._headers())

    def _send(
        self,
        method: str,
        name: str,
        data: bytes | Iterator[bytes] | None,
        headers: dict[str, str],
        absent_ok: bool = False,
    ) -> httpx.Response | None:
        """The 2xx response; None for a 404 when `absent_ok`; otherwise raises."""
        url = f"{self._base}/{name}"
        try:
            response = self._client.request(
                method, url, content=data, headers=headers, auth=self._auth
            )
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            raise RetryableUploadError(f"{type(exc).__name__}: {exc or 'no detail'}") from exc
        except (httpx.HTTPError, ValueError) as exc:  # the request itself cannot be built
            reason = f"{method} {name}: the request cannot be sent: {type(exc).__name__}"
            raise RejectedUploadError(0, reason) from exc
        status = response.status_code
        if 200 <= status < 300:
            return response
        if status == 404 and absent_ok:
            return None
        reason = f"{method} {name}: HTTP {status} {response.reason_phrase}"
        if status in RETRYABLE_STATUS:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            raise RetryableUploadError(reason, retry_after)
        raise RejectedUploadError(status, reason)

    def close(self) -> None:
        self._client.close()


def _chunks(data: bytes, progress: Progress) -> Iterator[bytes]:
    view = memoryview(data)
    for offset in range(0, len(data), PROGRESS_CHUNK_BYTES):
        yield bytes(view[offset : offset + PROGRESS_CHUNK_BYTES])
        progress(min(len(data), offset + PROGRESS_CHUNK_BYTES))


def _tls_context(cfg: HttpUplinkConfig) -> ssl.SSLContext | bool:
    if not cfg.url.startswith("https://"):
        return True
    context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    if cfg.cert_file is not None and cfg.key_file is not None:
        context.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    return context


class FileTarget:
    """file://DIR: the same layout in a local directory (the demo's upstream)."""

    def __init__(self, url: str, station_id: str) -> None:
        self._dir = Path(url.removeprefix("file://")) / station_id
        self.description = url

    def put(
        self,
        name: str,
        data: bytes,
        content_type: str,
        sha256: str | None,
        progress: Progress | None = None,
    ) -> None:
        path = self._dir / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)  # readers never see half a playlist
        except OSError as exc:
            raise RetryableUploadError(f"writing {path}: {exc}") from exc

    def get(self, name: str) -> bytes | None:
        path = self._dir / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RetryableUploadError(f"reading {path}: {exc}") from exc

    def delete(self, name: str) -> None:
        (self._dir / name).unlink(missing_ok=True)

    def set_credentials(self, secrets: Secrets) -> None:
        """A local folder takes no credential."""

    def close(self) -> None:
        pass


def open_target(
    cfg: HttpUplinkConfig, station_id: str, secrets: Secrets, segment_s: float
) -> UploadTarget:
    if cfg.url.startswith("file://"):
        return FileTarget(cfg.url, station_id)
    return HttpTarget(cfg, station_id, secrets, segment_s)
