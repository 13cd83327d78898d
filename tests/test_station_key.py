"""The station key on the box: `check`'s signing line, and what a bad key file does at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.config import ConfigError
from agent.core.keys import generate_private_key, public_key_text
from agent.service.config import load_config, load_secrets
from agent.tools.station_key import check_signing, load_or_make_key, write_key_files
from tests.peers.config import agent_config, write_toml


def station(tmp_path: Path, with_key: bool = True) -> tuple[Path, str]:
    """A config (and, `with_key`, the key files provision writes); the key's public text."""
    key, _ = load_or_make_key(tmp_path)
    write_key_files(tmp_path, key, new=True, owner=None)
    spool = {"signing_key_file": str(tmp_path / "signing-key")} if with_key else {}
    config = write_toml(tmp_path / "station.toml", agent_config(tmp_path, spool=spool))
    return config, public_key_text(key.public_key())


def signing_line(config: Path, expected: str | None = None) -> tuple[str, str, str | None]:
    cfg = load_config(config)
    result = check_signing(cfg, load_secrets(cfg), expected)
    return result.result, result.detail, result.fix


def test_a_matching_key_passes_and_names_its_fingerprint(tmp_path: Path) -> None:
    config, public = station(tmp_path)
    result, detail, _ = signing_line(config, expected=public)
    assert result == "PASS"
    assert detail.endswith("(matches signing-key.pub and the expected public key)")
    (tmp_path / "central.pub").write_text(public + "\n")  # a file holding it works too
    assert signing_line(config, expected=str(tmp_path / "central.pub"))[0] == "PASS"


def test_no_key_warns(tmp_path: Path) -> None:
    config, _ = station(tmp_path, with_key=False)
    result, detail, fix = signing_line(config)
    assert result == "WARN" and "not signed" in detail and fix and "provision" in fix


def test_a_key_that_is_not_the_one_central_staff_hold_fails(tmp_path: Path) -> None:
    config, public = station(tmp_path)
    other = public_key_text(generate_private_key().public_key())
    result, detail, _ = signing_line(config, expected=other)
    assert result == "FAIL" and "central staff expect" in detail
    (tmp_path / "signing-key.pub").write_text(other + "\n")  # the .pub beside it changed
    result, detail, _ = signing_line(config)
    assert result == "FAIL" and "is not the public key of" in detail


def test_a_readable_or_damaged_key_file_stops_the_config(tmp_path: Path) -> None:
    config, _ = station(tmp_path)
    key_file = tmp_path / "signing-key"
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_secrets(load_config(config))
    key_file.chmod(0o600)
    key_file.write_text(public_key_text(generate_private_key().public_key()) + "\n")
    with pytest.raises(ConfigError, match="not a station signing key .*public key"):
        load_secrets(load_config(config))


def test_the_key_is_never_part_of_an_error_or_the_checks_data(tmp_path: Path) -> None:
    config, _ = station(tmp_path)
    line = (tmp_path / "signing-key").read_text().strip()
    cfg = load_config(config)
    secrets = load_secrets(cfg)
    result = check_signing(cfg, secrets, None)
    assert line not in str(result.as_dict())
    assert secrets.signing_key is not None and line not in repr(secrets)
