"""The .deb (issue 16): scripts/build-deb builds it from a wheelhouse (scripts/build-wheelhouse
for this machine's architecture: the package index, or pip's cache), lintian finds no error in
it, and it works where it lands:

- unpacked (`dpkg -x`, any user): the venv runs on the system's python3.11 and says its version;
- installed by dpkg into a throwaway root with its maintainer scripts run: the root is this
  machine's own file system seen through an overlay (writes go to a temporary folder) in a
  private mount namespace, with its own /run and /tmp (so no systemd is found and nothing on
  the host is started or enabled), as `dpkg --root` runs the scripts chrooted into it. Needs
  root and unshare(1); skipped otherwise. Then removed and purged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
TIMEOUT_S = 600
PYTHON311 = Path("/usr/bin/python3.11")  # the boxes' interpreter, which the venv runs on
SITE = "opt/station-agent/venv/lib/python3.11/site-packages"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="no dpkg-deb (not Debian)"),
]

# Runs as root in a private mount namespace: $1 the work folder, $2 the .deb.
THROWAWAY_ROOT = r"""
set -eu
work=$1 deb=$2 r=$1/root
mkdir -p "$work/upper" "$work/overlay-work" "$r"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/overlay-work" "$r"
mount --rbind /dev "$r/dev"
mount -t proc proc "$r/proc"
mount -t tmpfs tmpfs "$r/run"
mount -t tmpfs tmpfs "$r/tmp"
dpkg --root="$r" --install "$deb"
echo "version: $(chroot "$r" station-agent --version)"
echo "as the service user: $(chroot --userspec=station-agent "$r" station-agent --version)"
echo "groups: $(chroot "$r" id -nG station-agent)"
echo "config folder: $(chroot "$r" stat -c '%U:%G %a' /etc/station-agent)"
echo "enabled: $(readlink "$r/etc/systemd/system/multi-user.target.wants/station-agent.service")"
echo "byte-code: $(find "$r/opt/station-agent/venv" -name '*.pyc' | wc -l)"
gone() { for path in "$@"; do [ -e "$r$path" ] || [ -L "$r$path" ] || printf ' %s' "$path"; done; }
dpkg --root="$r" --remove station-agent
echo "after remove, gone:$(gone /usr/bin/station-agent /opt/station-agent/venv/lib \
  /lib/systemd/system/station-agent.service /etc/station-agent/config.example.toml)"
dpkg --root="$r" --purge station-agent
echo "after purge, gone:$(gone /etc/station-agent/config.example.toml \
  /etc/systemd/system/multi-user.target.wants/station-agent.service)"
echo "status: $(dpkg-query --root="$r" -W -f='${db:Status-Abbrev}' station-agent 2>&1 || true)"
"""


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)


def host_status() -> str:
    """This machine's own dpkg record of station-agent (the test must not change it)."""
    query = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "station-agent"])
    return query.stdout + query.stderr


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("deb")
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    if arch not in ("amd64", "arm64"):
        pytest.skip(f"the boxes are amd64 or arm64, this machine is {arch}")
    wheels = run([str(REPO / "scripts/build-wheelhouse"), arch, str(work / "wheelhouse")])
    if wheels.returncode != 0:
        pytest.skip(f"cannot make the wheelhouse (no package index?): {wheels.stderr[-500:]}")
    built = run(
        [str(REPO / "scripts/build-deb"), "--fast", "--arch", arch]
        + ["--wheelhouse", str(work / "wheelhouse"), "--out", str(work / "dist")]
    )
    assert built.returncode == 0, built.stderr[-3000:]
    path = Path(built.stdout.strip().splitlines()[-1])
    assert path.name == f"station-agent_{VERSION}-1_{arch}.deb"
    return path


