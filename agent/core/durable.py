"""Durable file writes: after `write_atomic` returns, the file is whole on disk, even across a
power cut, and no reader ever sees it half written.

Order: a temporary file in the same folder, created with the final mode (never readable by
more people than the final file) -> owner set -> data written -> fsync -> os.replace over the
final name -> fsync of the folder (the rename itself is only durable once the folder's entry
is on disk). A failure before the rename removes the temporary file and leaves the old file
as it was. Temporary names start with "." and end with ".tmp", so a cleanup after a crash can
find them.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

TEMP_SUFFIX = ".tmp"
TEMP_NAME_ATTEMPTS = 16  # random 64-bit names: a clash is already unlikely once


def write_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
    fsync_dir: bool = True,
) -> None:
    """Replace `path` with `data` atomically and durably, with exactly `mode` (whatever the
    umask) and, when given, `owner` = (uid, gid). `fsync_dir=False` leaves the rename's
    durability to the caller (who then calls `fsync_dir` once for several files)."""
    temp, fd = _create_temp(path, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits away
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if fsync_dir:
        fsync_directory(path.parent)


def rewrite_atomic(path: Path, data: bytes, *, new_mode: int = 0o644) -> None:
    """`write_atomic` for a file edited in place: an existing file keeps its mode and (when we
    are root, e.g. under sudo) its owner, as an in-place write would; a new file gets
    `new_mode`."""
    try:
        st = path.stat()
    except FileNotFoundError:
        write_atomic(path, data, mode=new_mode)
        return
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    write_atomic(path, data, mode=stat.S_IMODE(st.st_mode), owner=owner)


def fsync_directory(directory: Path) -> None:
    """Make renames, creations and removals of entries in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(path: Path, mode: int) -> tuple[Path, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    for _ in range(TEMP_NAME_ATTEMPTS):
        temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
        try:
            return temp, os.open(temp, flags, mode)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")
