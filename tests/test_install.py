"""provisioning/install.sh: --dry-run line by line, then real installs into a temporary root,
twice (the second run changes nothing), from the source tree and offline from a wheelhouse:
`station-agent` on PATH afterwards, pip's progress shown, the locked versions installed."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "provisioning" / "install.sh"
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
TIMEOUT_S = 300
UNIT = "etc/systemd/system/station-agent.service"
WANTS = "etc/systemd/system/multi-user.target.wants/station-agent.service"
LINK = "usr/local/bin/station-agent"  # on PATH
AGENT = "/opt/station-agent/venv/bin/station-agent"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen copy of the parts install.sh reads: the shared checkout changes under our feet
    (other work in progress), which would rightly make a second run reinstall."""
    copy = tmp_path_factory.mktemp("checkout")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy(REPO / name, copy / name)
    for name in ("agent", "systemd", "provisioning", "docs"):
        shutil.copytree(REPO / name, copy / name, ignore=ignore)
    return copy


def run_install(src: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(src / INSTALL.relative_to(REPO)), "--python", PYTHON, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under root with its type, mode and content hash (or symlink target)."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            out[rel] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = f"dir {st.st_mode:o}"
        else:
            out[rel] = f"file {st.st_mode:o} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return out


def locked(constraints: Path) -> dict[str, str]:
    pins = [x for x in constraints.read_text().splitlines() if x and not x.startswith("#")]
    return {canonical(x.split("==")[0]): x.split("==")[1] for x in pins}


def installed(python: Path) -> dict[str, str]:
    """Every distribution in a venv but station-agent, as name -> version."""
    code = "import importlib.metadata as m\nfor d in m.distributions(): print(d.name, d.version)"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    found = dict(line.split() for line in out.stdout.splitlines())
    skip = {"station-agent", "pip", "setuptools", "wheel"}
    return {canonical(k): v for k, v in found.items() if canonical(k) not in skip}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def docs(src: Path) -> list[str]:
    """Every document, as install.sh installs them (the shell's sorted glob)."""
    return sorted(path.name for path in (src / "docs").glob("*.md"))


def test_dry_run_into_an_empty_root_lists_every_action(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = run_install(src, "--dry-run", "--root", str(root), "--no-deps")
    r = os.path.realpath(root)
    expected = [
        f"station-agent install: root {r}, source {src}, dry run: nothing will change",
        "skip: apt-get install python3 python3-venv ffmpeg v4l-utils "
        "(--root: the host's packages are not the root's)",
        "skip: useradd --system station-agent, groups video (--root)",
        f"would: mkdir {r}/opt/station-agent (mode 0755)",
        f"skip: chown root:root {r}/opt/station-agent (--root)",
        f"would: python3 -m venv {r}/opt/station-agent/venv ({PYTHON})",
        "COPY",
        f"would: pip install station-agent into {r}/opt/station-agent/venv from {src}",
        "skip: pip install the dependencies (--no-deps)",
        f"would: record {r}/opt/station-agent/installed-from.sha256",
        f"would: link {r}/{LINK} -> {AGENT} (station-agent on PATH)",
        *[f"would: install {r}/opt/station-agent/docs/{d} (mode 0644)" for d in docs(src)],
        f"would: mkdir {r}/etc/station-agent (mode 0750)",
        f"skip: chown root:station-agent {r}/etc/station-agent (--root)",
        f"would: install {r}/etc/station-agent/config.example.toml (mode 0640)",
        f"would: install {r}/{UNIT} (mode 0644)",
        "skip: systemctl daemon-reload (--root)",
        f"would: enable station-agent: symlink {r}/{WANTS} -> /{UNIT}",
        f"result: {10 + len(docs(src))} change(s) would be made (dry run)",
    ]
    got = lines(result)
    copy_line = got[expected.index("COPY")]
    assert copy_line.startswith("would: copy the package source to /")
    expected[expected.index("COPY")] = copy_line
    assert got == expected
    assert not (root / "opt").exists() and not (root / "etc").exists()


def test_dry_run_on_this_host_changes_nothing(src: Path) -> None:
    before = {p: p.exists() for p in (Path("/opt/station-agent"), Path("/" + UNIT))}
    result = run_install(src, "--dry-run")
    assert {p: p.exists() for p in before} == before
    for line in lines(result):
        assert line.split(":")[0] in {"station-agent install", "would", "ok", "skip", "result"}
    assert "dry run" in lines(result)[0]
    assert any(
        "useradd" in x or x == "ok: user station-agent in group video" for x in lines(result)
    )


def test_bad_arguments_exit_2(src: Path, tmp_path: Path) -> None:
    result = run_install(src, "--bogus", check=False)
    assert result.returncode == 2 and "unknown option: --bogus" in result.stderr
    empty = tmp_path / "wheels"
    empty.mkdir()
    result = run_install(
        src, "--root", str(tmp_path / "r"), "--wheelhouse", str(empty), check=False
    )
    assert result.returncode == 2 and "no station_agent-*.whl" in result.stderr
    (src / "constraints.txt").rename(tmp_path / "constraints.txt")
    try:
        result = run_install(src, "--dry-run", "--root", str(tmp_path / "r"), check=False)
    finally:
        (tmp_path / "constraints.txt").rename(src / "constraints.txt")
    assert result.returncode == 2 and "constraints.txt is missing" in result.stderr


def test_install_from_source_twice_changes_nothing_the_second_time(
    src: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    first = run_install(src, "--root", str(root), "--no-deps")
    assert lines(first)[-2] == f"result: {10 + len(docs(src))} change(s) made"
    venv = root / "opt/station-agent/venv"
    code = "import importlib.metadata as m; print(m.version('station-agent'))"
    meta = subprocess.run(
        [str(venv / "bin/python"), "-c", code], capture_output=True, text=True, timeout=60
    )
    assert meta.stdout.strip() == VERSION
    assert (venv / "bin/station-agent").exists()
    # On PATH: /usr/local/bin/station-agent is the venv's command (inside the root).
    assert os.readlink(root / LINK) == AGENT and os.access(root / AGENT.lstrip("/"), os.X_OK)
    # Progress: pip's own lines, indented under the step that runs it (not 75 s of silence).
    out = lines(first)
    step = next(i for i, x in enumerate(out) if x.startswith("do: pip install station-agent"))
    pip_lines = list(itertools.takewhile(lambda x: x.startswith("    "), out[step + 1 :]))
    assert any(
        re.match(rf"    Successfully installed station-agent-{VERSION}", x) for x in pip_lines
    )
    assert (root / UNIT).read_bytes() == (src / "systemd/station-agent.service").read_bytes()
    assert os.readlink(root / WANTS) == "/" + UNIT
    assert (root / "etc/station-agent").stat().st_mode & 0o777 == 0o750
    assert not (src / "build").exists(), "install.sh must not build inside the repository"

    snapshot = tree_digest(root)
    second = run_install(src, "--root", str(root), "--no-deps")
    assert lines(second)[-1] == "result: already installed, nothing changed"
    assert not [x for x in lines(second) if x.startswith(("do:", "would:"))]
    assert tree_digest(root) == snapshot

    # A drifted file is put back, and only that.
    (root / UNIT).write_text("[Service]\nExecStart=/bin/false\n")
    plan = run_install(src, "--dry-run", "--root", str(root), "--no-deps")
    assert [x for x in lines(plan) if x.startswith("would:")] == [
        f"would: install {root}/{UNIT} (mode 0644)"
    ]
    run_install(src, "--root", str(root), "--no-deps")
    assert tree_digest(root) == snapshot


@pytest.mark.slow
def test_offline_wheelhouse_install_gives_a_working_agent(src: Path, tmp_path: Path) -> None:
    """The whole venv, dependencies included, from a wheelhouse with pip --no-index."""
    build_src = tmp_path / "build-src"  # pip builds in-tree: keep the shared copy clean
    shutil.copytree(src, build_src)
    wheels = tmp_path / "wheels"
    constraints = str(src / "constraints.txt")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), "-c", constraints]
    pip_wheel.append(str(build_src))
    built = subprocess.run(pip_wheel, capture_output=True, text=True, timeout=TIMEOUT_S)
    if built.returncode != 0:
        pytest.skip(f"cannot build a wheelhouse here (no package index?): {built.stderr[-300:]}")

    root = tmp_path / "root"
    first = run_install(src, "--root", str(root), "--wheelhouse", str(wheels))
    assert f"do: pip install station-agent into {root}/opt/station-agent/venv" in first.stdout
    assert "(offline)" in first.stdout
    agent = root / "opt/station-agent/venv/bin/station-agent"
    version = subprocess.run(
        [str(agent), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert version.stdout.startswith(f"station-agent {VERSION}")
    code = "import agent.service.pipeline, av, cv2, paho.mqtt, psutil"
    imports = subprocess.run(
        [str(agent.parent / "python"), "-c", code], capture_output=True, text=True, timeout=60
    )
    assert imports.returncode == 0, imports.stderr
    assert installed(agent.parent / "python") == locked(src / "constraints.txt")
    assert "(the versions in constraints.txt)" in first.stdout

    snapshot = tree_digest(root)
    second = run_install(src, "--root", str(root), "--wheelhouse", str(wheels))
    assert lines(second)[-1] == "result: already installed, nothing changed"
    assert tree_digest(root) == snapshot
