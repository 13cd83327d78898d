"""One version source (issue 16): `version` in pyproject.toml, read from the package metadata
(or from pyproject.toml in a source tree never installed); the build (git commit) in the
retained status."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest

import agent
from agent.telemetry import payloads

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
TIMEOUT_S = 60


def test_the_version_has_one_source() -> None:
    assert agent.__version__ == VERSION == metadata.version("station-agent")
    literal = re.compile(r"""__version__\s*=\s*["']""")
    written = [p for p in (REPO / "agent").rglob("*.py") if literal.search(p.read_text())]
    assert written == [], "the version is written only in pyproject.toml"


def test_a_source_tree_that_was_never_installed_reads_pyproject(tmp_path: Path) -> None:
    """The fallback: no package metadata (a plain copy of the tree), the version still comes
    from pyproject.toml; without git and without a BUILD file the build is unknown, and a
    BUILD file (what scripts/build-deb writes) names it."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "agent", tmp_path / "agent", ignore=shutil.ignore_patterns("BUILD"))
    code = "import sys; sys.path[:0] = ['']; import agent as a; print(a.__version__, a.build_id())"
    # -I -S: no PYTHON* variables, no site-packages (where the editable install lives).
    run = [sys.executable, "-I", "-S", "-c", code]
    out = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.stdout.split() == [VERSION, "None"], out.stderr
    (tmp_path / "agent" / "BUILD").write_text("0123456789ab\n")
    out = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.stdout.split() == [VERSION, "0123456789ab"], out.stderr


def test_a_checkout_names_its_commit() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    ).stdout.strip()
    build = agent.build_id()
    assert build is not None and build.removesuffix("-dirty") == head


@pytest.mark.parametrize("build", ["0123456789ab", "0123456789ab-dirty", None])
def test_the_retained_status_carries_the_build(build: str | None) -> None:
    schema = payloads.load_schema("status")
    online = payloads.status_online(
        "AZ-0001",
        at_utc="2026-11-30T07:00:00Z",
        version=VERSION,
        build=build,
        started_utc="2026-11-30T07:00:00Z",
        summary={},
    )
    offline = payloads.status_offline(
        "AZ-0001",
        at_utc="2026-11-30T07:00:00Z",
        version=VERSION,
        build=build,
        started_utc="2026-11-30T07:00:00Z",
        reason="SIGTERM",
        clean=True,
    )
    for body in (online, offline):
        jsonschema.validate(body, schema)
        assert body["build"] == build
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(online | {"build": "not a commit"}, schema)
