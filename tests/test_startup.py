"""`station-agent run` starts lean: what the service does not use at start is not imported."""

from __future__ import annotations

import json
import subprocess
import sys

TOOLS_RUN_NEEDS = {"agent.tools", "agent.tools.terminal"}  # help text wrapping


def test_run_imports_none_of_the_technicians_tools() -> None:
    """The tools (check, provision, verify, mask, health...) cost ~4 MB and ~0.1 s at every
    service start; the parser for `run` must not load them (issue 15)."""
    code = (
        "import json, sys\n"
        "from agent.cli import build_parser\n"
        "build_parser(with_tools=False).parse_args(['run', '--config', 'x.toml'])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('agent.tools'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert set(json.loads(done.stdout)) <= TOOLS_RUN_NEEDS


def test_the_tools_are_there_for_everything_else() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    for command in ("run", "demo", "spool", "health", "mask", "check", "provision", "verify"):
        assert command in done.stdout
