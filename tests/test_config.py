"""Bad configurations stop the program before anything starts: exit 2, one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.core.config import ConfigError, parse_size
from agent.service.config import load_config
from tests.peers.config import agent_config, write_toml


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(
    ("mutate", "key", "words"),
    [
        (lambda d: d.pop("station_id"), "station_id", "required"),
        # plain words, not the regular expression (issue 16)
        (lambda d: d.update(station_id="bad id/1"), "station_id", "letters (a-z, A-Z), digits"),
        (lambda d: d["capture"].update(fps="thirty"), "capture.fps", "integer"),
        (lambda d: d["capture"].update(fps=240), "capture.fps", "less than or equal"),
        (lambda d: d["capture"].update(width=641), "capture.width", "even"),
        (lambda d: d["capture"].update(source="webcam0"), "capture.source", "must start"),
        (lambda d: d["capture"].update(framerate=30), "capture.framerate", "not a known"),
        (lambda d: d.update(colour="red"), "colour", "not a known"),
        (lambda d: d["spool"].update(max_bytes="lots"), "spool.max_bytes", "not a size"),
        (lambda d: d["encode"].update(segment_s=0.1), "encode.segment_s", "greater than"),
        (lambda d: d["encode"].update(preset="warp"), "encode.preset", "Input should be"),
    ],
)
def test_bad_key_exits_2_with_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: object, key: str, words: str
) -> None:
    data = agent_config(tmp_path)
    mutate(data)  # type: ignore[operator]
    path = write_toml(tmp_path / "station.toml", data)
    code, err = run_cli(["run", "--config", str(path)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0] and f"'{key}'" in lines[0] and words in lines[0], lines[0]
    assert not (tmp_path / "spool").exists(), "nothing may start on a bad config"


def test_unreadable_and_not_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    code, err = run_cli(["run", "--config", str(missing)], capsys)
    assert code == 2 and str(missing) in err and "cannot read" in err
    garbage = tmp_path / "garbage.toml"
    garbage.write_text("station_id = \n[capture\n")
    code, err = run_cli(["run", "--config", str(garbage)], capsys)
    assert code == 2 and "not valid TOML" in err and len(err.strip().splitlines()) == 1


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    data = agent_config(tmp_path)
    data["capture"]["fps"] = 0
    path = write_toml(tmp_path / "station.toml", data)
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "'capture.fps'" in result.stderr


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "provisioning" / "station.example.toml"
    cfg = load_config(example)  # file paths in it need not exist until provisioning
    assert cfg.station_id and cfg.spool.max_bytes == 20 * 10**9
    assert cfg.mqtt is not None and cfg.uplink.http is not None and cfg.privacy.masks
    assert cfg.health.reference_image == example.parent / "reference.png"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("20GB", 20 * 10**9), ("512 MiB", 512 * 2**20), ("1.5GB", 1_500_000_000), (42, 42)],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


def test_secret_file_problems_name_the_file_not_the_content(tmp_path: Path) -> None:
    from agent.service.config import config_from_dict, load_secrets

    token = tmp_path / "token"
    token.write_text("")
    token.chmod(0o600)
    cfg = config_from_dict(
        agent_config(tmp_path, uplink={"http": {"url": "https://x/", "token_file": str(token)}})
    )
    with pytest.raises(ConfigError, match="token.*empty"):
        load_secrets(cfg)
    token.write_text("hunter2\n")
    assert load_secrets(cfg).http_token is not None
    assert "hunter2" not in repr(load_secrets(cfg))


def test_secret_files_with_a_bom_work_and_invisible_characters_are_refused(
    tmp_path: Path,
) -> None:
    from agent.service.config import config_from_dict, load_secrets

    token = tmp_path / "token"
    cfg = config_from_dict(
        agent_config(tmp_path, uplink={"http": {"url": "https://x/", "token_file": str(token)}})
    )
    token.write_bytes("\ufeffs3cret-token\n".encode())  # saved as "UTF-8 with BOM"
    token.chmod(0o600)
    secret = load_secrets(cfg).http_token
    assert secret is not None and secret.get_secret_value() == "s3cret-token"
    token.write_text("s3cret\u00a0token\n")  # a pasted non-breaking space
    with pytest.raises(ConfigError, match="visible ASCII") as caught:
        load_secrets(cfg)
    assert "s3cret" not in str(caught.value) and str(token) in str(caught.value)


def test_mismatched_client_certificate_and_key_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.peers.pki import make_pki

    one, other = make_pki(tmp_path / "one"), make_pki(tmp_path / "other")
    http = {
        "url": "https://127.0.0.1:9/ingest",
        "cert_file": str(one.client_cert),
        "key_file": str(other.client_key),
    }
    path = write_toml(tmp_path / "station.toml", agent_config(tmp_path, uplink={"http": http}))
    code, err = run_cli(["run", "--config", str(path)], capsys)
    assert code == 2 and "KEY_VALUES_MISMATCH" in err and "Traceback" not in err
