"""station-agent's tests; the real peers they run against live in tests/peers/."""
