"""`station-agent check` against real peers: nginx (PUT with a bearer token), mosquitto with a
password, the synthetic `test:` camera; then each broken variant makes its own line FAIL."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pytest

from agent.capture.sources import grab_frame
from agent.core.keys import generate_private_key
from agent.health.camera import write_reference
from agent.service.config import config_from_dict
from agent.tools import check_cli
from agent.tools.check import (
    CheckOptions,
    CheckResult,
    System,
    check_config,
    check_service,
    judge_picture,
)
from agent.tools.check_net import check_clock, judge_throughput
from agent.tools.station_key import write_key_files
from tests.peers.config import STATION, agent_config, write_toml
from tests.peers.mosquitto import Mosquitto, MosquittoFactory
from tests.peers.nginx import Nginx
from tests.peers.pki import Pki, make_pki
from tests.peers.ports import free_port

TOKEN = "upl0ad-t0ken"  # noqa: S105 - a test credential
MQTT_PASSWORD = "mqtt-s3cret"  # noqa: S105 - a test credential
MASK = {"rect": [0.0, 0.5, 0.25, 1.0]}
ORDER = [
    "config", "camera", "picture", "encoder", "upload", "throughput",
    "mqtt", "clock", "spool", "signing", "service",
]  # fmt: skip


class Station:
    """A good set-up: test camera with a reference picture, a mask, real nginx and mosquitto,
    both over TLS (credentials in clear would be a WARN)."""

    def __init__(self, tmp: Path, nginx: Nginx, broker: Mosquitto, pki: Pki) -> None:
        self.tmp, self.nginx, self.broker, self.pki = tmp, nginx, broker, pki
        for name, secret in (("upload-token", TOKEN), ("mqtt-password", MQTT_PASSWORD)):
            (tmp / name).write_text(secret + "\n")
            (tmp / name).chmod(0o600)
        write_reference(tmp / "reference.png", grab_frame("test:", 320, 240))
        write_key_files(tmp, generate_private_key(), new=True, owner=None)  # as provision does

    def config(self, **changes: Any) -> dict[str, Any]:
        data = agent_config(
            self.tmp,
            uplink={
                "http": {
                    "url": self.nginx.url,
                    "token_file": str(self.tmp / "upload-token"),
                    "ca_file": str(self.pki.ca_cert),
                }
            },
            mqtt={
                "url": self.broker.url,
                "username": STATION,
                "password_file": str(self.tmp / "mqtt-password"),
                "ca_file": str(self.pki.ca_cert),
            },
            health={"reference_image": "reference.png"},
            privacy={"masks": [MASK]},
        )
        data["spool"]["max_bytes"] = "5GB"
        data["spool"]["signing_key_file"] = str(self.tmp / "signing-key")
        for key, value in changes.items():
            section, _, name = key.rpartition("__")
            table = data
            for part in section.split("__") if section else []:
                table = table[part]
            table[name] = value
        return data

    def write(self, **changes: Any) -> Path:
        return write_toml(self.tmp / "config.toml", self.config(**changes))


@pytest.fixture
def station(
    tmp_path: Path, nginx_factory: Callable[..., Nginx], mosquitto_factory: MosquittoFactory
) -> Station:
    pki = make_pki(tmp_path / "pki")
    nginx = nginx_factory(bearer_token=TOKEN, tls=pki)
    broker = mosquitto_factory(users={STATION: MQTT_PASSWORD}, tls=pki)
    return Station(tmp_path, nginx, broker, pki)


def run_check(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:
    parser = argparse.ArgumentParser()
    check_cli.add_parser(parser.add_subparsers())
    snapshots = config.parent / "snapshots"
    args = parser.parse_args(
        ["check", "--config", str(config), "--json", "--snapshot-dir", str(snapshots), *extra]
    )
    code = args.func(args)
    report = json.loads(capsys.readouterr().out)
    return code, report


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_good_setup_passes_every_check_this_machine_can_pass(
    station: Station, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = run_check(station.write(), capsys)
    checks = by_name(report)
    assert [c["name"] for c in report["checks"]] == ORDER
    for name in (
        "config", "camera", "picture", "encoder", "upload", "throughput", "mqtt", "spool",
        "signing",
    ):  # fmt: skip
        assert checks[name]["result"] == "PASS", checks[name]
        assert checks[name]["fix"] is None
    # systemd is not PID 1 in this container: cannot check, which is a WARN and never a FAIL
    assert checks["service"]["result"] == "WARN"
    assert "systemd not running" in checks["service"]["detail"]
    assert checks["clock"]["result"] in ("PASS", "WARN")  # the upload server's Date header
    assert report["ok"] is True and code == 0

    assert checks["camera"]["data"]["width"] == 320 and checks["camera"]["data"]["height"] == 240
    assert checks["camera"]["data"]["fps"] > 10  # 15 asked
    assert checks["encoder"]["data"]["speed"] >= 1.2
    assert checks["throughput"]["data"]["rung"] == "240p15 300k"
    picture = checks["picture"]["data"]
    assert picture["masked_share"] == pytest.approx(0.125, abs=0.01)
    snapshot = cv2.imread(picture["snapshot"])
    assert snapshot is not None and snapshot.shape == (240, 320, 3)
    masked = snapshot[140:230, 10:70]  # inside the mask: the solid grey fill (JPEG: near 64)
    assert abs(float(masked.mean()) - 64) < 12
    assert picture["snapshot"] in checks["picture"]["detail"]
    # the test objects were removed again
    assert not list((station.nginx.root / STATION).glob("check-*"))


def test_text_output_has_a_line_per_check(
    station: Station, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    check_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["check", "--config", str(station.write(capture__source="v4l2:/dev/video99"))]
    )
    assert args.func(args) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line[:4] in ("PASS", "WARN", "FAIL", "SKIP")]
    assert [line.split()[1] for line in lines] == ORDER
    assert "FAIL  camera" in out and "fix: Check that the camera's USB cable" in out
    assert out.splitlines()[-1].startswith("result: ")


BROKEN = {
    "upload url: nothing listening": (
        {"uplink__http__url": f"https://127.0.0.1:{free_port()}/ingest"},
        "upload",
        "upload server cannot be reached",
    ),
    "wrong upload token": ({}, "upload", "upload token is wrong"),
    "wrong mqtt password": ({}, "mqtt", "MQTT username or password is wrong"),
    "spool under a file": ({}, "spool", "is a file, not a folder"),
    "camera device missing": (
        {"capture__source": "v4l2:/dev/video99"},
        "camera",
        "USB cable is plugged in",
    ),
    "camera file missing": ({"capture__source": "file:/nonexistent/camera.mp4"}, "camera", "file"),
}


@pytest.mark.parametrize("variant", list(BROKEN))
def test_broken_setup_fails_the_right_line_with_its_fix(
    variant: str, station: Station, capsys: pytest.CaptureFixture[str]
) -> None:
    changes, failing, fix = BROKEN[variant]
    if variant == "wrong upload token":
        (station.tmp / "upload-token").write_text("not-the-token\n")
    if variant == "wrong mqtt password":
        (station.tmp / "mqtt-password").write_text("not-the-password\n")
    if variant == "spool under a file":
        (station.tmp / "blocker").write_text("a regular file where a folder should be")
        changes = {"spool__path": str(station.tmp / "blocker" / "spool")}
    code, report = run_check(station.write(**changes), capsys)
    checks = by_name(report)
    assert code == 1 and report["ok"] is False
    assert checks[failing]["result"] == "FAIL", checks[failing]
    assert fix in checks[failing]["fix"]
    others = [c for c in report["checks"] if c["result"] == "FAIL" and c["name"] != failing]
    assert others == [], others  # one fault, one FAIL line
    if failing == "camera":
        assert checks["picture"]["result"] == "SKIP"
        assert checks["encoder"]["result"] == "PASS"  # measured on a synthetic picture
    if failing == "upload":
        assert checks["throughput"]["result"] == "SKIP"


def test_invalid_config_is_one_fail_and_the_rest_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_toml(tmp_path / "config.toml", {"station_id": "bad id!"})
    code, report = run_check(config, capsys)
    checks = by_name(report)
    assert code == 1
    assert checks["config"]["result"] == "FAIL" and "station_id" in checks["config"]["detail"]
    for name in (
        "camera", "picture", "encoder", "upload", "throughput", "mqtt", "spool", "signing",
    ):  # fmt: skip
        assert checks[name] == {**checks[name], "result": "SKIP"}
        assert "config invalid" in checks[name]["detail"]
    assert checks["service"]["result"] == "WARN"


# --- pure parts, with the system injected --------------------------------------------------


def small_cfg(**sections: Any) -> Any:
    return config_from_dict(agent_config(Path("/tmp/unused"), **sections))


def test_throughput_maps_to_the_rung_the_controller_would_pick() -> None:
    ladder = [
        {"width": 320, "height": 240, "fps": 15, "bitrate_bps": 300_000},
        {"width": 160, "height": 120, "fps": 10, "bitrate_bps": 100_000},
    ]
    cfg = small_cfg(adapt={"ladder": ladder, "margin": 0.8})
    assert judge_throughput(cfg, 400_000, 1).result == "PASS"  # 0.8 * 400k = 320k >= 300k
    lower = judge_throughput(cfg, 300_000, 1)  # 240k usable: only the 100k rung
    assert lower.result == "WARN" and lower.data["rung"] == "120p10 100k"
    too_slow = judge_throughput(cfg, 100_000, 1)  # 80k usable: nothing fits
    assert too_slow.result == "FAIL" and too_slow.data["rung"] is None


def test_picture_judgement_follows_the_health_thresholds() -> None:
    cfg = small_cfg()
    ref = Path("/etc/station-agent/reference.png")
    dark = judge_picture(cfg, {"dark_fraction": 0.99}, ref, None)
    assert dark[0] == "FAIL" and "light" in (dark[2] or "")
    moved = judge_picture(cfg, {"reference_mismatch": 0.8, "sharpness_ratio": 1.0}, ref, None)
    assert moved[0] == "FAIL" and "take-reference" in (moved[2] or "")
    blurred = judge_picture(cfg, {"reference_mismatch": 0.1, "sharpness_ratio": 0.2}, ref, None)
    assert blurred[0] == "FAIL" and "focus" in (blurred[2] or "")
    assert judge_picture(cfg, {"reference_mismatch": 0.1}, None, None)[0] == "WARN"
    assert (
        judge_picture(cfg, {"reference_mismatch": 0.1, "sharpness_ratio": 0.9}, ref, None)[0]
        == "PASS"
    )


def fake_system(answers: dict[str, tuple[int, str]]) -> System:
    def run(argv: list[str], _timeout_s: float) -> tuple[int, str]:
        return answers.get(" ".join(argv[:2]), (1, ""))

    # NTP from timedatectl (the kernel's state unknown), a time zone set
    return System(
        run=run,
        systemd=lambda: True,
        ntp_synchronized=lambda: None,
        time_zone=lambda: "Europe/Berlin",
    )


def test_service_check_under_systemd() -> None:
    good = fake_system(
        {"systemctl is-enabled": (0, "enabled"), "systemctl is-active": (0, "active")}
    )
    assert check_service(good).result == "PASS"
    stopped = check_service(
        fake_system({"systemctl is-enabled": (0, "enabled"), "systemctl is-active": (3, "failed")})
    )
    assert stopped.result == "FAIL" and "systemctl restart" in (stopped.fix or "")
    disabled = check_service(
        fake_system({"systemctl is-enabled": (1, "disabled"), "systemctl is-active": (3, "")})
    )
    assert disabled.result == "FAIL" and "enable --now" in (disabled.fix or "")


def test_clock_check_uses_timedatectl_when_systemd_runs() -> None:
    synced = fake_system({"timedatectl show": (0, "yes")})
    assert check_clock(None, synced).result == "PASS"
    unsynced: CheckResult = check_clock(None, fake_system({"timedatectl show": (0, "no")}))
    assert unsynced.result == "WARN" and "set-ntp" in (unsynced.fix or "")
    unknown = check_clock(None, System(systemd=lambda: False))
    assert unknown.result == "WARN"


def test_pause_service_stops_it_for_the_checks_and_starts_it_before_the_service_check(
    tmp_path: Path,
) -> None:
    calls: list[str] = []

    def run(argv: list[str], _timeout_s: float) -> tuple[int, str]:
        calls.append(" ".join(argv))
        return 0, {"is-enabled": "enabled", "is-active": "active"}.get(argv[1], "")

    config = write_toml(tmp_path / "config.toml", {"station_id": "bad id!"})
    options = CheckOptions(
        config_path=config, pause_service=True, system=System(run=run, systemd=lambda: True)
    )
    results = check_cli.run_checks(options)
    service_calls = [c for c in calls if c.startswith("systemctl")]
    assert service_calls == [
        "systemctl stop station-agent",
        "systemctl start station-agent",
        "systemctl is-enabled station-agent",
        "systemctl is-active station-agent",
    ]
    assert results[-1].name == "service" and results[-1].result == "PASS"


# --- issue 13: credentials in clear, secret files -----------------------------------------------


def test_credentials_in_clear_fail_the_config_line_and_warn_when_allowed(tmp_path: Path) -> None:
    token = tmp_path / "upload-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    http = {"url": "http://127.0.0.1:9/ingest", "token_file": str(token)}
    refused = write_toml(tmp_path / "refused.toml", agent_config(tmp_path, uplink={"http": http}))
    result, cfg, _ = check_config(refused)
    assert result.result == "FAIL" and cfg is None
    assert "over http://" in result.detail and "allow_insecure" in result.detail
    allowed = agent_config(tmp_path, uplink={"http": http | {"allow_insecure": True}})
    result, cfg, _ = check_config(write_toml(tmp_path / "allowed.toml", allowed))
    assert result.result == "WARN" and cfg is not None
    assert "readable on the network" in result.detail and "https://" in (result.fix or "")


def test_a_secret_file_others_can_read_fails_with_the_chmod(tmp_path: Path) -> None:
    token = tmp_path / "upload-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    http = {"url": "https://127.0.0.1:9/ingest", "token_file": str(token)}
    config = write_toml(tmp_path / "config.toml", agent_config(tmp_path, uplink={"http": http}))
    result, _, _ = check_config(config)
    assert result.result == "FAIL" and str(token) in result.detail
    assert result.fix == f"chmod 600 {token}"
