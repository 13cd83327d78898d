"""What every segment output is: something that takes the spooled segments somewhere.

The pipeline holds a list of them and treats them alike. Each has a `name`: the spool records
per name which segments that output has sent, so nothing is evicted before every output has it.
The outputs are built by `agent.uplink.open_outputs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from agent.core.config import Secrets


@dataclass(frozen=True)
class OutputProgress:
    """What the watchdog reads: an output is busy while a request runs (`busy_since_s`,
    monotonic) and makes progress while `sent_bytes` grows."""

    busy_since_s: float | None
    sent_bytes: int


class SegmentOutput(Protocol):
    name: str  # the spool's uplink name, e.g. "http"

    def start(self) -> None:
        """Start the worker; it sends what the spool holds and waits for new segments."""

    def stop(self, drain_s: float) -> None:
        """Stop, after trying for up to `drain_s` to send what is still pending."""

    def wake(self) -> None:
        """Cut a wait or a backoff short and look at the spool again now. (New segments need
        no wake-up: outputs wait on the spool itself, and a backoff must outlast them.)"""

    def reload_credentials(self, secrets: Secrets) -> None:
        """A technician fixed a credential file (SIGHUP): use the new secrets from now on."""

    def status(self, now_s: float) -> dict[str, Any]:
        """The output's heartbeat section."""

    def progress(self) -> OutputProgress:
        """For the watchdog: busy or idle, and bytes sent so far."""
