"""A clean stop fits systemd's TimeoutStopSec with a margin, whatever the segment length: the
pipeline's stop plan plus telemetry's goodbye stay under the unit's limit, and a stop in the
middle of a long segment ends that segment at once (a short last segment, stored, not lost)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from agent.service.pipeline import STOP_BUDGET_S, stop_plan
from agent.spool.store import Spool
from agent.telemetry.service import STOP_FLUSH_TIMEOUT_S
from tests.peers.agent import AgentProcess, spool_seqs, wait_until
from tests.peers.config import agent_config, write_toml

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "station-agent.service"
EXIT_MARGIN_S = 2.0  # interpreter shutdown and the last log lines


def _unit_stop_timeout_s() -> float:
    match = re.search(r"^TimeoutStopSec=(\d+)s?$", UNIT.read_text(), re.M)
    assert match, "the unit must set TimeoutStopSec"
    return float(match.group(1))


def test_the_stop_plan_fits_the_units_stop_timeout_with_a_margin() -> None:
    plan = stop_plan()
    assert sum(plan.values()) == STOP_BUDGET_S
    assert all(seconds > 0 for seconds in plan.values())
    total_s = STOP_BUDGET_S + STOP_FLUSH_TIMEOUT_S + EXIT_MARGIN_S
    assert total_s < _unit_stop_timeout_s()


def test_a_stop_mid_segment_stores_a_short_last_segment(tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, encode={"segment_s": 10.0, "preset": "ultrafast"})
    agent = AgentProcess(write_toml(tmp_path / "agent.toml", cfg)).start()
    spool = tmp_path / "spool"
    try:
        # the first 10 s segment is stored; stop 1-2 s into the second one
        assert wait_until(lambda: len(spool_seqs(spool)) >= 1, 60), agent.stderr()
        wait_until(lambda: False, 1.5)
        agent.signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.stderr()
    finally:
        agent.kill()
    records = Spool.open_read_only(spool).segments()
    assert len(records) == 2, [r.as_dict() for r in records]
    assert records[0].duration_s > 9.0
    assert 0 < records[-1].duration_s < 9.0  # ended at the stop, not at its boundary
