"""The dashboard: aiohttp, server-rendered pages, live updates by Server-Sent Events, a JSON
API with the same data, log-in with two roles. No build step: one CSS and one JS file.

Pages: / (overview), /station/{id}, /alarms, /report.csv; live: /events (overview) and
/station/{id}/live; API under /api/ (docs/control-centre.md lists it). Every page but /login
and /static needs a session; every POST needs the session's CSRF token; commands and
acknowledgements need the operator role.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.core.config import ConfigError
from control.centre import STATES, OverviewQuery
from control.commands import OPERATOR_COMMANDS, SNAPSHOT
from control.config import ControlConfig
from control.ingest import Reply
from control.report import day_report_csv, parse_day
from control.service import ControlService
from control.web import pages
from control.web.auth import Sessions, Users, session_key

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
COOKIE = "station_control_session"
LIVE_EVERY_S = 1.0  # SSE: a changed overview goes out at most this often
KEEPALIVE_S = 15.0  # SSE comment line so proxies keep the stream open
STATION_HOURS = 6.0
RUNG_RE = re.compile(r"^[0-9]{3,4}p[0-9]{1,2}$")
STATION_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PUBLIC = ("/login", "/static/")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
NO_PICTURE = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="320" height="180" viewBox="0 0 320 180">'
    '<rect width="320" height="180" fill="#ddd"/><text x="160" y="95" font-family="sans-serif" '
    'font-size="14" text-anchor="middle" fill="#555">no picture from the station</text></svg>'
)
USER: web.RequestKey[dict[str, Any]] = web.RequestKey("user", dict)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Dashboard:
    """The request handlers, bound to one ControlService."""

    def __init__(self, service: ControlService) -> None:
        self.service = service
        self.centre = service.centre
        self.cfg = service.cfg
        self.users = Users(self.cfg.web.users_file)
        self.sessions = Sessions(
            session_key(self.cfg.store.path.parent), self.cfg.web.session_hours
        )
        self._overview_cache: dict[OverviewQuery, tuple[float, dict[str, Any]]] = {}
        self._snapshots: dict[str, Future[Reply]] = {}

    # -- users ---------------------------------------------------------------------------

    def user_of(self, request: web.Request) -> dict[str, Any] | None:
        header = self.cfg.web.user_header
        name: str | None = None
        session = ""
        if header and request.headers.get(header):
            name = request.headers[header]
            session = f"header|{name}"
        else:
            session = request.cookies.get(COOKIE, "")
            name = self.sessions.user_of(session, time.time()) if session else None
        if name is None:
            return None
        user = self.users.get(name)
        if user is None:
            return None
        return {
            "name": user.name,
            "role": user.role,
            "operator": user.operator,
            "csrf": self.sessions.csrf(session),
            "session": session,
        }

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(PUBLIC):
            user = self.user_of(request)
            if user is None:
                if request.path.startswith("/api/"):
                    return web.json_response({"error": "log in first"}, status=401)
                raise web.HTTPSeeOther(f"/login?{_qs({'next': request.path_qs})}")
            request[USER] = user
            if request.method == "POST":
                token = request.headers.get("X-CSRF-Token", "")
                if not token and request.content_type.startswith("application/x-www-form"):
                    token = str((await request.post()).get("csrf", ""))
                if not self.sessions.csrf_ok(user["session"], token):
                    return web.Response(status=403, text="missing or wrong CSRF token")
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def operator(self, request: web.Request) -> dict[str, Any]:
        user: dict[str, Any] = request[USER]
        if not user["operator"]:
            raise web.HTTPForbidden(text="operators only")
        return user

    async def login_form(self, request: web.Request) -> web.Response:
        return _html(pages.login_page(next_url=request.query.get("next", "/")))

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        name, password = str(form.get("user", "")), str(form.get("password", ""))
        next_url = _local(str(form.get("next", "/")))
        loop = asyncio.get_running_loop()
        user = await loop.run_in_executor(None, self.users.login, name, password)
        if user is None:
            log.warning("failed log-in for %r from %s", name[:64], request.remote)
            return _html(pages.login_page("Wrong user name or password.", next_url), status=401)
        log.info("%s logged in from %s", user.name, request.remote)
        response = web.HTTPSeeOther(next_url)
        response.set_cookie(
            COOKIE, self.sessions.cookie(user.name, time.time()), httponly=True,
            samesite="Strict", secure=request.secure, max_age=self.sessions.max_age_s,
        )  # fmt: skip
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE)
        raise response

    # -- overview ------------------------------------------------------------------------

    def query(self, request: web.Request, limit: int | None = None) -> OverviewQuery:
        q = request.query
        state = q.get("state", "")
        return OverviewQuery(
            region=q.get("region", ""),
            problem=q.get("problem", ""),
            state=state if state in STATES else "",
            search=q.get("q", "")[:64],
            limit=limit or self.cfg.web.overview_rows,
        )

    async def overview_data(self, query: OverviewQuery) -> dict[str, Any]:
        """At most one computation per query and second, off the event loop."""
        cached = self._overview_cache.get(query)
        if cached is not None and time.monotonic() - cached[0] < LIVE_EVERY_S:
            return cached[1]
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, self.centre.overview, query)
        if len(self._overview_cache) > 64:
            self._overview_cache.clear()
        self._overview_cache[query] = (time.monotonic(), data)
        return data

    async def overview(self, request: web.Request) -> web.Response:
        data = await self.overview_data(self.query(request))
        return _html(pages.overview_page(data, dict(request.query), request[USER]))

    async def overview_live(self, request: web.Request) -> web.StreamResponse:
        query = self.query(request)
        response = await _sse(request)
        sent_version, sent_s = None, time.monotonic()
        while True:
            data = await self.overview_data(query)
            if data["version"] != sent_version:
                sent_version, sent_s = data["version"], time.monotonic()
                if not await _send(response, pages.overview_fragments(data)):
                    return response
            elif time.monotonic() - sent_s > KEEPALIVE_S:
                sent_s = time.monotonic()
                if not await _send(response, None):
                    return response
            await asyncio.sleep(LIVE_EVERY_S)

    async def api_overview(self, request: web.Request) -> web.Response:
        limit = _int(request.query.get("limit"), self.cfg.web.overview_rows, 100_000)
        return web.json_response(await self.overview_data(self.query(request, limit)))

    # -- station -------------------------------------------------------------------------

    def station_or_404(self, request: web.Request) -> dict[str, Any]:
        sid = request.match_info["sid"]
        st = self.centre.station(sid) if STATION_RE.match(sid) else None
        if st is None:
            raise web.HTTPNotFound(text=f"no station {sid!r}")
        return st

    async def station(self, request: web.Request) -> web.Response:
        st = self.station_or_404(request)
        sid = st["station_id"]
        now_s = time.time()
        since_s = now_s - STATION_HOURS * 3600
        store = self.service.store
        loop = asyncio.get_running_loop()
        events = await loop.run_in_executor(None, store.events, sid, since_s)
        samples = await loop.run_in_executor(None, store.samples, sid, since_s)
        audit = await loop.run_in_executor(None, lambda: store.audit(station_id=sid, limit=20))
        cached = self.service.commander.cached_snapshot(sid)
        html = pages.station_page(
            st, events, samples, audit, request[USER], now_s=now_s, hours=STATION_HOURS,
            snapshot_wall_s=None if cached is None else cached[0],
        )  # fmt: skip
        return _html(html)

    async def station_live(self, request: web.Request) -> web.StreamResponse:
        sid = self.station_or_404(request)["station_id"]
        user = request[USER]
        response = await _sse(request)
        sent, sent_s = "", time.monotonic()
        while True:
            st = self.centre.station(sid)
            if st is None:
                return response
            html = pages.station_fragment(st, time.time(), user)
            if html != sent or time.monotonic() - sent_s > KEEPALIVE_S:
                sent, sent_s = html, time.monotonic()
                if not await _send(response, {"html": html}):
                    return response
            await asyncio.sleep(LIVE_EVERY_S * 2)

    async def api_station(self, request: web.Request) -> web.Response:
        st = self.station_or_404(request)
        sid = st["station_id"]
        hours = min(_float(request.query.get("hours"), STATION_HOURS), 24 * 60)
        since_s = time.time() - hours * 3600
        store = self.service.store
        return web.json_response(
            {
                "station": st,
                "events": [ev.__dict__ for ev in store.events(sid, since_s)],
                "samples": [s.__dict__ for s in store.samples(sid, since_s)],
                "audit": [a.__dict__ for a in store.audit(station_id=sid, limit=50)],
            }
        )

    # -- snapshots -----------------------------------------------------------------------

    async def fetch_snapshot(self, sid: str, user: str) -> Reply:
        """One request per station at a time; others wait for the same reply."""
        future = self._snapshots.get(sid)
        if future is None or future.done():
            future = self.service.commander.send(sid, SNAPSHOT, {}, user)
            self._snapshots[sid] = future
        return await asyncio.wrap_future(future)

    async def snapshot(self, request: web.Request) -> web.Response:
        sid = self.station_or_404(request)["station_id"]
        commander = self.service.commander
        if not commander.snapshot_fresh(sid):
            await self.fetch_snapshot(sid, request[USER]["name"])
        cached = commander.cached_snapshot(sid)
        if cached is None:
            return web.Response(text=NO_PICTURE, content_type="image/svg+xml", status=504)
        return web.Response(body=cached[1], content_type="image/jpeg",
                            headers={"Cache-Control": "no-store"})  # fmt: skip

    async def snapshot_refresh(self, request: web.Request) -> web.Response:
        sid = self.station_or_404(request)["station_id"]
        await self.fetch_snapshot(sid, request[USER]["name"])
        raise web.HTTPSeeOther(f"/station/{sid}")

    # -- commands and acknowledgements ----------------------------------------------------

    async def run_command(self, sid: str, name: str, args: dict[str, Any], user: str) -> Reply:
        if name not in OPERATOR_COMMANDS:
            raise web.HTTPBadRequest(text=f"unknown command {name!r}")
        if name == "set_rung":
            rung = str(args.get("rung", ""))
            if not RUNG_RE.match(rung):
                raise web.HTTPBadRequest(text="rung must look like 720p30")
            args = {"rung": rung}
        else:
            args = {}
        return await asyncio.wrap_future(self.service.commander.send(sid, name, args, user))

    async def command(self, request: web.Request) -> web.Response:
        user = self.operator(request)
        sid = self.station_or_404(request)["station_id"]
        form = await request.post()
        args = {"rung": str(form.get("rung", ""))}
        await self.run_command(sid, str(form.get("command", "")), args, user["name"])
        raise web.HTTPSeeOther(f"/station/{sid}#commands")

    async def api_command(self, request: web.Request) -> web.Response:
        user = self.operator(request)
        sid = self.station_or_404(request)["station_id"]
        try:
            args = await request.json() if request.can_read_body else {}
        except ValueError:
            raise web.HTTPBadRequest(text="the body must be a JSON object") from None
        if not isinstance(args, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object")
        reply = await self.run_command(sid, request.match_info["name"], args, user["name"])
        return web.json_response(
            {"ok": reply.ok, "code": reply.code, "message": reply.message, "result": reply.result}
        )

    async def ack(self, request: web.Request) -> web.Response:
        user = self.operator(request)
        alarm = self.centre.acknowledge(request.match_info["alarm_id"], user["name"])
        if alarm is None:
            raise web.HTTPNotFound(text="no such active alarm")
        if request.path.startswith("/api/"):
            return web.json_response(
                {"acked_by": alarm.acked_by, "acked_wall_s": alarm.acked_wall_s}
            )
        raise web.HTTPSeeOther(request.headers.get("Referer") or "/alarms")

    # -- alarms, report, stats -----------------------------------------------------------

    def _alarm_lists(self, hours: float) -> tuple[list[Any], list[Any]]:
        active = sorted(self.centre.active_alarms(),
                        key=lambda a: (a.acked_by is not None, a.severity != "critical",
                                       -a.started_wall_s))  # fmt: skip
        history = self.service.store.alarms(since_wall_s=time.time() - hours * 3600)
        return active, history

    async def alarms(self, request: web.Request) -> web.Response:
        active, history = self._alarm_lists(24.0)
        return _html(pages.alarms_page(active, history, request[USER]))

    async def api_alarms(self, request: web.Request) -> web.Response:
        from control.centre import alarm_dict

        active, history = self._alarm_lists(_float(request.query.get("hours"), 24.0))
        return web.json_response({"active": [alarm_dict(a) for a in active],
                                  "history": [alarm_dict(a) for a in history]})  # fmt: skip

    async def report(self, request: web.Request) -> web.Response:
        try:
            day = parse_day(request.query.get("day"))
        except ConfigError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(
            None, day_report_csv, self.service.store, self.centre.records(), day
        )
        return web.Response(
            text=text, content_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="stations-{day}.csv"'},
        )  # fmt: skip

    async def api_session(self, request: web.Request) -> web.Response:
        user = request[USER]
        return web.json_response({"user": user["name"], "role": user["role"], "csrf": user["csrf"]})

    async def api_stats(self, request: web.Request) -> web.Response:
        svc = self.service
        return web.json_response({
            "ingest": svc.ingest.counters.as_dict(),
            "connected": svc.ingest.connected.is_set(),
            "duplicates": svc.centre.duplicates,
            "stations": len(svc.centre.stations),
            "active_alarms": len(svc.centre.alarms),
            "webhooks": {"sent": svc.webhooks.sent, "failed": svc.webhooks.failed,
                         "dropped": svc.webhooks.dropped},
        })  # fmt: skip


def make_app(service: ControlService) -> web.Application:
    d = Dashboard(service)
    app = web.Application(middlewares=[d.middleware])
    app.add_routes(
        [
            web.get("/login", d.login_form),
            web.post("/login", d.login),
            web.post("/logout", d.logout),
            web.get("/", d.overview),
            web.get("/events", d.overview_live),
            web.get("/station/{sid}", d.station),
            web.get("/station/{sid}/live", d.station_live),
            web.get("/station/{sid}/snapshot.jpg", d.snapshot),
            web.post("/station/{sid}/snapshot", d.snapshot_refresh),
            web.post("/station/{sid}/command", d.command),
            web.get("/alarms", d.alarms),
            web.post("/alarms/{alarm_id}/ack", d.ack),
            web.get("/report.csv", d.report),
            web.get("/api/session", d.api_session),
            web.get("/api/overview", d.api_overview),
            web.get("/api/stations/{sid}", d.api_station),
            web.post("/api/stations/{sid}/commands/{name}", d.api_command),
            web.get("/api/alarms", d.api_alarms),
            web.post("/api/alarms/{alarm_id}/ack", d.ack),
            web.get("/api/stats", d.api_stats),
            web.static("/static", STATIC),
        ]
    )
    return app


class WebServer:
    """The dashboard on its own thread and event loop (so `serve`, tests and benches share it)."""

    def __init__(self, service: ControlService, host: str | None = None, port: int | None = None):
        self.service = service
        self.host = service.cfg.web.host if host is None else host
        self.port = service.cfg.web.port if port is None else port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> WebServer:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        runner = web.AppRunner(make_app(self.service), handle_signals=False, shutdown_timeout=2)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        server = site._server
        if self.port == 0 and server is not None and getattr(server, "sockets", None):
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._runner is not None:
            runner = self._runner
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def serve(cfg: ControlConfig) -> int:
    from control.cli import stop_on_signals

    stop = stop_on_signals()
    service = ControlService(cfg).start()
    try:
        server = WebServer(service).start()
    except OSError as exc:
        service.stop()
        print(f"cannot listen on {cfg.web.host}:{cfg.web.port}: {exc.strerror}", flush=True)
        return 1
    print(f"station-control: dashboard on {server.url}", flush=True)
    stop.wait()
    server.stop()
    service.stop()
    return 0


# -- helpers ----------------------------------------------------------------------------------


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, content_type="text/html", status=status)


def _qs(values: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(values)


def _local(url: str) -> str:
    """Only this site's paths: no open redirect after log-in."""
    return url if url.startswith("/") and not url.startswith("//") else "/"


def _int(text: str | None, default: int, top: int) -> int:
    return max(1, min(int(text), top)) if text and text.isdigit() else default


def _float(text: str | None, default: float) -> float:
    try:
        return max(0.1, float(text)) if text else default
    except ValueError:
        return default


async def _sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})  # fmt: skip
    response.headers.update(SECURITY_HEADERS)
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, data: dict[str, Any] | None) -> bool:
    """One SSE message (None: a keep-alive comment); False when the browser went away."""
    line = b": keep-alive\n\n" if data is None else f"data: {json.dumps(data)}\n\n".encode()
    try:
        await response.write(line)
    except (ConnectionResetError, RuntimeError):
        return False
    return True
