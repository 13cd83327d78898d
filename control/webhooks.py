"""Alarm webhooks: each raise, clear and acknowledgement POSTed as JSON to the URL configured
for the alarm's class (`[alarms.webhooks] connectivity = "https://..."`), for whatever paging
the commission uses.

One worker thread, a bounded queue (a broken pager must not grow our memory: beyond
MAX_QUEUED the newest notifications are dropped and counted), a few tries with jittered
backoff per notification.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from control.alarms import Alarm

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000
TRIES = 3
TIMEOUT_S = 5.0
BACKOFF_S = 2.0  # first retry after 1-2 s, then 2-4 s (jittered)


def alarm_payload(alarm: Alarm) -> dict[str, Any]:
    if alarm.cleared_wall_s is not None:
        what = "cleared"
    elif alarm.acked_by is not None:
        what = "acknowledged"
    else:
        what = "raised"
    return {
        "event": what,
        "alarm_id": alarm.alarm_id,
        "station_id": alarm.station_id,
        "cause": alarm.cause,
        "class": alarm.alarm_class,
        "severity": alarm.severity,
        "title": alarm.title,
        "detail": alarm.detail,
        "started_wall_s": alarm.started_wall_s,
        "cleared_wall_s": alarm.cleared_wall_s,
        "acked_by": alarm.acked_by,
    }


class Webhooks:
    def __init__(self, urls: Mapping[str, str], rng: random.Random | None = None) -> None:
        self.urls = dict(urls)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(MAX_QUEUED)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    def start(self) -> None:
        if self.urls:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(TIMEOUT_S * 2)

    def notify(self, alarm: Alarm) -> None:
        url = self.urls.get(alarm.alarm_class)
        if url is None:
            return
        body = json.dumps(alarm_payload(alarm)).encode()
        try:
            self._queue.put_nowait((url, body))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            self._post(*item)

    def _post(self, url: str, body: bytes) -> None:
        for attempt in range(TRIES):
            request = urllib.request.Request(  # noqa: S310 - http(s) only, checked in config
                url, data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S):  # noqa: S310
                    self.sent += 1
                    return
            except (urllib.error.URLError, OSError) as exc:
                log.warning("webhook %s failed (try %d of %d): %s", url, attempt + 1, TRIES, exc)
            delay_s = BACKOFF_S * 2**attempt * (0.5 + 0.5 * self._rng.random())
            if self._stop.wait(delay_s):
                break
        self.failed += 1
