"""Segment outputs: where the spooled segments and their playlists go.

`open_outputs` builds one SegmentOutput per configured `[uplink.*]` section; `output_names`
names them before they exist (the spool, which every output reads, needs the names first).
"""

from __future__ import annotations

from agent.adapt.throughput import ThroughputEstimator
from agent.core.config import Secrets
from agent.core.events import EventSink
from agent.spool.store import Spool
from agent.uplink.config import UplinkConfig
from agent.uplink.output import OutputProgress, SegmentOutput
from agent.uplink.publisher import read_box_id
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


__all__ = ["HTTP", "OutputProgress", "SegmentOutput", "open_outputs", "output_names"]