def test_the_package_holds_the_box_program_and_nothing_else(deb: Path) -> None:
    fields = {
        name: run(["dpkg-deb", "--field", str(deb), name]).stdout.strip()
        for name in ("Package", "Version", "Depends")
    }
    assert fields["Package"] == "station-agent" and fields["Version"] == f"{VERSION}-1"
    assert "python3.11" in fields["Depends"] and "adduser" in fields["Depends"]
    listing = run(["dpkg-deb", "--contents", str(deb)]).stdout.splitlines()
    paths = {line.split()[5].removeprefix("./"): line for line in listing}
    assert "-> /opt/station-agent/venv/bin/station-agent" in paths["usr/bin/station-agent"]
    assert paths["opt/station-agent/venv/bin/station-agent"].startswith("-rwxr-xr-x root/root")
    assert "lib/systemd/system/station-agent.service" in paths
    for doc in ("copyright", "changelog.Debian.gz", "changelog.gz", "technician-guide.md"):
        assert f"usr/share/doc/station-agent/{doc}" in paths
    assert [p for p in paths if p.startswith("etc/") and not p.endswith("/")] == [
        "etc/station-agent/config.example.toml"  # no secrets, no config.toml
    ]
    assert not [p for p in paths if p.endswith(".pyc")], "postinst compiles, the package ships none"
    assert f"{SITE}/agent/cli.py" in paths
    assert not [p for p in paths if p.startswith((f"{SITE}/control/", f"{SITE}/aiohttp/"))]

    control = deb.parent / "control"
    run(["dpkg-deb", "--control", str(deb), str(control)])
    assert (control / "conffiles").read_text().split() == ["/etc/station-agent/config.example.toml"]
    for script in ("postinst", "prerm", "postrm"):
        assert os.access(control / script, os.X_OK)


@pytest.mark.skipif(not PYTHON311.exists(), reason="no /usr/bin/python3.11 (Debian 12's)")
def test_unpacked_it_runs_on_the_systems_python(deb: Path, tmp_path: Path) -> None:
    """`dpkg -x` (no maintainer scripts): the venv is relocatable enough to run from any
    folder through its own python3 link, and the compiled wheels load."""
    run(["dpkg-deb", "--extract", str(deb), str(tmp_path)])
    python = tmp_path / "opt/station-agent/venv/bin/python3"
    assert os.readlink(python.parent / "python3.11") == str(PYTHON311)
    version = run([str(python), "-m", "agent", "--version"])
    assert version.stdout.startswith(f"station-agent {VERSION}"), version.stderr
    code = "import agent.service.pipeline, av, cv2, numpy, paho.mqtt, pydantic, cryptography"
    imports = run([str(python), "-c", code])
    assert imports.returncode == 0, imports.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="dpkg --root runs the scripts in a chroot: root")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1)")
def test_dpkg_installs_it_into_a_throwaway_root(deb: Path, tmp_path: Path) -> None:
    before = host_status()
    result = run(["unshare", "-m", "sh", "-c", THROWAWAY_ROOT, "sh", str(tmp_path), str(deb)])
    if result.returncode != 0 and "mount" in result.stderr and "version:" not in result.stdout:
        pytest.skip(f"no private overlay mount here: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stdout + result.stderr
    report = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert report["version"].startswith(f"station-agent {VERSION}")
    assert report["as the service user"] == report["version"]
    assert "video" in report["groups"].split()
    assert report["config folder"] == "root:station-agent 750"
    assert report["enabled"] == "/lib/systemd/system/station-agent.service"
    assert int(report["byte-code"]) > 100
    # removed: the program (with the byte-code postinst made) and the unit, not the conffile
    assert report["after remove, gone"].split() == [
        "/usr/bin/station-agent",
        "/opt/station-agent/venv/lib",
        "/lib/systemd/system/station-agent.service",
    ]
    assert report["after purge, gone"].split() == [
        "/etc/station-agent/config.example.toml",
        "/etc/systemd/system/multi-user.target.wants/station-agent.service",
    ]
    assert report["status"].startswith("dpkg-query: no packages found")
    assert host_status() == before, "this machine's own dpkg database is untouched"


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian not installed (scripts/test)")
def test_lintian_finds_no_error(deb: Path) -> None:
    result = run(["lintian", "--tag-display-limit", "0", str(deb)])
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], result.stdout
