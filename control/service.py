"""The control centre's parts wired together: store, roster, state and alarms, ingest, flush
thread, webhooks, commands. `ControlService(cfg).start()`; the web app and the CLI use it."""

from __future__ import annotations

import logging
import threading

from agent.core.config import read_secret
from control.centre import ControlCentre
from control.commands import Commander, load_command_key
from control.config import ControlConfig
from control.ingest import Ingest
from control.roster import RosterEntry, read_roster
from control.store import Store
from control.webhooks import Webhooks

log = logging.getLogger(__name__)


class ControlService:
    def __init__(self, cfg: ControlConfig) -> None:
        self.cfg = cfg
        roster: dict[str, RosterEntry] = {}
        if cfg.roster.path is not None:
            roster = read_roster(cfg.roster.path)
        password = None
        if cfg.mqtt.password_file is not None:
            password = read_secret(cfg.mqtt.password_file, "MQTT password").get_secret_value()
        key = None if cfg.commands.key_file is None else load_command_key(cfg.commands.key_file)
        self.store = Store(cfg.store.path)
        self.webhooks = Webhooks(cfg.alarms.webhooks)
        self.centre = ControlCentre(
            self.store, cfg.alarms, cfg.store, roster, on_alarm=self.webhooks.notify
        )
        self.ingest = Ingest(cfg.mqtt, self.centre, password)
        self.commander = Commander(self.ingest, self.store, cfg.commands, key)
        self.stopped = False
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="flush", daemon=True)

    def start(self) -> ControlService:
        self.webhooks.start()
        self.ingest.start(fresh=not self.centre.restored)
        self._flusher.start()
        return self

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self._stop.set()
        self.ingest.stop()
        if self._flusher.is_alive():
            self._flusher.join()
        self.centre.flush(everything=True)
        self.webhooks.stop()
        self.store.close()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.cfg.store.flush_every_s):
            try:
                self.centre.sweep()
                self.centre.flush()
            except Exception:  # logged and retried next round; the supervisor sees the logs
                log.exception("flush failed; retrying in %.1f s", self.cfg.store.flush_every_s)
