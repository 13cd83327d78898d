"""The box's clock as people need to know it: is it kept right (NTP), which time zone shows.

    clock_state(time.time())
    -> {"ntp_synchronized": True, "time_zone": "Europe/Berlin", "utc_offset": "+02:00",
        "utc_offset_s": 7200}

NTP state comes from the kernel (adjtimex(2) with no change asked, which any user may do and
which works without systemd), read as `timedatectl` reads it: systemd's ntp_synced() calls
the clock synchronised while the kernel's maximum error estimate is under 16 s; the time
daemon (systemd-timesyncd, chrony, ntpd) lowers it at every sync, the kernel raises it by
0.5 ms a second otherwise, and it sits at 16 s on a clock nobody synchronised. The overlay
burns local time, so the zone and its offset from UTC are part of what a viewer must know.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# systemd src/basic/time-util.c ntp_synced(): "synchronized if the reported maximum error is
# smaller than the maximum value (16 seconds)"; the kernel caps maxerror at NTP_PHASE_LIMIT.
MAX_ERROR_SYNCED_US = 16_000_000
ZONEINFO = "zoneinfo/"
LOCALTIME = Path("/etc/localtime")
TIMEZONE_FILE = Path("/etc/timezone")  # Debian's copy of the zone name


class _Timex(ctypes.Structure):
    """struct timex (linux/timex.h), in the C types of this platform."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


def kernel_max_error_us() -> int | None:
    """The kernel's maximum clock error estimate (µs) from adjtimex(2); None when it cannot
    be read (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError) as exc:
        log.debug("adjtimex unavailable: %s", exc)
        return None
    timex = _Timex()  # modes 0: read only
    if adjtimex(ctypes.byref(timex)) < 0:
        log.debug("adjtimex failed: %s", os.strerror(ctypes.get_errno()))
        return None
    return int(timex.maxerror)


def synchronized(max_error_us: int | None) -> bool | None:
    """Pure: the NTP verdict from the kernel's maximum error (None: cannot tell)."""
    if max_error_us is None:
        return None
    return max_error_us < MAX_ERROR_SYNCED_US


def zone_name(
    environ: Mapping[str, str] | None = None,
    localtime: Path = LOCALTIME,
    timezone_file: Path = TIMEZONE_FILE,
) -> str | None:
    """The time zone's name ("Europe/Berlin"): from TZ, else where /etc/localtime points,
    else /etc/timezone; None when none says."""
    environ = os.environ if environ is None else environ
    tz = environ.get("TZ", "").removeprefix(":")
    if tz:
        return tz.split(ZONEINFO, 1)[1] if ZONEINFO in tz else tz
    try:
        target = os.readlink(localtime)
    except OSError:
        target = ""
    if ZONEINFO in target:
        return target.split(ZONEINFO, 1)[1]
    try:
        lines = timezone_file.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    return lines[0] if lines else None


def utc_offset_s(now_s: float) -> int:
    """Seconds local time is ahead of UTC at `now_s` (summer time included)."""
    offset = datetime.fromtimestamp(now_s).astimezone().utcoffset()
    return 0 if offset is None else round(offset.total_seconds())


def format_offset(offset_s: int) -> str:
    """+02:00, -03:30, +00:00 (as ISO 8601 writes it)."""
    sign = "-" if offset_s < 0 else "+"
    hours, minutes = divmod(abs(offset_s) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def clock_state(
    now_s: float,
    max_error: Callable[[], int | None] = kernel_max_error_us,
    zone: Callable[[], str | None] = zone_name,
) -> dict[str, Any]:
    """The heartbeat's `clock` section (docs/telemetry.md)."""
    offset_s = utc_offset_s(now_s)
    return {
        "ntp_synchronized": synchronized(max_error()),
        "time_zone": zone(),
        "utc_offset": format_offset(offset_s),
        "utc_offset_s": offset_s,
    }


def is_utc(name: str | None) -> bool:
    """Whether a zone name is UTC itself (a box nobody set a zone on)."""
    return name is None or name.removeprefix("Etc/") in ("UTC", "UCT", "Universal", "Zulu", "GMT")


def utc_label(offset_s: int) -> str:
    """The offset as the overlay shows it to viewers: UTC, UTC+2, UTC-3:30."""
    if offset_s == 0:
        return "UTC"
    sign = "-" if offset_s < 0 else "+"
    hours, minutes = divmod(abs(offset_s) // 60, 60)
    return f"UTC{sign}{hours}" + (f":{minutes:02d}" if minutes else "")
