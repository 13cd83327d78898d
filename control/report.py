"""The day's station report (CSV): per station the share of the day it was up, the seconds it
was offline or silent, segments lost and alarms raised.

The day is a UTC day, up to now when it is today. A station is counted down while it had an
offline or stale alarm, and before it was first seen that day if it had not been seen
before; a roster station never seen is down the whole time.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, date, datetime
from typing import Any

from agent.core.config import ConfigError
from control.store import DAY_S, Store

COLUMNS = ("station_id", "name", "region", "uptime_share", "seconds_offline",
           "segments_lost", "alarms", "first_seen_utc")  # fmt: skip
DOWN_CAUSES = frozenset({"offline", "stale"})


def parse_day(text: str | None) -> date:
    if not text:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"day {text!r}: expected YYYY-MM-DD") from None


def day_bounds(day: date) -> tuple[float, float]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    return start, start + DAY_S


def day_report_rows(
    store: Store,
    records: dict[str, dict[str, Any]],
    day: date,
    now_wall_s: float | None = None,
) -> list[dict[str, object]]:
    """`records`: every station's state record (ControlCentre.records(), or the store's)."""
    start_s, end_s = day_bounds(day)
    now = time.time() if now_wall_s is None else now_wall_s
    end_s = min(end_s, now)
    span_s = max(0.0, end_s - start_s)
    figures = store.day_figures(start_s, end_s)
    down: dict[str, list[tuple[float, float]]] = {}
    alarms: dict[str, int] = {}
    for sid, cause, started, cleared in figures.alarms:
        if started >= start_s:
            alarms[sid] = alarms.get(sid, 0) + 1
        if cause in DOWN_CAUSES:
            lo, hi = max(started, start_s), min(cleared if cleared is not None else end_s, end_s)
            if hi > lo:
                down.setdefault(sid, []).append((lo, hi))
    rows = []
    for sid, record in sorted(records.items()):
        first_seen = record.get("first_seen_wall_s")
        intervals = list(down.get(sid, []))
        if first_seen is None or first_seen >= end_s:
            intervals = [(start_s, end_s)]
        elif first_seen > start_s:
            intervals.append((start_s, first_seen))
        offline_s = _union_s(intervals)
        rows.append({
            "station_id": sid,
            "name": record.get("name", ""),
            "region": record.get("region", ""),
            "uptime_share": round(1 - offline_s / span_s, 4) if span_s else "",
            "seconds_offline": round(offline_s),
            "segments_lost": figures.segments_lost.get(sid, 0),
            "alarms": alarms.get(sid, 0),
            "first_seen_utc": "" if first_seen is None else
            datetime.fromtimestamp(first_seen, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        })  # fmt: skip
    return rows


def _union_s(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        lo = max(lo, reach)
        if hi > lo:
            total += hi - lo
        reach = max(reach, hi)
    return total


def day_report_csv(
    store: Store,
    records: dict[str, dict[str, Any]],
    day: date,
    now_wall_s: float | None = None,
) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(day_report_rows(store, records, day, now_wall_s))
    return out.getvalue()
