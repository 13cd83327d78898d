"""A real agent process for telemetry tests: Telemetry with a fake pipeline status.

    python -P tests/peers/telemetry_runner.py SPEC.json   # -P: see agent.TELEMETRY_RUNNER
    SPEC.json: {"station_id": "AZ-0001", "state_dir": "...", "password": null,
                "mqtt": {"url": "mqtt://127.0.0.1:1883", "command_key_file": ..., ...}}

Run by tests/peers/agent.py (`AgentProcess.for_telemetry`), as a script: it imports only the
agent package. The spec is a file, not an argument: it may hold the broker password.

Commands: ping, and stand-ins for `restart_capture` and `set_rung` that only answer (their
audit events show that they ran). Prints "started" once Telemetry runs. Each stdin line
"emit KIND" emits an event (it is in the outbox when "emitted N" is printed). SIGTERM or
SIGINT -> stop("SIGTERM"/"SIGINT"), exit 0.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from agent.core.events import Event
from agent.core.keys import parse_public_key
from agent.telemetry import CommandError, CommandHandler, MqttConfig, Telemetry, open_channel


def fake_status() -> dict[str, Any]:
    return {
        "capture": {
            "source": "test:",
            "state": "running",
            "fps_in": 30.0,
            "fps_out": 30.0,
            "last_frame_age_s": 0.02,
            "frames_dropped": 0,
            "outages": 0,
        },
        "encode": {
            "encoder": "libx264",
            "rung": {"width": 640, "height": 360, "fps": 15, "bitrate_bps": 600_000},
            "bitrate_bps_actual": 580_000.0,
            "encode_ms_per_frame": 4.2,
            "segments": 12,
        },
        "uplink": {
            "throughput_bps": 2_000_000.0,
            "backlog_segments": 0,
            "backlog_s": 0.0,
            "backlog_bytes": 0,
            "live_lag_s": 2.1,
            "last_upload_utc": "2024-05-01T08:00:00.000Z",
            "consecutive_failures": 0,
        },
        "spool": {"bytes": 1_000_000, "segments": 12, "lost_segments": 0},
    }


def _restart_capture(args: dict[str, Any]) -> dict[str, Any]:
    if args:
        raise CommandError("restart_capture takes no arguments")
    return {"restarting": True}


def _set_rung(args: dict[str, Any]) -> dict[str, Any]:
    if set(args) != {"rung"} or not isinstance(args["rung"], str):
        raise CommandError('set_rung takes {"rung": "<height>p<fps>"}')
    return {"pinned": args["rung"]}


FAKE_COMMANDS: dict[str, CommandHandler] = {
    "restart_capture": _restart_capture,
    "set_rung": _set_rung,
}


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    spec = json.loads(Path(sys.argv[1]).read_text())
    cfg = MqttConfig.model_validate(spec["mqtt"]) if spec.get("mqtt") else None
    key_file = cfg.command_key_file if cfg is not None else None
    channel = open_channel(
        cfg,
        station_id=spec["station_id"],
        state_dir=Path(spec["state_dir"]),
        password=spec.get("password"),
        command_key=parse_public_key(key_file.read_bytes()) if key_file else None,
        out=sys.stderr,
    )
    telemetry = Telemetry(
        channel,
        station_id=spec["station_id"],
        status=fake_status,
        summary={"source": "test:", "ladder_top": "360p15 600k", "uplinks": []},
        commands=FAKE_COMMANDS,
        version="0.1.0-test",
        heartbeat_s=spec.get("heartbeat_s"),
    )
    stop = threading.Event()
    reason: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        reason.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    telemetry.start()
    print("started", flush=True)

    def read_commands() -> None:
        emitted = 0
        for line in sys.stdin:
            words = line.split()
            if len(words) == 2 and words[0] == "emit":
                telemetry.emit(Event(words[1], "warning", f"test event {words[1]}", {"n": emitted}))
                emitted += 1
                print(f"emitted {emitted}", flush=True)

    threading.Thread(target=read_commands, daemon=True).start()
    stop.wait()
    telemetry.stop(reason[0])
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
