"""Secrets from systemd's LoadCredential= (issue 16): with $CREDENTIALS_DIRECTORY set, a
secret file the config names is read from that directory by its last path component when a
credential of that name is there, else from its configured path. Credentials as systemd makes
them (root's, mode 0400, read access for the service user by an ACL, which shows as mode 0440)
are accepted; one that others could change is not."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from agent.core.config import CREDENTIALS_ENV, ConfigError
from agent.core.keys import generate_private_key, private_key_text
from agent.service.config import AgentConfig, config_from_dict, load_secrets
from tests.peers.config import agent_config

# The binary form of a POSIX ACL in the system.posix_acl_access attribute (linux/posix_acl_xattr.h):
# a version, then (tag, permissions, id) entries in tag order.
ACL_VERSION = 2
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
ACL_READ = 4
NO_ID = 0xFFFFFFFF
SERVICE_UID = 4242  # stands for the service user the ACL lets read


def all_secrets_config(tmp_path: Path, folder: Path) -> AgentConfig:
    """Every secret load_secrets reads, each named as a file in `folder`."""
    data = agent_config(
        tmp_path,
        uplink={
            "http": {"url": "https://up.example/in", "token_file": str(folder / "upload-token")},
            "rtmp": [{"url": "rtmps://live.example/app", "key_file": str(folder / "stream-key")}],
        },
        spool={"signing_key_file": str(folder / "signing-key")},
        mqtt={
            "url": "mqtts://broker.example:8883",
            "username": "AZ-0001",
            "password_file": str(folder / "mqtt-password"),
        },
    )
    return config_from_dict(data)


def write_secrets(folder: Path, tag: str, mode: int = 0o600) -> dict[str, str]:
    """One file per secret, each value marked with `tag`; returns name -> value."""
    folder.mkdir(exist_ok=True)
    values = {
        "upload-token": f"{tag}-token",
        "stream-key": f"{tag}-stream",
        "mqtt-password": f"{tag}-mqtt",
        "signing-key": private_key_text(generate_private_key()),
    }
    for name, value in values.items():
        (folder / name).write_text(value + "\n")
        (folder / name).chmod(mode)
    return values


def read_all(cfg: AgentConfig, environ: dict[str, str]) -> dict[str, str]:
    secrets = load_secrets(cfg, environ)
    assert secrets.http_token and secrets.mqtt_password and secrets.signing_key
    return {
        "upload-token": secrets.http_token.get_secret_value(),
        "stream-key": secrets.rtmp_keys["rtmp-1"].get_secret_value(),
        "mqtt-password": secrets.mqtt_password.get_secret_value(),
        "signing-key": secrets.signing_key.get_secret_value(),
    }


def grant_read_acl(path: Path, uid: int) -> None:
    """What systemd's write_credential does: mode 0400, then user:`uid`:r by an ACL."""
    path.chmod(0o400)
    entries = [
        (ACL_USER_OBJ, ACL_READ, NO_ID),
        (ACL_USER, ACL_READ, uid),
        (ACL_GROUP_OBJ, 0, NO_ID),
        (ACL_MASK, ACL_READ, NO_ID),
        (ACL_OTHER, 0, NO_ID),
    ]
    blob = struct.pack("<I", ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(path, "system.posix_acl_access", blob)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on this file system: {exc}")


def test_every_secret_is_read_from_the_credentials_directory(tmp_path: Path) -> None:
    configured = write_secrets(tmp_path / "etc", "file")
    credentials = write_secrets(tmp_path / "credentials", "credential", mode=0o400)
    cfg = all_secrets_config(tmp_path, tmp_path / "etc")
    assert read_all(cfg, {}) == configured  # without the variable: the configured files
    environ = {CREDENTIALS_ENV: str(tmp_path / "credentials")}
    assert read_all(cfg, environ) == credentials


def test_a_secret_without_a_credential_is_read_from_its_file(tmp_path: Path) -> None:
    """Only some secrets may come as credentials; the others stay where the config says."""
    configured = write_secrets(tmp_path / "etc", "file")
    credentials = write_secrets(tmp_path / "credentials", "credential", mode=0o400)
    (tmp_path / "credentials" / "mqtt-password").unlink()
    cfg = all_secrets_config(tmp_path, tmp_path / "etc")
    got = read_all(cfg, {CREDENTIALS_ENV: str(tmp_path / "credentials")})
    assert got == credentials | {"mqtt-password": configured["mqtt-password"]}


def test_a_credential_needs_no_configured_file(tmp_path: Path) -> None:
    """LoadCredential= lets the source stay root-only elsewhere: the configured path may not
    exist at all on the box."""
    credentials = write_secrets(tmp_path / "credentials", "credential", mode=0o400)
    cfg = all_secrets_config(tmp_path, tmp_path / "nowhere")
    assert read_all(cfg, {CREDENTIALS_ENV: str(tmp_path / "credentials")}) == credentials
    with pytest.raises(ConfigError, match="nowhere"):
        load_secrets(cfg, {})


def test_an_empty_variable_means_no_credentials(tmp_path: Path) -> None:
    configured = write_secrets(tmp_path / "etc", "file")
    cfg = all_secrets_config(tmp_path, tmp_path / "etc")
    assert read_all(cfg, {CREDENTIALS_ENV: ""}) == configured


def test_a_credential_with_systemds_acl_is_accepted_and_the_same_mode_elsewhere_is_not(
    tmp_path: Path,
) -> None:
    credentials = write_secrets(tmp_path / "credentials", "credential")
    for name in credentials:
        grant_read_acl(tmp_path / "credentials" / name, SERVICE_UID)
    token = tmp_path / "credentials" / "upload-token"
    assert token.stat().st_mode & 0o777 == 0o440  # the ACL's mask shows as the group's bits
    cfg = all_secrets_config(tmp_path, tmp_path / "etc")
    assert read_all(cfg, {CREDENTIALS_ENV: str(tmp_path / "credentials")}) == credentials

    # The same file named directly by the config is an ordinary secret file: refused.
    direct = config_from_dict(
        agent_config(
            tmp_path, uplink={"http": {"url": "https://up.example/in", "token_file": str(token)}}
        )
    )
    with pytest.raises(ConfigError, match="other users can read"):
        load_secrets(direct, {})


@pytest.mark.parametrize("mode", [0o420, 0o404, 0o402, 0o410])
def test_a_credential_others_could_read_or_change_is_refused(tmp_path: Path, mode: int) -> None:
    write_secrets(tmp_path / "etc", "file")
    write_secrets(tmp_path / "credentials", "credential", mode=0o400)
    token = tmp_path / "credentials" / "upload-token"
    token.chmod(mode)
    cfg = all_secrets_config(tmp_path, tmp_path / "etc")
    with pytest.raises(ConfigError) as caught:
        load_secrets(cfg, {CREDENTIALS_ENV: str(tmp_path / "credentials")})
    assert str(token) in str(caught.value) and "credential-token" not in str(caught.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_credential_of_another_user_is_refused(tmp_path: Path) -> None:
    write_secrets(tmp_path / "etc", "file")
    write_secrets(tmp_path / "credentials", "credential", mode=0o400)
    token = tmp_path / "credentials" / "upload-token"
    os.chown(token, SERVICE_UID + 1, SERVICE_UID + 1)
    cfg = all_secrets_config(tmp_path, tmp_path / "etc")
    with pytest.raises(ConfigError, match="belongs to"):
        load_secrets(cfg, {CREDENTIALS_ENV: str(tmp_path / "credentials")})
