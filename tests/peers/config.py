"""Small, fast agent configurations written to disk as TOML, for tests and benches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATION = "TEST-0001"
SMALL_CAPTURE = {"source": "test:", "width": 320, "height": 240, "fps": 15}
SMALL_RUNG = {"width": 320, "height": 240, "fps": 15, "bitrate_bps": 300_000}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """A tiny TOML writer for test configs: top-level keys, then [section] and [a.b] tables."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []

    def walk(prefix: str, table: dict[str, Any]) -> None:
        plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if prefix:
            tables.append((prefix, plain))
        else:
            lines.extend(f"{k} = {toml_value(v)}" for k, v in plain.items())
        for k, v in table.items():
            if isinstance(v, dict):
                walk(f"{prefix}.{k}" if prefix else k, v)

    walk("", data)
    for name, plain in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in plain.items())
    path.write_text("\n".join(lines) + "\n")
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
