"""The shared event sinks: RecordingSink keeps events (bounded), DiscardSink drops them."""

from __future__ import annotations

import logging

import pytest

from agent.core.events import DiscardSink, Event, RecordingSink


def test_discard_sink_drops_with_a_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="agent.core.events"):
        DiscardSink("picture check").emit(Event("health_raised", "warning", "camera covered"))
    assert caplog.messages == ["picture check: event dropped: health_raised (camera covered)"]


def test_recording_sink_is_bounded() -> None:
    sink = RecordingSink(max_events=3)
    for n in range(5):
        sink.emit(Event(f"e{n}", "info", "m"))
    assert sink.kinds() == ["e2", "e3", "e4"]
    assert sink.wait_for("e4", timeout_s=0) is not None and sink.wait_for("e0", 0) is None
