"""Simulated stations (pure): the messages a real agent sends, from a model of its state.

`SimStation.heartbeat(wall_s)` and friends return payload dicts that follow the agent's
schemas (agent/telemetry/schemas, checked in tests/test_control_simulate.py). Faults: `offline`
(the box dies: the runner cuts its connection so the broker sends the last will), `dark`,
`frozen` (camera health), `behind` (a slow uplink: lag and backlog grow, the rung drops) and
`loss` (a segment dropped before upload). `FaultPlan` starts faults at random so that about
`share` of the fleet is in trouble at any time.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np

VERSION = "0.1.0-sim"
FAULTS = ("offline", "dark", "frozen", "behind", "loss")
# (width, height, fps, bitrate_bps): the agent's default USB-webcam ladder, top first.
LADDER = (
    (1280, 720, 30, 2_500_000),
    (854, 480, 30, 1_200_000),
    (640, 360, 30, 700_000),
    (426, 240, 15, 300_000),
)
SEGMENT_S = 2.0
SPOOL_TOTAL_BYTES = 32_000_000_000  # a 32 GB card
SNAPSHOT_SIZE = (320, 180)


def utc_text(wall_s: float) -> str:
    return datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def rung_dict(index: int) -> dict[str, int]:
    w, h, fps, bps = LADDER[index]
    return {"width": w, "height": h, "fps": fps, "bitrate_bps": bps}


def rung_name(index: int) -> str:
    w, h, fps, bps = LADDER[index]
    return f"{h}p{fps} {bps / 1e6:.1f}M" if bps >= 1e6 else f"{h}p{fps} {bps // 1000}k"


@dataclass
class SimStation:
    station_id: str
    started_wall_s: float
    rng: random.Random
    heartbeat_s: float = 10.0
    fault: str | None = None
    rung: int = 0
    pinned: int | None = None
    beats: int = 0
    event_seq: int = 0
    segments: int = 0
    lost_segments: int = 0
    backlog_s: float = 0.0
    spool_free_bytes: int = 20_000_000_000
    pending_events: list[dict[str, Any]] = field(default_factory=list)

    # -- messages ------------------------------------------------------------------------

    def _base(self, kind: str, wall_s: float) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": kind,
            "station_id": self.station_id,
            "at_utc": utc_text(wall_s),
        }

    def status_online(self, wall_s: float) -> dict[str, Any]:
        return self._base("status", wall_s) | {
            "state": "online",
            "version": VERSION,
            "started_utc": utc_text(self.started_wall_s),
            "summary": {
                "source": "v4l2:/dev/video0",
                "ladder_top": rung_name(0),
                "uplinks": ["http"],
            },
        }

    def status_offline(self, wall_s: float, *, clean: bool, reason: str) -> dict[str, Any]:
        """`clean=False` is the last will (at_utc: when the agent connected)."""
        return self._base("status", wall_s) | {
            "state": "offline",
            "version": VERSION,
            "started_utc": utc_text(self.started_wall_s),
            "reason": reason,
            "clean": clean,
        }

    def event(
        self, wall_s: float, kind: str, severity: str, message: str, **fields: Any
    ) -> dict[str, Any]:
        self.event_seq += 1
        return self._base("event", wall_s) | {
            "id": uuid.UUID(int=self.rng.getrandbits(128), version=4).hex,
            "seq": self.event_seq,
            "kind": kind,
            "severity": severity,
            "message": message,
            "fields": fields,
        }

    def emit(self, wall_s: float, kind: str, severity: str, message: str, **fields: Any) -> None:
        self.pending_events.append(self.event(wall_s, kind, severity, message, **fields))

    def take_events(self) -> list[dict[str, Any]]:
        events, self.pending_events = self.pending_events, []
        return events

    def heartbeat(self, wall_s: float) -> dict[str, Any]:
        """The next heartbeat; advances the model by one heartbeat interval."""
        self.beats += 1
        rng = self.rng
        self.segments += max(1, round(self.heartbeat_s / SEGMENT_S))
        w, h, fps, bps = LADDER[self.rung]
        behind = self.fault == "behind"
        if behind:
            self.backlog_s += self.heartbeat_s * 0.8
            throughput = bps * 0.3
        else:
            self.backlog_s = max(0.0, self.backlog_s - self.heartbeat_s * 2)
            throughput = bps * rng.uniform(2.0, 6.0)
        backlog_segments = round(self.backlog_s / SEGMENT_S)
        frozen, dark = self.fault == "frozen", self.fault == "dark"
        flags = ["dark"] if dark else ["frozen"] if frozen else []
        return self._base("heartbeat", wall_s) | {
            "seq": self.beats,
            "uptime_s": round(wall_s - self.started_wall_s, 1),
            "system": {
                "cpu_percent": round(rng.uniform(20, 45), 1),
                "cpu_count": 4,
                "agent_cpu_percent": round(rng.uniform(60, 110), 1),
                "load_1m": round(rng.uniform(0.8, 1.6), 2),
                "load_5m": 1.1,
                "load_15m": 1.0,
                "memory_used_percent": round(rng.uniform(30, 40), 1),
                "memory_available_bytes": 2_400_000_000,
                "agent_rss_bytes": 180_000_000,
                "spool_free_bytes": self.spool_free_bytes,
                "spool_total_bytes": SPOOL_TOTAL_BYTES,
                "temperature_c": round(rng.uniform(48, 62), 1),
                "net_sent_bytes": int(self.segments * bps * SEGMENT_S / 8),
                "net_recv_bytes": 3_000_000,
            },
            "capture": {
                "source": "v4l2:/dev/video0",
                "state": "running",
                "fps_in": float(fps) if not frozen else float(fps),
                "fps_out": fps,
                "last_frame_age_s": round(rng.uniform(0.0, 1 / fps), 3),
                "frames_dropped": 0,
                "outages": 0,
            },
            "encode": {
                "encoder": "libx264",
                "rung": {"width": w, "height": h, "fps": fps, "bitrate_bps": bps},
                "bitrate_bps_actual": round(bps * rng.uniform(0.85, 1.02)),
                "encode_ms_per_frame": round(rng.uniform(8, 20), 1),
                "segments": self.segments,
                "pinned": None if self.pinned is None else rung_name(self.pinned),
            },
            "uplink": {
                "throughput_bps": round(throughput),
                "backlog_segments": backlog_segments,
                "backlog_s": round(self.backlog_s, 1),
                "backlog_bytes": int(self.backlog_s * bps / 8),
                "live_lag_s": round(SEGMENT_S + self.backlog_s + rng.uniform(0.3, 1.5), 2),
                "last_upload_utc": utc_text(wall_s - rng.uniform(0, SEGMENT_S)),
                "consecutive_failures": 0,
            },
            "spool": {
                "bytes": int((self.backlog_s + 600) * bps / 8),
                "segments": backlog_segments + 300,
                "lost_segments": self.lost_segments,
            },
            "health": {"flags": flags},
            "clock": {
                "ntp_synchronized": True,
                "time_zone": "Europe/Vienna",
                "utc_offset": "+01:00",
                "utc_offset_s": 3600,
            },  # fmt: skip
            "telemetry": {"mode": "mqtt", "connected": True, "last_error": None},
        }

    # -- faults --------------------------------------------------------------------------

    def start_fault(self, kind: str, wall_s: float) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r} (known: {', '.join(FAULTS)})")
        self.end_fault(wall_s)
        self.fault = kind
        if kind in ("dark", "frozen"):
            self.emit(wall_s, "health_raised", "error", f"picture {kind}", condition=kind,
                      value=0.0, threshold=0.0, held_s=2.0)  # fmt: skip
        elif kind == "behind":
            self.emit(wall_s, "uplink_down", "warning", "uploads failing: timeout",
                      reason="timeout")  # fmt: skip
            if self.pinned is None and self.rung < len(LADDER) - 1:
                self._set_rung(self.rung + 1, wall_s, "uplink slow")
        elif kind == "loss":
            self.lost_segments += 1
            self.emit(wall_s, "segment_dropped", "critical", "recording lost: segment deleted "
                      "before upload (disk full)", seq=self.segments, bytes=600_000,
                      reason="disk full")  # fmt: skip
            self.fault = None  # a one-off

    def end_fault(self, wall_s: float) -> None:
        kind, self.fault = self.fault, None
        if kind in ("dark", "frozen"):
            self.emit(wall_s, "health_cleared", "info", f"picture no longer {kind}",
                      condition=kind, value=0.0, threshold=0.0, held_s=2.0)  # fmt: skip
        elif kind == "behind":
            self.emit(wall_s, "uplink_up", "info", "uploads work again", target="http")
            if self.pinned is None and self.rung > 0:
                self._set_rung(self.rung - 1, wall_s, "uplink recovered")

    def _set_rung(self, index: int, wall_s: float, reason: str) -> None:
        if index != self.rung:
            change = {"from": rung_dict(self.rung), "to": rung_dict(index)}
            self.emit(wall_s, "rung_changed", "info", f"rung {rung_name(index)}",
                      reason=reason, **change)  # fmt: skip
            self.rung = index

    # -- commands ------------------------------------------------------------------------

    def command(self, name: str, args: dict[str, Any], wall_s: float) -> dict[str, Any] | bytes:
        """The reply body (a `reply` message) or the snapshot's JPEG bytes."""
        if name == "snapshot":
            return self.snapshot_jpeg()
        result: dict[str, Any]
        if name == "ping":
            result = {"pong": True, "version": VERSION,
                      "uptime_s": round(wall_s - self.started_wall_s, 1)}  # fmt: skip
        elif name == "set_rung":
            label = str(args.get("rung", ""))
            height, _, fps = label.partition("p")
            if not (height.isdigit() and fps.isdigit()):
                return self.reply_error(name, "bad_request", "rung must look like 720p30", wall_s)
            index = next(
                (i for i, (_, h, f, _) in enumerate(LADDER) if h <= int(height) and f <= int(fps)),
                len(LADDER) - 1,
            )
            self.pinned = index
            self._set_rung(index, wall_s, "pinned by the control centre")
            result = {"pinned": rung_dict(index), "name": rung_name(index),
                      "applies": "next segment"}  # fmt: skip
        elif name == "auto":
            self.pinned = None
            result = {"pinned": None, "applies": "next segment"}
        elif name == "restart_capture":
            result = {"restarting": True}
        elif name == "retake_reference":
            result = {"reference": "in memory only (no health.reference_image configured)"}
        else:
            return self.reply_error(name, "unknown_command", f"no command {name!r}", wall_s)
        self.emit(wall_s, "command", "info", f"command {name}: ok", command=name,
                  response_topic="", correlation="", signed=False, result="ok")  # fmt: skip
        return self._base("reply", wall_s) | {"command": name, "ok": True, "result": result}

    def reply_error(self, name: str, code: str, message: str, wall_s: float) -> dict[str, Any]:
        return self._base("reply", wall_s) | {
            "command": name,
            "ok": False,
            "error": {"code": code, "message": message},
        }

    def snapshot_jpeg(self) -> bytes:
        """A small picture of a polling station's table, with the station id on it."""
        w, h = SNAPSHOT_SIZE
        seed = sum(self.station_id.encode())
        image = np.zeros((h, w, 3), np.uint8)
        image[:] = (150 + seed % 40, 170, 185)  # a wall
        cv2.rectangle(image, (40, 110), (280, 170), (60, 90, 130), -1)  # the table
        cv2.rectangle(image, (140, 70), (180, 112), (200, 200, 200), -1)  # the ballot box
        for i in range(3):  # people
            x = 60 + i * 80 + seed % 20
            cv2.circle(image, (x, 60), 12, (120, 150, 190), -1)
            cv2.rectangle(image, (x - 14, 74), (x + 14, 120), (80 + 40 * i, 60, 140), -1)
        cv2.putText(image, self.station_id, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
        if self.fault == "dark":
            image = (image * 0.05).astype(np.uint8)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            raise RuntimeError("cannot encode the snapshot")
        return jpeg.tobytes()


@dataclass
class FaultPlan:
    """Starts and ends faults at random so that about `share` of the stations are in
    trouble at any moment; each fault lasts `mean_s` on average (exponential)."""

    share: float
    rng: random.Random
    mean_s: float = 120.0
    kinds: tuple[str, ...] = FAULTS
    until_s: dict[str, float] = field(default_factory=dict)

    def step(self, st: SimStation, now_s: float, interval_s: float) -> str | None:
        """Called at each heartbeat of `st`: 'start:KIND', 'end' or None."""
        if st.fault is not None:  # faults set by hand (set_fault) last until ended by hand
            until_s = self.until_s.get(st.station_id)
            if until_s is not None and now_s >= until_s:
                del self.until_s[st.station_id]
                return "end"
            return None
        if self.share <= 0:
            return None
        # Starts per interval so that share = rate x mean duration / (1 + rate x mean).
        p_start = min(1.0, self.share / (1 - min(self.share, 0.99)) * interval_s / self.mean_s)
        if self.rng.random() >= p_start:
            return None
        kind = self.rng.choice(self.kinds)
        duration_s = min(5 * self.mean_s, max(interval_s, self.rng.expovariate(1 / self.mean_s)))
        self.until_s[st.station_id] = now_s + duration_s
        return f"start:{kind}"
