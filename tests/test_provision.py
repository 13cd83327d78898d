"""`station-agent provision`: flags, roster and pre-staging modes write valid 0600 configs and
secret files, never echo a secret, and name the row and column of a bad roster value."""

from __future__ import annotations

import argparse
import io
import logging
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.core.keys import fingerprint, parse_private_key
from agent.health.camera import read_reference
from agent.service.config import load_config, load_secrets, read_signing_key
from agent.tools import provision_cli
from agent.tools.verify_files import read_keys_file
from tests.peers.config import STATION
from tests.peers.mosquitto import MosquittoFactory
from tests.peers.nginx import Nginx

TOKEN = "t0ken-that-must-not-leak"  # noqa: S105 - a test credential
MQTT_PASSWORD = "passw0rd-that-must-not-leak"  # noqa: S105 - a test credential
EXAMPLE_ROSTER = Path(__file__).parent.parent / "provisioning" / "roster.example.csv"


def provision(argv: list[str], stdin: str = "") -> int:
    parser = argparse.ArgumentParser()
    provision_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["provision", *argv])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO(stdin))
        return int(args.func(args))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_flags_mode_writes_a_valid_private_config_then_checks_it(
    tmp_path: Path,
    nginx_factory: Callable[..., Nginx],
    mosquitto_factory: MosquittoFactory,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    nginx = nginx_factory(bearer_token=TOKEN)
    broker = mosquitto_factory(users={STATION: MQTT_PASSWORD})
    out = tmp_path / "etc"
    code = provision(
        [
            "--station-id",
            STATION,
            "--camera",
            "test:",
            "--width",
            "320",
            "--height",
            "240",
            "--fps",
            "15",
            "--upload-url",
            nginx.url,
            "--upload-token-stdin",
            "--mqtt-url",
            broker.url,
            "--mqtt-password-stdin",
            "--allow-insecure",  # the test nginx and mosquitto speak plain http and mqtt
            "--spool-path",
            str(tmp_path / "spool"),
            "--output-dir",
            str(out),
        ],  # fmt: skip
        stdin=f"{TOKEN}\n{MQTT_PASSWORD}\n",
    )
    printed = capfd.readouterr()
    assert code == 0, printed.out + printed.err  # check ran: nothing FAILs (service: WARN)
    assert "PASS  upload" in printed.out and "PASS  mqtt" in printed.out
    assert "WARN  service" in printed.out
    key_line = read_signing_key(out / "signing-key").get_secret_value()  # the station key
    station_key = fingerprint(parse_private_key(key_line).public_key())
    assert f"PASS  signing     station key {station_key} (matches signing-key.pub)" in printed.out
    assert f"station key fingerprint: {station_key}" in printed.out
    assert key_line not in printed.out + printed.err + caplog.text
    for secret in (TOKEN, MQTT_PASSWORD):
        assert secret not in printed.out and secret not in printed.err
        assert secret not in caplog.text
    config = out / "config.toml"
    for path in (config, out / "upload-token", out / "mqtt-password", out / "reference.png"):
        assert mode(path) == 0o600, path
    assert (out / "upload-token").read_text().strip() == TOKEN
    assert TOKEN not in config.read_text() and MQTT_PASSWORD not in config.read_text()
    cfg = load_config(config)
    secrets = load_secrets(cfg)
    assert cfg.station_id == STATION and cfg.capture.source == "test:"
    assert cfg.mqtt is not None and cfg.mqtt.username == STATION
    assert secrets.mqtt_password is not None
    assert secrets.mqtt_password.get_secret_value() == MQTT_PASSWORD
    assert cfg.health.reference_image == out / "reference.png"
    assert read_reference(out / "reference.png").shape == (240, 320, 3)


def test_existing_config_is_kept_without_force(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = ["--station-id", "AZ-1", "--camera", "test:", "--upload-url", "file:///tmp/up"]
    argv += ["--output-dir", str(tmp_path), "--no-check", "--no-reference"]
    assert provision(argv) == 0
    before = (tmp_path / "config.toml").read_text()
    assert provision([*argv[:1], "AZ-2", *argv[2:]]) == 2
    assert "--force" in capfd.readouterr().err
    assert (tmp_path / "config.toml").read_text() == before
    assert provision(["--station-id", "AZ-2", *argv[2:], "--force"]) == 0
    assert load_config(tmp_path / "config.toml").station_id == "AZ-2"


def test_provisioning_again_keeps_the_station_key(tmp_path: Path) -> None:
    argv = ["--station-id", "AZ-1", "--camera", "test:", "--upload-url", "file:///tmp/up"]
    argv += ["--output-dir", str(tmp_path), "--no-check", "--no-reference"]
    assert provision(argv) == 0
    key = (tmp_path / "signing-key").read_bytes()
    assert mode(tmp_path / "signing-key") == 0o600
    assert provision([*argv, "--force"]) == 0
    assert (tmp_path / "signing-key").read_bytes() == key  # central staff's copy stays right
    (tmp_path / "signing-key").write_text("not a key\n")
    assert provision([*argv, "--force"]) == 2  # never replaced silently


def test_bad_flag_value_names_the_flag(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = provision(
        ["--station-id", "AZ 1/x", "--camera", "test:", "--upload-url", "file:///tmp/up",
         "--output-dir", str(tmp_path), "--no-check", "--no-reference"]
    )  # fmt: skip
    err = capfd.readouterr().err
    assert code == 2
    assert err.startswith("error: --station-id:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "config.toml").exists()


def test_a_secret_cannot_be_given_on_the_command_line(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        provision(["--upload-token", TOKEN])
    with pytest.raises(SystemExit):
        provision(["--mqtt-password", MQTT_PASSWORD])


def roster_dir(tmp_path: Path) -> Path:
    """The example roster with its secret files."""
    folder = tmp_path / "usb"
    (folder / "secrets").mkdir(parents=True)
    (folder / "roster.csv").write_text(EXAMPLE_ROSTER.read_text())
    for n in (1, 2, 3):
        (folder / "secrets" / f"AZ-000{n}.upload-token").write_text(f"token-{n}\n")
        (folder / "secrets" / f"AZ-000{n}.mqtt-password").write_text(f"password-{n}\n")
    return folder


def test_roster_without_station_stages_one_folder_per_row(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    usb = roster_dir(tmp_path)
    staged = tmp_path / "staged"
    assert provision(["--roster", str(usb / "roster.csv"), "--output-dir", str(staged)]) == 0
    assert sorted(p.name for p in staged.iterdir() if p.is_dir()) == [
        "AZ-0001", "AZ-0002", "AZ-0003",
    ]  # fmt: skip
    keys = read_keys_file((staged / "keys.csv").read_text(), "keys.csv")  # for central staff
    assert sorted(keys) == ["AZ-0001", "AZ-0002", "AZ-0003"]
    for n in (1, 2, 3):
        folder = staged / f"AZ-000{n}"
        cfg = load_config(folder / "config.toml")
        assert cfg.station_id == f"AZ-000{n}"
        assert cfg.uplink.http is not None
        # paths name where the files will be on the box, not the staging folder
        assert cfg.uplink.http.token_file == Path("/etc/station-agent/upload-token")
        assert (folder / "upload-token").read_text().strip() == f"token-{n}"
        assert (folder / "mqtt-password").read_text().strip() == f"password-{n}"
        for path in folder.iterdir():
            assert mode(path) == 0o600, path
        assert not (folder / "reference.png").exists()
        assert cfg.spool.signing_key_file == Path("/etc/station-agent/signing-key")
        signing_key = read_signing_key(folder / "signing-key").get_secret_value()
        assert fingerprint(parse_private_key(signing_key).public_key()) == fingerprint(
            keys[f"AZ-000{n}"]
        )
    assert "token-1" not in capfd.readouterr().out


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("AZ-0002,v4l2:/dev/video0,1280", "AZ-0002,v4l2:/dev/video0,12x0"), "row 3, column width"),
        (("https://ingest.example.org/stations,secrets/AZ-0003", "ftp://x,secrets/AZ-0003"),
         "row 4, column upload_url"),
        (("AZ-0002,", "AZ 0002,"), "row 3, column station_id"),
        (("secrets/AZ-0001.mqtt-password", "secrets/missing"), "row 2, column mqtt_password_file"),
        (("AZ-0003,", "AZ-0001,"), "row 4, column station_id"),
    ],
)  # fmt: skip
def test_bad_roster_row_names_row_and_column(
    tmp_path: Path, edit: tuple[str, str], expected: str, capfd: pytest.CaptureFixture[str]
) -> None:
    usb = roster_dir(tmp_path)
    roster = usb / "roster.csv"
    text = roster.read_text()
    assert edit[0] in text
    roster.write_text(text.replace(edit[0], edit[1], 1))
    staged = tmp_path / "staged"
    assert provision(["--roster", str(roster), "--output-dir", str(staged)]) == 2
    err = capfd.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not staged.exists()  # every row is checked before anything is written


def test_roster_with_station_provisions_this_box(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    usb = roster_dir(tmp_path)
    roster = usb / "roster.csv"
    roster.write_text(
        roster.read_text().replace("v4l2:/dev/video0,1280,720,30", "test:,320,240,15")
    )
    out = tmp_path / "etc"
    code = provision(
        ["--roster", str(roster), "--station", "AZ-0002", "--output-dir", str(out), "--no-check"]
    )
    assert code == 0, capfd.readouterr().err
    cfg = load_config(out / "config.toml")
    assert cfg.station_id == "AZ-0002" and cfg.capture.width == 320
    assert cfg.uplink.http is not None and cfg.uplink.http.token_file == out / "upload-token"
    assert load_secrets(cfg).http_token is not None
    assert (out / "reference.png").exists()
    missing = provision(["--roster", str(roster), "--station", "AZ-9999", "--output-dir", str(out)])
    assert missing == 2 and "AZ-9999" in capfd.readouterr().err


# --- issue 13: safe files --------------------------------------------------------------------


@pytest.mark.parametrize("station_id", ["..", ".", ".hidden"])
def test_a_roster_row_cannot_name_a_parent_folder(
    tmp_path: Path, station_id: str, capfd: pytest.CaptureFixture[str]
) -> None:
    usb = roster_dir(tmp_path)
    roster = usb / "roster.csv"
    roster.write_text(roster.read_text().replace("AZ-0002,", f"{station_id},", 1))
    staged = tmp_path / "deep" / "staged"
    assert provision(["--roster", str(roster), "--output-dir", str(staged)]) == 2
    err = capfd.readouterr().err
    assert "row 3, column station_id" in err and len(err.strip().splitlines()) == 1, err
    assert not staged.exists() and not (tmp_path / "deep" / "config.toml").exists()


def test_credentials_in_clear_need_allow_insecure(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = ["--station-id", "AZ-1", "--camera", "test:", "--upload-url", "http://up.example/in"]
    argv += ["--upload-token-stdin", "--output-dir", str(tmp_path), "--no-check", "--no-reference"]
    assert provision(argv, stdin=f"{TOKEN}\n") == 2
    err = capfd.readouterr().err
    assert err.startswith("error: --upload-url:") and "--allow-insecure" in err
    assert TOKEN not in err and not (tmp_path / "config.toml").exists()
    assert provision([*argv, "--allow-insecure"], stdin=f"{TOKEN}\n") == 0
    http = load_config(tmp_path / "config.toml").uplink.http
    assert http is not None and http.allow_insecure


def test_the_reference_picture_is_masked_and_private(tmp_path: Path) -> None:
    from agent.capture.privacy import SOLID_FILL_LEVEL, PrivacyConfig
    from agent.capture.sources import grab_frame
    from agent.tools.provision import StationValues, write_station

    frame = grab_frame("test:", 320, 240)  # colour bars: nothing near the fill's grey
    privacy = PrivacyConfig.model_validate({"masks": [{"rect": [0.0, 0.0, 0.5, 0.5]}]})
    values = StationValues(station_id="AZ-1", camera="test:", upload_url="file:///tmp/up")
    write_station(values, tmp_path, tmp_path, frame, None, privacy)
    reference = read_reference(tmp_path / "reference.png")
    assert mode(tmp_path / "reference.png") == 0o600
    assert (reference[8:112, 8:152] == SOLID_FILL_LEVEL).all(), "the booth is visible"
    assert (reference[130:, 170:] != SOLID_FILL_LEVEL).any()  # outside the mask: the picture
