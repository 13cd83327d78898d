"""A real nginx for tests: WebDAV PUT (HTTP/HTTPS, bearer token) and RTMP ingest.

`Nginx` runs Debian's /usr/sbin/nginx in the foreground (`daemon off;`) from a temporary
prefix, on free loopback ports that stay the same across `stop()` / `start()` / `restart()`.

    PUT  {url}/<station>/<file>      -> lands in root/<station>/<file> (dirs created)
    GET  {url}/<station>/<file>      <- served from the same files
    RTMP {rtmp_url}/<stream>         -> recorded to root/rtmp/<stream>-<unix time>.flv

With `bearer_token`, PUT/DELETE/MKCOL without `Authorization: Bearer <token>` get 401;
GET and HEAD stay open. With `tls` the HTTP port speaks HTTPS only (`url` starts with
https://), and `require_client_cert` makes nginx demand a client certificate signed by the CA.
With `rtmp_keys`, RTMP publishing is allowed only under those stream names (nginx-rtmp
`on_publish`, answered by the control server); nginx-rtmp closes a refused publisher's
connection without a word.
A small plain-HTTP control server on its own port tells which configuration generation is
live, so `set_bearer_token()` can reload nginx and wait until the new rules are in force.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import httpx

from tests.peers.pki import Pki
from tests.peers.ports import free_port, port_open

log = logging.getLogger(__name__)

NGINX_BIN = Path("/usr/sbin/nginx")
RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
INSTALL_HINT = "apt-get install -y nginx libnginx-mod-rtmp ffmpeg"

# Startup/shutdown of nginx takes ~50 ms here; 10 s covers a loaded 2-core CI machine.
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
# Graceful reload: old workers finish in-flight requests; idle keep-alive ones quit at once.
RELOAD_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.02
ERROR_LOG_TAIL_LINES = 30
# linux/prctl.h
PR_SET_PDEATHSIG = 1
# RFC 6750 b64token characters: safe to put verbatim inside a quoted nginx string.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]+$")


def check_installed() -> None:
    """Fail loudly (not skip) when the system packages the real-peer tests need are missing."""
    missing = [str(p) for p in (NGINX_BIN, RTMP_MODULE) if not p.exists()]
    if shutil.which("ffprobe") is None:
        missing.append("ffprobe")
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}; install with: {INSTALL_HINT}")


class Nginx:
    """One nginx (HTTP WebDAV ingest + RTMP) under `base_dir`; call `start()` to run it."""

    def __init__(
        self,
        base_dir: Path,
        *,
        bearer_token: str | None = None,
        tls: Pki | None = None,
        require_client_cert: bool = False,
        rtmp_keys: Collection[str] | None = None,
    ) -> None:
        if require_client_cert and tls is None:
            raise ValueError("require_client_cert needs tls")
        _check_token(bearer_token)
        for key in rtmp_keys or ():
            _check_token(key)
        self.rtmp_keys = tuple(rtmp_keys) if rtmp_keys is not None else None
        self.prefix = base_dir / "nginx"
        self.root = base_dir / "ingest"
        self.rtmp_dir = self.root / "rtmp"
        self.conf_path = self.prefix / "nginx.conf"
        self.error_log = self.prefix / "error.log"
        self.access_log = self.prefix / "access.log"
        self.stderr_log = self.prefix / "stderr.log"
        self.http_port = free_port()
        self.rtmp_port = free_port()
        self.control_port = free_port()
        self.bearer_token = bearer_token
        self.tls = tls
        self.require_client_cert = require_client_cert
        self._generation = 0
        self._proc: subprocess.Popen[bytes] | None = None
        for d in (self.prefix, self.root, self.rtmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}/ingest"

    @property
    def rtmp_url(self) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self._write_conf()
        cmd = [str(NGINX_BIN), "-p", str(self.prefix), "-c", str(self.conf_path)]
        cmd += ["-e", str(self.error_log), "-g", "daemon off;"]
        # Own session: a fallback SIGKILL can take the workers down with the master. Output
        # to a file, so a test runner piped into `tail` is not held open by an orphan nginx.
        with self.stderr_log.open("ab") as out:
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=out, start_new_session=True, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        ports = (self.http_port, self.rtmp_port, self.control_port)
        while not all(port_open(p) for p in ports):
            if self._proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self._proc.returncode}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx not listening on {ports}\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)
        log.info("nginx up: %s %s (prefix %s)", self.url, self.rtmp_url, self.prefix)

    def stop(self) -> None:
        """Fast shutdown (SIGTERM): open connections are cut and the ports stop listening."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("nginx %d ignored SIGTERM; killing its process group", proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)
        # The master waits for its workers on SIGTERM, so the listeners are closed by now.

    def restart(self) -> None:
        self.stop()
        self.start()

    def set_bearer_token(self, token: str | None) -> None:
        """Change the PUT/DELETE token; a running nginx is reloaded, ports and files kept."""
        _check_token(token)
        self.bearer_token = token
        if not self.running:
            return
        assert self._proc is not None
        old_workers = set(_children(self._proc.pid))
        self._write_conf()
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while self._live_generation() != self._generation:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not reload\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)
        # Until the old workers are gone they may still accept a new connection.
        while old_workers & set(_children(self._proc.pid)):
            if time.monotonic() > deadline:
                log.warning("old nginx workers still running after reload: %s", old_workers)
                break
            time.sleep(POLL_INTERVAL_S)

    def recordings(self, stream: str) -> list[Path]:
        """Finished RTMP recordings of `stream`, oldest first."""
        done = sorted(self.rtmp_dir.glob(f"{stream}-*.flv.done"))
        return [p.with_suffix("") for p in done]

    def wait_for_recording(self, stream: str, timeout_s: float = 10.0) -> Path:
        """The newest finished recording of `stream` (nginx closes it when the push ends)."""
        deadline = time.monotonic() + timeout_s
        while not (found := self.recordings(stream)):
            if time.monotonic() > deadline:
                files = sorted(p.name for p in self.rtmp_dir.iterdir())
                raise TimeoutError(f"no finished recording of {stream!r} in {files}")
            time.sleep(POLL_INTERVAL_S * 5)
        return found[-1]

    def log_tail(self, lines: int = ERROR_LOG_TAIL_LINES) -> str:
        try:
            text = self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no error log at {self.error_log})"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _live_generation(self) -> int | None:
        try:
            resp = httpx.get(f"http://127.0.0.1:{self.control_port}/generation", timeout=1.0)
            return int(resp.text)
        except (httpx.HTTPError, ValueError):
            return None

    def _write_conf(self) -> None:
        self._generation += 1
        self.conf_path.write_text(self._render_conf())

    def _render_conf(self) -> str:
        p, root = self.prefix, self.root
        auth_ok = f'"Bearer {self.bearer_token}" 1;' if self.bearer_token is not None else ""
        deny = '"00" 1;' if self.bearer_token is not None else ""
        keys = " ".join(f'"{key}" 1;' for key in self.rtmp_keys or ())
        on_publish = ""
        if self.rtmp_keys is not None:
            on_publish = f"on_publish http://127.0.0.1:{self.control_port}/publish;"
        return f"""
load_module {RTMP_MODULE};
user root;
worker_processes 1;
pid {p}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 512; }}
http {{
    access_log {self.access_log};
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    types {{
        application/vnd.apple.mpegurl m3u8;
        video/mp2t ts;
        video/x-flv flv;
        text/plain txt;
    }}
    default_type application/octet-stream;
    map $http_authorization $ingest_auth_ok {{ default 0; {auth_ok} }}
    map $request_method $ingest_is_read {{ default 0; GET 1; HEAD 1; }}
    map "$ingest_auth_ok$ingest_is_read" $ingest_deny {{ default 0; {deny} }}
    map $arg_name $rtmp_key_ok {{ default 0; {keys} }}
    server {{
        listen 127.0.0.1:{self.http_port}{self._tls_listen()};
        {self._tls_conf()}
        location /ingest/ {{
            alias {root}/;
            if ($ingest_deny) {{
                add_header WWW-Authenticate "Bearer" always;
                return 401;
            }}
            dav_methods PUT DELETE MKCOL;
            dav_access user:rw group:rw all:r;
            create_full_put_path on;
            client_max_body_size 0;
            autoindex on;
        }}
    }}
    server {{
        listen 127.0.0.1:{self.control_port};
        access_log off;
        location = /generation {{ return 200 "{self._generation}"; }}
        location = /publish {{ if ($rtmp_key_ok) {{ return 200; }} return 403; }}
    }}
}}
rtmp {{
    server {{
        listen 127.0.0.1:{self.rtmp_port};
        notify_method get;
        application live {{
            {on_publish}
            live on;
            record all;
            record_path {self.rtmp_dir};
            record_unique on;
            exec_record_done /bin/touch $path.done;
        }}
    }}
}}
"""

    def _tls_listen(self) -> str:
        return " ssl" if self.tls is not None else ""

    def _tls_conf(self) -> str:
        if self.tls is None:
            return ""
        conf = f"ssl_certificate {self.tls.server_cert}; ssl_certificate_key {self.tls.server_key};"
        if self.require_client_cert:
            conf += f" ssl_client_certificate {self.tls.ca_cert}; ssl_verify_client on;"
        return conf


def _check_token(token: str | None) -> None:
    if token is not None and not _TOKEN_RE.match(token):
        raise ValueError("bearer token must be RFC 6750 b64token characters")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM nginx when the test process dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _children(pid: int) -> Iterator[int]:
    """Process ids whose parent is `pid` (nginx workers of a master)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process exited while we looked
        if int(fields[1]) == pid:
            yield int(stat.parent.name)


NginxFactory = Callable[..., Nginx]
