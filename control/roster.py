"""The station roster: which stations are expected, where they are and what they are called.

The same CSV file technicians provision from (provisioning/roster.example.csv: station_id,
camera, upload_url, ...) with optional columns for central staff: `name`, `region`,
`address`, `lat`, `lon`. Columns this reader does not use are ignored, so one file serves both.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

STATION_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # as the agent's telemetry schemas say
MAX_ROSTER_BYTES = 64 * 1024 * 1024  # 100,000 stations with long addresses fit in 20 MB


class RosterError(Exception):
    """A roster problem staff can fix; one line naming the file, row and column."""


@dataclass(frozen=True, slots=True)
class RosterEntry:
    station_id: str
    name: str = ""
    region: str = ""
    address: str = ""
    lat: float | None = None
    lon: float | None = None


def read_roster(path: Path) -> dict[str, RosterEntry]:
    """station_id -> entry, in file order; RosterError on a bad file."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_ROSTER_BYTES + 1)
    except OSError as exc:
        raise RosterError(f"{path}: cannot read the roster: {exc.strerror or exc}") from None
    if len(raw) > MAX_ROSTER_BYTES:
        raise RosterError(f"{path}: larger than {MAX_ROSTER_BYTES // 2**20} MiB")
    try:
        text = raw.decode("utf-8-sig")  # spreadsheets add a byte-order mark
    except UnicodeDecodeError as exc:
        raise RosterError(f"{path}: not UTF-8 text: {exc}") from None
    reader = csv.DictReader(text.splitlines())
    header = [(h or "").strip() for h in reader.fieldnames or []]
    if "station_id" not in header:
        raise RosterError(f"{path}: the column 'station_id' is missing")
    entries: dict[str, RosterEntry] = {}
    for raw_row in reader:
        cells = {(k or "").strip(): (v or "").strip() for k, v in raw_row.items() if k}
        if not any(cells.values()):
            continue
        entry = _entry(cells, f"{path} row {reader.line_num}")
        if entry.station_id in entries:
            raise RosterError(
                f"{path} row {reader.line_num}: station {entry.station_id!r} is listed twice"
            )
        entries[entry.station_id] = entry
    return entries


def _entry(cells: dict[str, str], where: str) -> RosterEntry:
    sid = cells.get("station_id", "")
    if not STATION_ID_RE.match(sid):
        raise RosterError(f"{where}, column station_id: {sid!r} is not a station id")
    return RosterEntry(
        station_id=sid,
        name=cells.get("name", ""),
        region=cells.get("region", ""),
        address=cells.get("address", ""),
        lat=_coordinate(cells.get("lat", ""), 90.0, f"{where}, column lat"),
        lon=_coordinate(cells.get("lon", ""), 180.0, f"{where}, column lon"),
    )


def _coordinate(text: str, limit: float, where: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise RosterError(f"{where}: {text!r} is not a number") from None
    if not -limit <= value <= limit:
        raise RosterError(f"{where}: {value} is outside -{limit:g}..{limit:g}")
    return value
