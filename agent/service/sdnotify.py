"""sd_notify without a dependency: one datagram per message to $NOTIFY_SOCKET.

systemd (Type=notify) learns from these datagrams that the agent is up (READY=1), what it is
doing (STATUS=..., shown by `systemctl status`), that it is alive (WATCHDOG=1, at least every
WatchdogSec) and that it is shutting down (STOPPING=1). Protocol: sd_notify(3); the socket is a
path or, with a leading "@", an abstract socket name.

The notifier is handed the environment (the CLI passes os.environ); without NOTIFY_SOCKET (run
by hand, in tests, in the demo) every call is a no-op. A failed send is logged and counted, never
raised: losing a STATUS= line must not stop the agent.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)

# sd_watchdog_enabled(3) advises pinging at half of WATCHDOG_USEC, so one late or lost ping
# does not get the service killed.
WATCHDOG_PING_FRACTION = 0.5
# STATUS= is shown on one line of `systemctl status`; systemd itself truncates long ones.
MAX_STATUS_CHARS = 200


class SdNotifier:
    """Sends READY=1 / STATUS= / WATCHDOG=1 / STOPPING=1 to the service manager, if any."""

    def __init__(self, env: Mapping[str, str], pid: int | None = None) -> None:
        self._pid = os.getpid() if pid is None else pid
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_timeout_s = _watchdog_timeout_s(env, self._pid)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.sent = 0
        self.send_errors = 0

    @property
    def enabled(self) -> bool:
        """True when a service manager listens (NOTIFY_SOCKET set and usable)."""
        return self._address is not None

    def watchdog_timeout_s(self) -> float | None:
        """WatchdogSec as seen by this process, or None when no watchdog is armed for it."""
        return self._watchdog_timeout_s

    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1 (half the timeout), or None when no watchdog is armed."""
        if self._watchdog_timeout_s is None:
            return None
        return self._watchdog_timeout_s * WATCHDOG_PING_FRACTION

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1"]
        if status is not None:
            fields.append(_status_field(status))
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        return self.notify(_status_field(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append(_status_field(status))
        return self.notify(*fields)

    def notify(self, *fields: str) -> bool:
        """Send `fields` ("KEY=value", no newlines) as one datagram; True when it went out."""
        if self._address is None:
            return False
        payload = "\n".join(fields).encode("utf-8", errors="replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    # Never block the supervision loop on a busy service manager.
                    self._sock.setblocking(False)
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                self.send_errors += 1
                # The first failure is a warning, later ones debug: a missing socket would
                # otherwise fill the journal once a second.
                level = logging.WARNING if self.send_errors == 1 else logging.DEBUG
                log.log(
                    level, "sd_notify %s failed (%d so far): %s", fields[0], self.send_errors, exc
                )
                return False
            self.sent += 1
            return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _socket_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")  # abstract namespace
    if value.startswith("/"):
        return value
    # e.g. "vsock:..." (systemd >= 254 in VMs): not something a station box uses.
    log.warning("NOTIFY_SOCKET=%r is not a path or abstract socket; sd_notify disabled", value)
    return None


def _watchdog_timeout_s(env: Mapping[str, str], pid: int) -> float | None:
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    pid_text = env.get("WATCHDOG_PID", "")
    if pid_text and pid_text != str(pid):
        return None  # armed for another process (we are a child of the service's main process)
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec_text)
        return None
    return usec / 1_000_000 if usec > 0 else None


def _status_field(text: str) -> str:
    one_line = " ".join(text.split())
    return "STATUS=" + one_line[:MAX_STATUS_CHARS]
