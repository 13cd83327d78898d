"""station-agent: the edge agent on the box at every polling station.

The version has one source, `version` in pyproject.toml, read here from the installed package's
metadata (a source tree that was never installed reads pyproject.toml itself). `build_id()` is
the git commit the program was built from (docs/telemetry.md, the status message's `build`).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tomllib
from importlib import metadata, resources
from pathlib import Path

DISTRIBUTION = "station-agent"
# scripts/build-deb writes the commit into this file of the package it builds; a checkout
# has no such file and asks git.
BUILD_FILE = "BUILD"
GIT_TIMEOUT_S = 5.0
_SOURCE_TREE = Path(__file__).resolve().parent.parent


def _version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        with (_SOURCE_TREE / "pyproject.toml").open("rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])


__version__ = _version()


@functools.cache
def build_id() -> str | None:
    """The commit this program was built from: the package's BUILD file (written by
    scripts/build-deb), else `git rev-parse` when running from a checkout, else None. A
    checkout with uncommitted changes to tracked files gets a `-dirty` suffix."""
    stamped = resources.files(__name__).joinpath(BUILD_FILE)
    if stamped.is_file():
        return stamped.read_text(encoding="utf-8").strip() or None
    git = shutil.which("git")
    if git is None or not (_SOURCE_TREE / ".git").exists():
        return None
    return _git_commit(git, _SOURCE_TREE)


def _git_commit(git: str, tree: Path) -> str | None:
    base = [git, "-C", str(tree)]
    try:
        head = subprocess.run(  # noqa: S603 (fixed arguments, no shell)
            [*base, "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(  # noqa: S603
            [*base, "diff", "--quiet", "HEAD", "--"],
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.returncode == 1 else "")
