"""Releases (issue 16): upper bounds on every dependency and a lock file inside them, a
changelog entry for the version, and a unit whose `systemctl reload` reaches the running
agent's credentials reload. (The version's one source: tests/test_version.py.)"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from tests.peers.agent import AgentProcess, wait_until
from tests.peers.config import agent_config, write_toml

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
UNIT = REPO / "systemd" / "station-agent.service"
TIMEOUT_S = 60


def pins() -> dict[str, str]:
    """constraints.txt as name -> exact version."""
    found = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: not an exact pin: {line!r}"
            found[canonical(name)] = version.strip()
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- dependencies: bounds and the lock -------------------------------------------------------


def runtime_requirements() -> list[Requirement]:
    return [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]


def test_every_dependency_has_an_upper_bound_on_its_major_version() -> None:
    groups = {"runtime": PYPROJECT["project"]["dependencies"]}
    groups["control"] = PYPROJECT["project"]["optional-dependencies"]["control"]
    for group, texts in groups.items():
        for req in map(Requirement, texts):
            uppers = [s for s in req.specifier if s.operator == "<"]
            assert uppers, f"{group}: {req} has no upper bound"
            lowers = [Version(s.version) for s in req.specifier if s.operator == ">="]
            assert lowers and Version(uppers[0].version) > max(lowers), req


def test_the_lock_pins_every_runtime_dependency_inside_its_bounds() -> None:
    locked = pins()
    for req in runtime_requirements():
        name = canonical(req.name)
        assert name in locked, f"constraints.txt lacks {req.name} (run scripts/lock)"
        assert req.specifier.contains(locked[name]), f"{name}=={locked[name]} outside {req}"
    assert "aiohttp" not in locked, "the box's lock holds no control centre dependency"
    assert "station-agent" not in locked


def test_the_test_venv_runs_the_locked_versions() -> None:
    """scripts/bootstrap installs with -c constraints.txt: the tests run what the box gets."""
    for name, version in pins().items():
        assert metadata.version(name) == version, f"{name}: .venv has another version"


def test_the_changelog_has_an_entry_for_this_version() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    heading = re.search(rf"^## \[{re.escape(VERSION)}\] - (\d{{4}}-\d{{2}}-\d{{2}})$", text, re.M)
    assert heading, f"CHANGELOG.md has no '## [{VERSION}] - YYYY-MM-DD' entry"


# --- systemctl reload ------------------------------------------------------------------------


def test_systemctl_reload_makes_the_running_agent_reread_its_secrets(tmp_path: Path) -> None:
    """The unit's ExecReload= as systemd runs it ($MAINPID = the agent) reaches the agent's
    SIGHUP handler: the secret files are read again (a broken one is reported and the old
    credentials kept)."""
    (exec_reload,) = [
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith("ExecReload=")
    ]
    token = tmp_path / "upload-token"
    token.write_text("first-token\n")
    token.chmod(0o600)
    http = {"url": f"file://{tmp_path / 'upstream'}", "token_file": str(token)}
    config = write_toml(tmp_path / "station.toml", agent_config(tmp_path, uplink={"http": http}))
    process = AgentProcess(config).start()
    try:
        assert wait_until(lambda: (tmp_path / "spool" / "index.sqlite").exists(), TIMEOUT_S)
        assert process.proc is not None
        reload = shlex.split(exec_reload.replace("$MAINPID", str(process.proc.pid)))
        subprocess.run(reload, check=True, timeout=TIMEOUT_S)
        assert wait_until(lambda: "credentials reloaded" in process.stderr(), TIMEOUT_S)
        token.chmod(0o644)  # now others can read it: the next reload refuses it
        subprocess.run(reload, check=True, timeout=TIMEOUT_S)
        assert wait_until(lambda: "reload failed" in process.stderr(), TIMEOUT_S)
        assert process.proc.poll() is None, "a reload never stops the agent"
    finally:
        process.signal(signal.SIGTERM)
        process.wait()
    assert "first-token" not in process.stderr()
