"""ThroughputEstimator: time is stepped by hand, no clock, no network."""

from __future__ import annotations

import pytest

from agent.adapt.throughput import ThroughputEstimator

SEGMENT_BYTES = 500_000


def feed(est: ThroughputEstimator, start_s: float, rate_bps: float, count: int) -> float:
    """One upload of SEGMENT_BYTES every 2 s at `rate_bps`; returns the time after the last."""
    now_s = start_s
    for _ in range(count):
        now_s += 2.0
        est.add_sample(now_s, SEGMENT_BYTES, 8 * SEGMENT_BYTES / rate_bps)
    return now_s


def test_no_estimate_until_enough_data() -> None:
    est = ThroughputEstimator()
    assert est.estimate_bps(0.0) is None
    est.add_sample(1.0, 50_000, 0.1)
    assert est.estimate_bps(1.0) is None
    est.add_sample(2.0, 60_000, 0.1)
    assert est.estimate_bps(2.0) is not None


def test_converges_to_a_constant_rate() -> None:
    est = ThroughputEstimator()
    now_s = feed(est, 0.0, 3_000_000, 30)
    assert est.estimate_bps(now_s) == pytest.approx(3_000_000, rel=0.01)


def test_tiny_samples_are_ignored() -> None:
    est = ThroughputEstimator()
    now_s = feed(est, 0.0, 2_000_000, 10)
    for i in range(50):  # playlist PUTs: a few hundred bytes, mostly round trips
        est.add_sample(now_s + i * 0.1, 300, 0.2)
    assert est.estimate_bps(now_s + 5) == pytest.approx(2_000_000, rel=0.01)
    latency = est.latency_s()
    assert latency is not None and latency == pytest.approx(0.2, rel=0.05)


def test_drops_fast_and_rises_slowly() -> None:
    est = ThroughputEstimator()
    now_s = feed(est, 0.0, 4_000_000, 30)
    now_s = feed(est, now_s, 600_000, 1)
    dropped = est.estimate_bps(now_s)
    assert dropped is not None and dropped < 0.8 * 4_000_000
    now_s = feed(est, now_s, 600_000, 3)
    low = est.estimate_bps(now_s)
    assert low is not None and low < 1.5 * 600_000
    now_s = feed(est, now_s, 600_000, 4)
    lower = est.estimate_bps(now_s)
    assert lower is not None and lower < 1.1 * 600_000
    now_s = feed(est, now_s, 4_000_000, 1)
    risen = est.estimate_bps(now_s)
    assert risen is not None and risen < 0.5 * 4_000_000  # one good sample is not enough


def test_concurrent_uploads_count_the_share() -> None:
    est = ThroughputEstimator()
    for i in range(20):
        est.add_sample(2.0 * i, SEGMENT_BYTES, 8 * SEGMENT_BYTES / 1_000_000, concurrent=2)
    assert est.estimate_bps(40.0) == pytest.approx(2_000_000, rel=0.01)


def test_a_stalled_upload_caps_the_estimate() -> None:
    est = ThroughputEstimator()
    now_s = feed(est, 0.0, 4_000_000, 20)
    ticket = est.upload_started(now_s, 800_000)
    assert est.estimate_bps(now_s + 0.1) == pytest.approx(4_000_000, rel=0.01)
    capped = est.estimate_bps(now_s + 8.0)
    assert capped is not None and capped <= 8 * 800_000 / 8.0
    est.upload_finished(ticket, now_s + 9.0, ok=True)
    assert est.estimate_bps(now_s + 9.0) is not None


def test_progress_reports_show_a_collapse_within_one_upload() -> None:
    est = ThroughputEstimator()
    now_s = feed(est, 0.0, 4_000_000, 20)
    ticket = est.upload_started(now_s, 1_000_000)
    sent = 0.0
    for i in range(1, 13):  # 0.5 s at 4 Mbit/s, then 600 kbit/s
        rate_bps = 4_000_000 if i <= 2 else 600_000
        sent += rate_bps * 0.25 / 8
        est.upload_progress(ticket, now_s + 0.25 * i, int(sent))
    # On time (1 MB at 4 Mbit/s takes 2 s): progress alone does not lower the estimate.
    assert est.estimate_bps(now_s + 2.0) == pytest.approx(4_000_000, rel=0.01)
    # Late (more than LATE_FACTOR x 2 s): the last second's rate caps it.
    estimate = est.estimate_bps(now_s + 3.0)
    assert estimate is not None and estimate < 800_000


def test_offline_after_failures_until_a_success() -> None:
    est = ThroughputEstimator()
    assert not est.offline(0.0)
    est.note_failure(1.0)
    assert not est.offline(1.0)
    ticket = est.upload_started(2.0, 100_000)
    est.upload_finished(ticket, 12.0, ok=False)
    assert est.offline(12.0)
    est.add_sample(20.0, 100_000, 0.5)
    assert not est.offline(20.0)
