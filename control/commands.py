"""Commands to stations from the dashboard: signed when the control centre has a key, every
one written to the audit table with who sent it and the reply; snapshots cached.

`Commander.send(station, name, args, user)` publishes through the ingest's MQTT client and
returns a Future of the `Reply` (a timeout becomes a Reply with code "timeout", also audited).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core.config import ConfigError
from agent.telemetry.signing import sign_command
from control.config import CommandConfig
from control.ingest import Ingest, Reply
from control.store import Store

log = logging.getLogger(__name__)

OPERATOR_COMMANDS = ("set_rung", "auto", "restart_capture", "retake_reference")
SNAPSHOT = "snapshot"
MAX_CACHED_SNAPSHOTS = 500  # ~50 KB each at 1280 px: 25 MB at most


def load_command_key(path: Path) -> Ed25519PrivateKey:
    """The control centre's Ed25519 private key (PEM, PKCS#8), readable by its owner only."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(
                f"{path}: the command key is readable by others (mode {mode & 0o777:o})",
                fix=f"chmod 600 {path}",
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the command key: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key")
    return key


class Commander:
    def __init__(
        self,
        ingest: Ingest,
        store: Store,
        cfg: CommandConfig,
        key: Ed25519PrivateKey | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ingest = ingest
        self.store = store
        self.cfg = cfg
        self.key = key
        self._wall, self._mono = wall, mono
        self._snapshots: OrderedDict[str, tuple[float, float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def send(self, station_id: str, name: str, args: dict[str, Any], user: str) -> Future[Reply]:
        """Publishes the command (signed when a key is configured) and audits it."""
        if self.key is not None:
            payload = sign_command(self.key, station_id, name, args, ttl_s=self.cfg.signed_ttl_s)
        else:
            payload = json_bytes(args)
        audit: dict[str, int] = {}
        done = threading.Event()

        def on_reply(reply: Reply) -> None:
            done.wait(5)  # the audit row is written right after publishing
            self._record(audit.get("id", 0), reply)
            if reply.image is not None:
                self._cache(station_id, reply.image)

        future, correlation = self.ingest.request(station_id, name, payload, on_reply)
        audit["id"] = self.store.add_audit(
            self._wall(), user, station_id, name, args, self.key is not None, correlation
        )
        done.set()
        log.info("command %s to %s by %s (signed: %s)", name, station_id, user, bool(self.key))
        if future.done():  # not sent at all
            self._record(audit["id"], future.result())

        def watchdog() -> None:
            try:
                future.result(self.cfg.reply_timeout_s)
            except FutureTimeout:
                self.ingest.forget(correlation)
                timeout = Reply(ok=False, code="timeout", message="no reply from the station")
                try:
                    future.set_result(timeout)
                except InvalidStateError:
                    return  # the reply came in the same instant
                self._record(audit["id"], timeout)
            except CancelledError:
                log.info("command %s to %s cancelled (shutting down)", name, station_id)

        threading.Thread(target=watchdog, name="command-timeout", daemon=True).start()
        return future

    def _record(self, audit_id: int, reply: Reply) -> None:
        self.store.audit_reply(
            audit_id,
            self._wall(),
            reply.ok,
            None if reply.ok else f"{reply.code}: {reply.message}",
            reply.result,
        )

    # -- snapshots -------------------------------------------------------------------------

    def _cache(self, station_id: str, image: bytes) -> None:
        with self._lock:
            self._snapshots[station_id] = (self._mono(), self._wall(), image)
            self._snapshots.move_to_end(station_id)
            while len(self._snapshots) > MAX_CACHED_SNAPSHOTS:
                self._snapshots.popitem(last=False)

    def cached_snapshot(self, station_id: str) -> tuple[float, bytes] | None:
        """(taken at, wall clock; JPEG) of the latest snapshot, however old."""
        with self._lock:
            entry = self._snapshots.get(station_id)
        return None if entry is None else (entry[1], entry[2])

    def snapshot_fresh(self, station_id: str) -> bool:
        with self._lock:
            entry = self._snapshots.get(station_id)
        return entry is not None and self._mono() - entry[0] <= self.cfg.snapshot_max_age_s


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
