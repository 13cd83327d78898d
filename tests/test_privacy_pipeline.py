"""Masks hold through the whole pipeline: decoded segments at every rung, across a change."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from agent.capture.privacy import SOLID_FILL_LEVEL
from agent.core.config import Secrets
from agent.core.events import EventFanout
from agent.service.config import config_from_dict
from agent.service.pipeline import Pipeline
from agent.spool.store import Spool
from tests.peers.agent import wait_until
from tests.peers.config import SMALL_RUNG, agent_config

MASK = (0.55, 0.35, 0.95, 0.75)  # over the moving disc's path, clear of the overlay
SMALL = {"width": 160, "height": 120, "fps": 10, "bitrate_bps": 150_000}


def masked_interior(frame: np.ndarray, margin_px: int = 4) -> np.ndarray:
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = MASK
    return frame[
        int(y0 * h) + margin_px : int(y1 * h) - margin_px,
        int(x0 * w) + margin_px : int(x1 * w) - margin_px,
    ]


def test_masked_region_is_fill_in_every_segment_at_every_rung(tmp_path: Path) -> None:
    data = agent_config(
        tmp_path,
        adapt={"ladder": [SMALL, SMALL_RUNG], "start_rung": "240p15"},
        privacy={"masks": [{"rect": list(MASK)}]},
    )
    pipeline = Pipeline(config_from_dict(data), Secrets(), EventFanout())
    pipeline.start()
    try:
        assert wait_until(lambda: pipeline.segments_stored >= 2, timeout_s=30)
        pipeline.pin_rung("120p10")
        assert wait_until(
            lambda: (
                pipeline.spool.segments()[-1].rung.width == 160 and pipeline.segments_stored >= 4
            ),
            timeout_s=30,
        )
        assert pipeline.status()["privacy"]["active_count"] == 1
    finally:
        pipeline.stop()
    spool = Spool.open_read_only(tmp_path / "spool")
    sizes, camera_frames, card_frames = set(), 0, 0
    for record in spool.segments():
        with av.open(str(spool.segment_dir / record.file_name)) as container:
            for frame in container.decode(video=0):
                image = frame.to_ndarray(format="bgr24")
                h, w = image.shape[:2]
                if image[h // 4, w // 16].mean() < 100:  # the test pattern's first bar is light
                    card_frames += 1  # the "no camera" card before the first frame: no pixels
                    continue
                camera_frames += 1
                sizes.add(image.shape[:2])
                inside = masked_interior(image).astype(int)
                assert np.abs(inside - SOLID_FILL_LEVEL).max() <= 16, record.seq
    assert camera_frames > 4 * card_frames
    assert sizes == {(240, 320), (120, 160)}
