"""Small, fast agent configurations written to disk as TOML, for tests and benches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomlkit

STATION = "TEST-0001"
SMALL_CAPTURE = {"source": "test:", "width": 320, "height": 240, "fps": 15}
SMALL_RUNG = {"width": 320, "height": 240, "fps": 15, "bitrate_bps": 300_000}


def _plain(value: Any) -> Any:
    """Paths as strings, recursively: what tomlkit writes."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def toml_value(value: Any) -> str:
    """One value as inline TOML (tables inline), e.g. for a hand-made line `key = value`."""
    value = _plain(value)
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update(value)
        return table.as_string()
    return tomlkit.item(value).as_string()


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """A test config as TOML, through the same library the agent's tools write TOML with."""
    path.write_text(tomlkit.dumps(_plain(data)))
    return path


def agent_config(tmp: Path, **sections: Any) -> dict[str, Any]:
    """A small, fast config: 320x240@15 test source, 1 s segments, spool under tmp."""
    data: dict[str, Any] = {
        "station_id": STATION,
        "capture": dict(SMALL_CAPTURE),
        "encode": {"segment_s": 1.0, "preset": "ultrafast"},
        "adapt": {"ladder": [SMALL_RUNG]},
        "spool": {"path": str(tmp / "spool"), "max_bytes": "1GB", "min_free_bytes": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = data[key] | value
        else:
            data[key] = value
    return data
