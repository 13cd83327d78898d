"""The box's own figures for the heartbeat: CPU, load, memory, spool disk, temperature, network."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)


def _existing_ancestor(path: Path) -> Path:
    """The spool dir may not exist yet at start: measure the file system it will live on."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _max_temperature_c() -> float | None:
    """Hottest sensor reading (°C), or None on boxes without sensors (VMs, most containers)."""
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:  # not available on this platform
        return None
    try:
        sensors = read()
    except (OSError, RuntimeError) as exc:
        log.debug("cannot read temperature sensors: %s", exc)
        return None
    readings = [t.current for entries in sensors.values() for t in entries if t.current]
    return round(max(readings), 1) if readings else None


class SystemStats:
    """Call `sample()` once per heartbeat; CPU percentages are over the time since the last call."""

    def __init__(self, spool_path: Path | None) -> None:
        self._spool_path = spool_path
        self._process = psutil.Process()
        # psutil's first cpu_percent(None) call returns 0.0 and starts the measurement window.
        psutil.cpu_percent(interval=None)
        self._process.cpu_percent(interval=None)

    def sample(self) -> dict[str, Any]:
        load_1m, load_5m, load_15m = os.getloadavg()
        memory = psutil.virtual_memory()
        net = psutil.net_io_counters()
        stats: dict[str, Any] = {
            "cpu_percent": psutil.cpu_percent(interval=None),
            "cpu_count": psutil.cpu_count() or 1,
            "agent_cpu_percent": round(self._process.cpu_percent(interval=None), 1),
            "load_1m": round(load_1m, 2),
            "load_5m": round(load_5m, 2),
            "load_15m": round(load_15m, 2),
            "memory_used_percent": memory.percent,
            "memory_available_bytes": memory.available,
            "agent_rss_bytes": self._process.memory_info().rss,
            "spool_free_bytes": None,
            "spool_total_bytes": None,
            "temperature_c": _max_temperature_c(),
            "net_sent_bytes": net.bytes_sent if net else None,
            "net_recv_bytes": net.bytes_recv if net else None,
        }
        if self._spool_path is not None:
            try:
                usage = shutil.disk_usage(_existing_ancestor(self._spool_path))
            except OSError as exc:
                log.warning("cannot measure the spool disk at %s: %s", self._spool_path, exc)
            else:
                stats["spool_free_bytes"] = usage.free
                stats["spool_total_bytes"] = usage.total
        return stats
