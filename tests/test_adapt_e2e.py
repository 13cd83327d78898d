"""Adaptation end to end: agent -> throttling proxy (token bucket) -> real nginx.

Capacity 4 Mbit/s -> 600 kbit/s -> 4 Mbit/s. Time is counted in segments (the encoder cuts one
per `segment_s` of monotonic time), never asserted in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.service.config import AgentConfig, config_from_dict
from tests.peers.agent import Running, assert_all_on_server, wait_until
from tests.peers.config import STATION, agent_config
from tests.peers.faultproxy import FaultProxy
from tests.peers.nginx import Nginx

RUNG = {"width": 320, "height": 240, "fps": 15}
LADDER = [RUNG | {"bitrate_bps": bps} for bps in (250_000, 500_000, 1_200_000, 2_400_000)]
HIGH_BPS, LOW_BPS = 4_000_000, 600_000


def test_drop_and_recovery_through_a_throttled_link(
    nginx: Nginx,
    fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
    run_agent: Callable[[AgentConfig], Running],
) -> None:
    proxy = fault_proxy("127.0.0.1", nginx.http_port)
    proxy.set_rate(HIGH_BPS)
    data = agent_config(
        tmp_path,
        capture={"source": "test:noise"},
        encode={"preset": "ultrafast"},
        adapt={"ladder": LADDER, "start_rung": "240p15"},  # start at the top: 2.4M
        uplink={"http": {"url": proxy.url_for("/ingest"), "backoff_max_s": 0.5, "timeout_s": 5.0}},
    )
    running = run_agent(config_from_dict(data))
    spool = running.spool

    def bitrate_of(seq: int) -> int:
        return spool.get(seq).rung.bitrate_bps

    assert wait_until(lambda: running.pipeline.segments_stored >= 6, timeout_s=30)
    before_bps = bitrate_of(spool.next_seq() - 1)
    assert before_bps >= 1_200_000, "on a 4 Mbit/s link the agent should run a high rung"
    recorded = spool.segments()
    assert sum(r.nbytes for r in recorded[-3:]) * 8 / 3 > 0.7 * before_bps, "noise fills it"

    proxy.set_rate(LOW_BPS)
    drop_seq = spool.next_seq()  # the first segment begun after the drop
    assert wait_until(lambda: spool.next_seq() >= drop_seq + 10, timeout_s=40)
    late = [bitrate_of(seq) for seq in range(drop_seq + 3, drop_seq + 10)]
    assert max(late) <= LOW_BPS, f"3 segments after the drop: {late}"
    assert late == sorted(late, reverse=True), f"bounced back up while settling: {late}"
    assert wait_until(
        lambda: (running.pipeline.status()["uplink"]["live_lag_s"] or 0) < 2.0, timeout_s=20
    ), running.pipeline.status()["uplink"]

    proxy.set_rate(HIGH_BPS)
    recover_seq = spool.next_seq()
    assert wait_until(
        lambda: (
            spool.next_seq() - 1 > recover_seq and bitrate_of(spool.next_seq() - 1) >= before_bps
        ),
        timeout_s=60,
    )
    climbed_in = spool.next_seq() - 1 - recover_seq
    assert climbed_in <= 30, f"back to {before_bps} bit/s after {climbed_in} segments (> 30 s)"

    assert wait_until(lambda: running.pending() == 0, timeout_s=60)
    done = running.stop()
    assert_all_on_server(done, nginx.root / STATION)
