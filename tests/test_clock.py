"""StepDetector and friends, with time stepped by hand: no clock is read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.clock import (
    STEP_THRESHOLD_S,
    ClockStep,
    StepDetector,
    behind_s,
    parse_utc,
    utc_iso,
)

T0_WALL_S = 1_714_550_400.0  # 2024-05-01T08:00:00Z
HOUR_S = 3600.0


def test_first_check_only_takes_the_reference() -> None:
    assert StepDetector().check(T0_WALL_S, 5.0) is None


def test_steady_clocks_are_no_step() -> None:
    steps = StepDetector()
    for k in range(100):
        assert steps.check(T0_WALL_S + k, 5.0 + k) is None


def test_backward_then_forward_step_each_reported_once() -> None:
    steps = StepDetector()
    assert steps.check(T0_WALL_S, 10.0) is None
    back = steps.check(T0_WALL_S + 1.0 - HOUR_S, 11.0)
    assert back == ClockStep(-HOUR_S, T0_WALL_S + 1.0, T0_WALL_S + 1.0 - HOUR_S)
    assert steps.check(T0_WALL_S + 2.0 - HOUR_S, 12.0) is None  # once, not at every check
    forward = steps.check(T0_WALL_S + 3.0 + HOUR_S, 13.0)
    assert forward is not None
    assert forward.step_s == pytest.approx(2 * HOUR_S)
    assert forward.from_wall_s == pytest.approx(T0_WALL_S + 3.0 - HOUR_S)
    assert "forward by 7200.0 s" in forward.describe()
    assert "back by 3600.0 s" in back.describe()


def test_threshold_is_exclusive() -> None:
    at = StepDetector()
    at.check(T0_WALL_S, 0.0)
    assert at.check(T0_WALL_S + 2.0 + STEP_THRESHOLD_S, 2.0) is None
    beyond = StepDetector()
    beyond.check(T0_WALL_S, 0.0)
    step = beyond.check(T0_WALL_S + 2.0 + STEP_THRESHOLD_S + 0.01, 2.0)
    assert step is not None and step.step_s == pytest.approx(STEP_THRESHOLD_S + 0.01)


def test_the_reference_follows_the_clock() -> None:
    """Each check moves the reference: moves under the threshold never add up to a step."""
    steps = StepDetector()
    steps.check(T0_WALL_S, 0.0)
    assert steps.check(T0_WALL_S + 1.0 + 0.9, 1.0) is None
    assert steps.check(T0_WALL_S + 2.0 + 1.8, 2.0) is None


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threshold_s"):
        StepDetector(0.0)


@given(
    st.lists(
        st.tuples(st.floats(0.5, 10.0), st.floats(-0.083, 0.083)),  # (interval s, slew s/s)
        min_size=1,
        max_size=200,
    )
)
def test_slewing_never_looks_like_a_step(intervals: list[tuple[float, float]]) -> None:
    """Even chrony's fastest slew (83 ms/s) over a whole 10-s segment stays under the
    threshold, however long it goes on."""
    steps = StepDetector()
    wall_s, mono_s = T0_WALL_S, 100.0
    assert steps.check(wall_s, mono_s) is None
    for interval_s, slew in intervals:
        mono_s += interval_s
        wall_s += interval_s * (1.0 + slew)
        assert steps.check(wall_s, mono_s) is None


@given(st.floats(-30 * 86400, 30 * 86400).filter(lambda s: abs(s) > STEP_THRESHOLD_S))
def test_any_step_beyond_the_threshold_is_reported_with_its_sign(jump_s: float) -> None:
    steps = StepDetector()
    steps.check(T0_WALL_S, 50.0)
    step = steps.check(T0_WALL_S + 1.0 + jump_s, 51.0)
    assert step is not None
    assert step.step_s == pytest.approx(jump_s, abs=1e-6)
    assert step.to_wall_s - step.from_wall_s == pytest.approx(jump_s, abs=1e-6)


def test_behind_the_last_recording() -> None:
    assert behind_s(T0_WALL_S, T0_WALL_S - 5.0) is None  # a restart, later: normal
    assert behind_s(T0_WALL_S, T0_WALL_S + 0.5) is None  # within a second: not a step
    assert behind_s(T0_WALL_S - HOUR_S, T0_WALL_S) == pytest.approx(HOUR_S)


def test_utc_text_round_trip() -> None:
    assert utc_iso(T0_WALL_S + 0.25) == "2024-05-01T08:00:00.250Z"
    assert parse_utc("2024-05-01T08:00:00.250Z") == pytest.approx(T0_WALL_S + 0.25)
    assert parse_utc("2024-05-01T10:00:00+02:00") == pytest.approx(T0_WALL_S)
    with pytest.raises(ValueError, match="time zone"):
        parse_utc("2024-05-01T08:00:00")
