"""kill -9 at random moments: the spool stays sound and the sequence has no unreported holes."""

from __future__ import annotations

import random
import time
from pathlib import Path

from agent.spool.store import Spool
from agent.tools.spool_cli import verify_spool
from tests.peers.agent import AgentProcess, spool_seqs, wait_until
from tests.peers.config import agent_config, write_toml

KILLS = 20


def test_kill_9_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    spool_dir = tmp_path / "spool"
    config = write_toml(tmp_path / "station.toml", agent_config(tmp_path))
    seen_seqs: set[int] = set()
    for kill in range(KILLS):
        agent = AgentProcess(config).start()
        before = len(spool_seqs(spool_dir))
        if kill % 4 == 0:
            time.sleep(rng.uniform(0.0, 1.0))  # sometimes during start-up or recovery
        else:  # mostly while segments are being written
            wait_until(lambda before=before: len(spool_seqs(spool_dir)) > before, timeout_s=20)
            time.sleep(rng.uniform(0.0, 1.2))
        agent.kill()
        if not (spool_dir / "index.sqlite").exists():
            continue
        spool = Spool.open_read_only(spool_dir)
        problems = verify_spool(spool_dir, spool)
        # leftovers of the kill (a .tmp, or a renamed file whose row never committed) are
        # cleaned by the next start; everything indexed must be intact
        real = [p for p in problems if "leftover" not in p]
        assert real == [], f"after kill {kill}: {real}\n{agent.stderr()[-2000:]}"
        seqs = [r.seq for r in spool.segments()]
        lost = {seq for seq, _, _ in spool.lost()}
        assert seqs == list(range(len(seqs))) or set(range(len(seqs))) - set(seqs) <= lost
        assert seen_seqs <= set(seqs), "an indexed segment disappeared"
        seen_seqs = set(seqs)
        spool.close()
    assert len(seen_seqs) >= KILLS // 2, "the runs were too short to write segments"

    agent = AgentProcess(config).start()  # a clean start after all that: recovers and runs
    assert wait_until(lambda: len(spool_seqs(spool_dir)) > len(seen_seqs) + 1, timeout_s=30)
    assert agent.terminate() == 0
    spool = Spool.open_read_only(spool_dir)
    assert verify_spool(spool_dir, spool) == []
    assert spool.lost() == []
    assert [r.seq for r in spool.segments()] == list(range(len(spool.segments())))
    kinds = [line.get("kind") for line in agent.json_lines() if line.get("type") == "event"]
    assert "agent_stopping" in kinds
