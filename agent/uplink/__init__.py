"""Segment outputs: where the spooled segments and their playlists go, and live streams.

`open_outputs` builds one SegmentOutput per configured `[uplink.*]` section that sends the
spool's segments; `output_names` names them before they exist (the spool, which every such
output reads, needs the names first). `open_live_outputs` builds the live outputs
(`[[uplink.rtmp]]`): SegmentOutputs too, but fed the encoder's packets, never the spool.
"""

from __future__ import annotations

from agent.adapt.throughput import ThroughputEstimator
from agent.core.config import ConfigError, Secrets
from agent.core.events import EventSink
from agent.spool.store import Spool
from agent.uplink.config import UplinkConfig
from agent.uplink.output import OutputProgress, SegmentOutput
from agent.uplink.publisher import read_box_id
from agent.uplink.rtmp import RtmpOutput
from agent.uplink.targets import open_target
from agent.uplink.uploader import SegmentUploader

HTTP = "http"  # [uplink.http]: HTTP PUT (or file://) of segments and HLS playlists


def output_names(cfg: UplinkConfig) -> list[str]:
    """The names of the outputs `open_outputs(cfg, ...)` builds, in the same order."""
    return [HTTP] if cfg.http is not None else []


def open_outputs(
    cfg: UplinkConfig,
    station_id: str,
    secrets: Secrets,
    spool: Spool,
    sink: EventSink,
    estimator: ThroughputEstimator,
    segment_s: float,
) -> list[SegmentOutput]:
    """One output per configured section; the first is the primary (the link adapted to)."""
    outputs: list[SegmentOutput] = []
    if cfg.http is not None:
        target = open_target(cfg.http, station_id, secrets, segment_s)
        uploader = SegmentUploader(
            cfg.http, target, spool, sink, estimator,
            name=HTTP, station_id=station_id, box_id=read_box_id(spool.path),
        )  # fmt: skip
        outputs.append(uploader)
    return outputs


def open_live_outputs(cfg: UplinkConfig, secrets: Secrets, sink: EventSink) -> list[RtmpOutput]:
    """One RtmpOutput per enabled `[[uplink.rtmp]]`, in the file's order."""
    outputs = []
    for name, rtmp in cfg.rtmp_outputs():
        key = secrets.rtmp_keys.get(name)
        if key is None:
            raise ConfigError(f"{name}: the stream key ({rtmp.key_file}) was not read")
        outputs.append(RtmpOutput(rtmp, name, key, sink))
    return outputs


__all__ = [
    "HTTP", "OutputProgress", "RtmpOutput", "SegmentOutput", "open_live_outputs", "open_outputs",
    "output_names",
]  # fmt: skip
