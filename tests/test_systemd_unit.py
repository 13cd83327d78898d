"""The unit file: `systemd-analyze verify` clean and `security` exposure <= 1.5; it grants
write access to exactly what the agent writes.

`verify` checks that ExecStart= is executable and that every unit it depends on exists, so it is
run against a temporary root (`--root`) holding the unit, a stub ExecStart binary at the real
path and a copy of the host's system units; otherwise it would only ever complain that
/opt/station-agent is not installed on the test machine. Unknown keys and unparsable values
are only warnings (exit code 0), so the test requires no output at all.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "station-agent.service"
HOST_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 1.5  # 1.6 before PrivateMounts=yes (issue 13); what remains is listed in the unit
TIMEOUT_S = 60
EXEC_KEYS = ("ExecStart", "ExecReload")  # commands `verify` wants to find in the root

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def unit_values(key: str) -> list[str]:
    return [
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith(key + "=")
    ]


def make_root(tmp_path: Path, unit_text: str, with_binary: bool = True) -> Path:
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/station-agent.service").write_text(unit_text)
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for command in EXEC_KEYS if with_binary else ():
        stub = root / shlex.split(unit_values(command)[0])[0].lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "station-agent.service"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_verify_is_clean(tmp_path: Path) -> None:
    result = verify(make_root(tmp_path, UNIT.read_text()))
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_catches_mistakes(tmp_path: Path) -> None:
    """The check above can fail: a typo'd key and a missing binary are both reported."""
    broken = UNIT.read_text().replace("Restart=always", "Restartt=always")
    result = verify(make_root(tmp_path / "typo", broken))
    assert "Unknown key 'Restartt'" in result.stderr
    result = verify(make_root(tmp_path / "nobin", UNIT.read_text(), with_binary=False))
    assert result.returncode != 0 and "is not executable" in result.stderr


def exposure(unit: Path) -> tuple[float, str]:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure line in:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1)), result.stdout


def test_security_exposure_at_most_1_5() -> None:
    level, report = exposure(UNIT)
    assert level <= MAX_EXPOSURE, report


def test_exposure_would_catch_a_weakened_unit(tmp_path: Path) -> None:
    weak = tmp_path / "station-agent.service"
    text = UNIT.read_text()
    for key in ("ProtectSystem", "CapabilityBoundingSet", "SystemCallFilter", "PrivateTmp"):
        text = re.sub(rf"^{key}=.*$", "", text, flags=re.M)
    weak.write_text(text)
    level, _ = exposure(weak)
    assert level > MAX_EXPOSURE


def test_the_service_contract() -> None:
    """The settings the rest of the agent relies on (sd_notify, watchdog, restart, paths)."""
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "Restart": ["always"],
        "StartLimitIntervalSec": ["0"],
        "KillSignal": ["SIGTERM"],
        "StateDirectory": ["station-agent"],
        "ConfigurationDirectory": ["station-agent"],
        "User": ["station-agent"],
        "SupplementaryGroups": ["video"],
        "DeviceAllow": ["char-video4linux rw"],
        "UMask": ["0077"],
    }
    for key, values in expected.items():
        assert unit_values(key) == values, key
    assert unit_values("ExecStart") == [
        "/opt/station-agent/venv/bin/station-agent run --config /etc/station-agent/config.toml"
    ]
    (watchdog,) = unit_values("WatchdogSec")
    (restart,) = unit_values("RestartSec")
    assert watchdog.endswith("s") and 10 <= int(watchdog[:-1]) <= 120
    assert restart.endswith("s") and 1 <= int(restart[:-1]) <= 5


