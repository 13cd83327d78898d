"""The control centre in tests: a config on a test broker, the service started in-process.

svc = control_factory(mosquitto, roster=[...])          # started, stopped at teardown
sim = simulator_factory(mosquitto, stations=5)          # a simulated fleet, 1 s heartbeats
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from control.config import ControlConfig
from control.service import ControlService
from control.simulate import SimOptions, Simulator
from tests.peers.mosquitto import Mosquitto

ROSTER_HEADER = "station_id,camera,upload_url,name,region,address,lat,lon\n"


def write_roster(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """rows: (station_id, name, region); the provisioning columns filled in as a real roster."""
    lines = [
        f"{sid},v4l2:/dev/video0,https://ingest.example.org/stations,{name},{region},"
        f'"1 Main Street, {region}",48.{i},16.{i}\n'
        for i, (sid, name, region) in enumerate(rows)
    ]
    path.write_text(ROSTER_HEADER + "".join(lines), encoding="utf-8")
    return path


def control_config(tmp: Path, broker: Mosquitto, **sections: Any) -> ControlConfig:
    data: dict[str, Any] = {
        "mqtt": {"url": broker.url, "client_id": f"control-{tmp.name}"},
        "store": {"path": str(tmp / "control.sqlite"), "flush_every_s": 0.2},
        "web": {"port": 0, "users_file": str(tmp / "users")},
        "alarms": {"ntp_required": False},  # test machines and CI containers may not run NTP
    }
    for key, value in sections.items():
        data[key] = data.get(key, {}) | value
    return ControlConfig.model_validate(data)


def small_fleet(broker: Mosquitto, stations: int, **options: Any) -> Simulator:
    options.setdefault("heartbeat_s", 1.0)
    options.setdefault("keepalive_s", 2)
    options.setdefault("faulty", 0.0)
    return Simulator(SimOptions(broker.url, stations, **options))


ControlFactory = Callable[..., ControlService]
SimulatorFactory = Callable[..., Simulator]
