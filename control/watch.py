"""`station-control watch`: the overview in a terminal, 80 columns, problems first, for a
staff member on SSH. It reads the dashboard's JSON API (logging in like a browser: the
password is asked for, or read from --password-file), so it shows exactly what the web
overview shows.
"""

from __future__ import annotations

import argparse
import getpass
import http.cookiejar
import json
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any, TextIO

from agent.core.config import ConfigError, read_secret
from control.config import ControlConfig

WIDTH = 80
COLUMNS = ((12, "STATION"), (10, "STATE"), (29, "PROBLEMS"), (9, "QUALITY"), (6, "LAG"),
           (9, "HEARD"))  # fmt: skip
STATE_TITLES = {"offline": "OFFLINE", "stale": "SILENT", "problem": "problem",
                "never_seen": "never seen", "ok": "fine"}  # fmt: skip
ANSI = {"offline": "\x1b[1;31m", "stale": "\x1b[31m", "problem": "\x1b[33m", "ok": ""}
RESET, CLEAR = "\x1b[0m", "\x1b[H\x1b[2J"


def render(ov: dict[str, Any], now_s: float, rows: int, colour: bool = False) -> str:
    """The overview as lines of at most 80 characters: a title, the counts, the table."""
    stamp = datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"station-control  {stamp}"
    total = f"{ov['total']} stations"
    lines = [f"{title}{total:>{WIDTH - len(title)}}"]
    counts = "  ".join(f"{STATE_TITLES[s]} {n}" for s, n in ov["counts"].items())
    lines.append(counts[:WIDTH])
    lines.append(" ".join(f"{name:<{w}}" for w, name in COLUMNS).rstrip())
    for r in ov["rows"][:rows]:
        problems = ", ".join(p["title"] for p in r["problems"])
        lag = "" if r["live_lag_s"] is None else f"{r['live_lag_s']:.0f}s"
        cells = (r["station_id"], STATE_TITLES[r["state"]], problems, r["rung"] or "-", lag,
                 _ago(r["seen_wall_s"], now_s))  # fmt: skip
        line = " ".join(_fit(str(c), w).ljust(w) for (w, _), c in zip(COLUMNS, cells, strict=True))
        line = line.rstrip()
        if colour and ANSI.get(r["state"]):
            line = f"{ANSI[r['state']]}{line}{RESET}"
        lines.append(line)
    hidden = ov["matching"] - min(rows, len(ov["rows"]))
    if hidden > 0:
        lines.append(f"... and {hidden} more (the web overview filters and pages)")
    return "\n".join(lines) + "\n"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _ago(wall_s: float | None, now_s: float) -> str:
    if wall_s is None:
        return "never"
    s = max(0.0, now_s - wall_s)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.0f}h"


class Client:
    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def _open(self, path: str, data: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.base + path, data=data)  # noqa: S310 - http(s) only
        with self.opener.open(request, timeout=30) as response:
            return bytes(response.read())

    def login(self, user: str, password: str) -> None:
        body = urllib.parse.urlencode({"user": user, "password": password}).encode()
        try:
            self._open("/login", body)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise ConfigError(f"{self.base}: wrong user name or password") from None
            raise

    def overview(self, region: str, limit: int) -> dict[str, Any]:
        query = urllib.parse.urlencode({"region": region, "limit": limit})
        return dict(json.loads(self._open(f"/api/overview?{query}")))


def watch(cfg: ControlConfig, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    url = args.url or f"http://{cfg.web.host}:{cfg.web.port}"
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {url!r}: expected http(s)://host:port")
    if args.password_file is not None:
        password = read_secret(args.password_file, "password").get_secret_value()
    else:
        password = getpass.getpass(f"password for {args.user} at {url}: ")
    client = Client(url)
    client.login(args.user, password)
    tty = out.isatty()
    while True:
        rows = args.rows or max(5, shutil.get_terminal_size((WIDTH, 24)).lines - 5)
        try:
            text = render(client.overview(args.region, rows), time.time(), rows, colour=tty)
        except (urllib.error.URLError, OSError) as exc:
            text = f"station-control: cannot reach {url}: {exc}\n"
        out.write((CLEAR if tty else "") + text)
        out.flush()
        if args.once:
            return 0
        time.sleep(args.interval_s)
