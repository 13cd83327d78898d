"""The dashboard over HTTP (a real server, a real broker, a simulated fleet): log-in and roles,
CSRF, the JSON API with a command round trip and its audit record, acknowledging an alarm,
the day's CSV report, webhooks per alarm class, users file and password hashing."""

from __future__ import annotations

import csv
import http.cookiejar
import io
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core.config import ConfigError
from control.web.app import WebServer
from control.web.auth import Sessions, Users, add_user, check_password, hash_password
from tests.peers.agent import wait_until
from tests.peers.control import ControlFactory, SimulatorFactory
from tests.peers.mosquitto import Mosquitto
from tests.peers.ports import free_port

PASSWORD = "correct horse battery"  # noqa: S105 - a test user's password


class Browser:
    """urllib with cookies: what a person's browser does, minus the JavaScript."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.csrf = ""

    def open(self, path: str, data: dict[str, str] | bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:  # fmt: skip
        body = urllib.parse.urlencode(data).encode() if isinstance(data, dict) else data
        url = self.base + path  # http://127.0.0.1:port/...
        request = urllib.request.Request(url, data=body, headers=headers or {})  # noqa: S310
        try:
            with self.opener.open(request, timeout=30) as r:
                return r.status, r.url, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.url, exc.read()

    def login(self, user: str, password: str = PASSWORD) -> int:
        status, _, _ = self.open("/login", {"user": user, "password": password, "next": "/"})
        if status == 200:
            self.csrf = json.loads(self.open("/api/session")[2])["csrf"]
        return status

    def api(self, path: str, body: object | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"X-CSRF-Token": self.csrf, "Content-Type": "application/json"}
        status, _, raw = self.open(path, data, headers if data is not None else {})
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode()


class Hooks(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server interface
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hooks.received.append({"path": self.path, **json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def pager() -> Iterator[str]:
    Hooks.received = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_passwords_are_scrypt_hashes_and_users_reload(tmp_path: Path) -> None:
    stored = hash_password(PASSWORD)
    assert stored.startswith("scrypt$16384$8$1$") and PASSWORD not in stored
    assert check_password(PASSWORD, stored) and not check_password("wrong", stored)
    users_file = tmp_path / "users"
    add_user(users_file, "maria", "operator", PASSWORD)
    assert users_file.stat().st_mode & 0o777 == 0o600
    users = Users(users_file)
    assert users.login("maria", PASSWORD) is not None and users.login("maria", "x") is None
    add_user(users_file, "li", "read-only", PASSWORD)
    assert users.get("li") is not None and users.get("li").role == "read-only"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="user name"):
        add_user(users_file, "a:b", "operator", PASSWORD)
    sessions = Sessions(b"k" * 32, hours=1)
    cookie = sessions.cookie("maria", 1000.0)
    assert sessions.user_of(cookie, 1000.0) == "maria"
    assert sessions.user_of(cookie, 1000.0 + 3601) is None  # expired
    assert sessions.user_of(cookie.replace("maria", "admin"), 1000.0) is None  # forged


def test_dashboard_roles_api_commands_alarms_report_and_webhooks(
    mosquitto: Mosquitto,
    control_factory: ControlFactory,
    simulator_factory: SimulatorFactory,
    pager: str,
    tmp_path: Path,
) -> None:
    users = tmp_path / "control" / "users"
    add_user(users, "maria", "operator", PASSWORD)
    add_user(users, "li", "read-only", PASSWORD)
    svc = control_factory(
        mosquitto,
        alarms={"webhooks": {"camera": f"{pager}/camera", "connectivity": f"{pager}/net"}},
    )
    server = WebServer(svc).start()
    sim = simulator_factory(mosquitto, 4)
    try:
        anonymous = Browser(server.url)
        status, url, _ = anonymous.open("/")
        assert status == 200 and "/login" in url  # redirected to log in
        assert anonymous.api("/api/overview")[0] == 401
        assert anonymous.login("maria", "wrong password") == 401

        reader, operator = Browser(server.url), Browser(server.url)
        assert reader.login("li") == 200 and operator.login("maria") == 200
        assert wait_until(lambda: operator.api("/api/overview")[1]["counts"]["ok"] == 4, 20)

        # Commands: operators only, with the CSRF token, signed off in the audit.
        assert reader.api("/api/stations/SIM-0002/commands/set_rung", {"rung": "480p30"})[0] == 403
        no_token = operator.open("/api/stations/SIM-0002/commands/auto", b"{}",
                                 {"Content-Type": "application/json"})  # fmt: skip
        assert no_token[0] == 403
        status, reply = operator.api("/api/stations/SIM-0002/commands/set_rung", {"rung": "480p30"})
        assert status == 200 and reply["ok"] and reply["result"]["name"] == "480p30 1.2M"
        assert operator.api("/api/stations/SIM-0002/commands/set_rung", {"rung": "x"})[0] == 400
        _, station = operator.api("/api/stations/SIM-0002")
        audit = station["audit"][0]
        assert (audit["user"], audit["command"], audit["args"], audit["ok"]) == (
            "maria", "set_rung", {"rung": "480p30"}, True)  # fmt: skip
        assert audit["result"]["name"] == "480p30 1.2M" and audit["reply_wall_s"] is not None
        assert wait_until(lambda: svc.centre.station("SIM-0002")["rung"] == "480p30", 10)  # type: ignore[index]

        # An alarm: raised, sent to the camera webhook, acknowledged, cleared.
        sim.set_fault("SIM-0001", "dark")
        assert wait_until(lambda: operator.api("/api/alarms")[1]["active"], 10)
        alarm = operator.api("/api/alarms")[1]["active"][0]
        assert (alarm["station_id"], alarm["cause"]) == ("SIM-0001", "camera_dark")
        assert reader.api(f"/api/alarms/{alarm['id']}/ack", {})[0] == 403
        status, acked = operator.api(f"/api/alarms/{alarm['id']}/ack", {})
        assert status == 200 and acked["acked_by"] == "maria"
        sim.set_fault("SIM-0001", None)
        assert wait_until(lambda: not operator.api("/api/alarms")[1]["active"], 10)

        def history() -> list[dict[str, Any]]:
            return list(operator.api("/api/alarms")[1]["history"])

        assert wait_until(lambda: history()[0]["cleared_wall_s"] is not None, 10)  # flushed
        assert history()[0]["acked_by"] == "maria"
        assert wait_until(lambda: len(Hooks.received) == 3, 10)
        assert [(h["path"], h["event"]) for h in Hooks.received] == [
            ("/camera", "raised"), ("/camera", "acknowledged"), ("/camera", "cleared")]  # fmt: skip

        # Pages render; the report has a row per station.
        for path in ("/", "/alarms", "/station/SIM-0001", "/?problem=any&region=North"):
            status, _, body = reader.open(path)
            assert status == 200 and b"station-control" in body, path
        assert b"Pin quality" not in reader.open("/station/SIM-0001")[2]  # read-only: no buttons
        assert b"Pin quality" in operator.open("/station/SIM-0001")[2]
        status, _, body = reader.open("/report.csv")
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert status == 200 and [r["station_id"] for r in rows] == list(sim.stations)
        assert rows[0]["alarms"] == "1"
        assert reader.open("/station/NOPE-1")[0] == 404
    finally:
        server.stop()


def test_signed_commands_and_the_proxy_user_header(
    mosquitto: Mosquitto,
    control_factory: ControlFactory,
    simulator_factory: SimulatorFactory,
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "command-key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip
    )
    key_file.chmod(0o600)
    users = tmp_path / "control" / "users"
    add_user(users, "maria", "operator", PASSWORD)
    svc = control_factory(
        mosquitto,
        commands={"key_file": str(key_file)},
        web={"user_header": "X-Remote-User"},
    )
    server = WebServer(svc).start()
    sim = simulator_factory(mosquitto, 2, command_key=key.public_key())  # checks signatures
    try:
        proxied = Browser(server.url)
        proxied.opener.addheaders = [("X-Remote-User", "maria")]
        status, session = proxied.api("/api/session")
        assert status == 200 and session["role"] == "operator"
        proxied.csrf = session["csrf"]
        assert wait_until(lambda: proxied.api("/api/overview")[1]["counts"]["ok"] == 2, 20)
        status, reply = proxied.api("/api/stations/SIM-0001/commands/restart_capture", {})
        assert status == 200 and reply["ok"], reply
        (audit,) = svc.store.audit(station_id="SIM-0001")
        assert audit.signed and audit.user == "maria" and audit.ok
        assert sim.commands_answered == 1
        stranger = Browser(server.url)
        stranger.opener.addheaders = [("X-Remote-User", "nobody")]
        assert stranger.api("/api/session")[0] == 401  # not in the users file
    finally:
        server.stop()