def test_writable_paths_are_exactly_what_the_agent_writes() -> None:
    """ProtectSystem=strict makes the whole disk read-only; the unit then grants the state
    folder (spool, outbox) and, of the config folder, only the reference picture that the
    `retake_reference` command rewrites (issue 13: it could not be written at all)."""
    from agent.core.config import SERVICE_USER
    from agent.service.config import DEFAULT_CONFIG_PATH
    from agent.tools.provision import DEFAULT_SPOOL, REFERENCE_NAME

    assert unit_values("ProtectSystem") == ["strict"]
    assert unit_values("PrivateMounts") == ["yes"]
    (granted,) = unit_values("ReadWritePaths")
    state = f"/var/lib/{SERVICE_USER}"
    reference = f"-{DEFAULT_CONFIG_PATH.parent / REFERENCE_NAME}"  # "-": may not exist yet
    assert granted.split() == [state, reference]
    assert DEFAULT_SPOOL.is_relative_to(state)
    assert unit_values("StateDirectory") == [SERVICE_USER]
    for key in ("LogsDirectory", "CacheDirectory", "RuntimeDirectory", "ReadWriteDirectories"):
        assert unit_values(key) == [], f"{key}: the agent writes nothing there"


# --- the sandbox does not break the agent ------------------------------------------------------
# No systemd as PID 1 here, so the unit's seccomp rules are reproduced with libseccomp (Debian
# package python3-seccomp, for the system python) and the demo pipeline runs under them.

SANDBOX = r"""
import errno, mmap, os, subprocess, sys
import seccomp

def expand(group, seen):
    out = subprocess.run(["systemd-analyze", "syscall-filter", group],
                         capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines()[1:]:
        s = line.strip()
        if s.startswith("@") and s not in seen:
            seen.add(s)
            names |= expand(s, seen)
        elif s and not s.startswith(("#", "@")):
            names.add(s)
    return names

deny = set(sys.argv[1].split())
allow = expand("@system-service", set())
for group in deny:
    allow -= expand(group, set())
calls = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))  # SystemCallErrorNumber=EPERM
for name in sorted(allow):
    try:
        calls.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError):
        pass  # not a syscall on this architecture
# MemoryDenyWriteExecute=yes, as systemd's seccomp-util.c installs it.
mdwe = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
wx, x = mmap.PROT_WRITE | mmap.PROT_EXEC, mmap.PROT_EXEC
mdwe.add_rule(seccomp.ERRNO(errno.EPERM), "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
for name in ("mprotect", "pkey_mprotect"):
    mdwe.add_rule(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(2, seccomp.MASKED_EQ, x, x))
shm_exec = 0o100000
eperm = seccomp.ERRNO(errno.EPERM)
mdwe.add_rule(eperm, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, shm_exec, shm_exec))
mdwe.load()
calls.load()
os.execv(sys.argv[2], sys.argv[2:])
"""


def _system_python_with_seccomp() -> str | None:
    python = "/usr/bin/python3"
    if not Path(python).exists():
        return None
    probe = subprocess.run([python, "-c", "import seccomp"], capture_output=True, timeout=30)
    return python if probe.returncode == 0 else None


def test_agent_runs_under_the_units_syscall_filter_and_mdwe(tmp_path: Path) -> None:
    python = _system_python_with_seccomp()
    if python is None:
        pytest.skip("python3-seccomp (Debian package) not installed")
    assert unit_values("MemoryDenyWriteExecute") == ["yes"]
    filters = unit_values("SystemCallFilter")
    assert filters[0] == "@system-service"
    denied = " ".join(v.lstrip("~") for v in filters[1:] if v.startswith("~"))
    script = tmp_path / "sandbox.py"
    script.write_text(SANDBOX)
    agent = Path(sys.executable).parent / "station-agent"
    out = tmp_path / "demo"
    result = subprocess.run(
        [python, str(script), denied, str(agent), "demo", "--duration", "4", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S * 2,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    segments = sorted((out / "spool" / "segments").glob("*.ts"))
    assert segments, result.stderr[-2000:]
    # Prove the filter was in force: the same sandbox refuses a W+X mapping.
    wx_map = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)"
    probe = subprocess.run(
        [python, str(script), denied, sys.executable, "-c", wx_map],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert probe.returncode != 0 and "Operation not permitted" in probe.stderr
