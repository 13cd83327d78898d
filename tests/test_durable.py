"""Durable writes: content, exact mode from creation on, rename over the old file, directory
fsync, nothing left behind on failure. Observed through the file system and Python's audit
events (os.open and os.rename are audited), never by replacing os functions."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.durable import rewrite_atomic, write_atomic

Record = list[tuple[str, tuple[Any, ...]]]
_recorded: Record | None = None  # on while a test records


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Records opens and renames; at a chmod of an open file, first its mode until then."""
    if _recorded is None:
        return
    if event == "os.chmod" and isinstance(args[0], int):
        _recorded.append(("mode before chmod", (stat.S_IMODE(os.fstat(args[0]).st_mode),)))
    if event in ("open", "os.rename", "os.chmod"):
        _recorded.append((event, args))


sys.addaudithook(_audit)  # hooks cannot be removed: this one records only inside `audited`


@pytest.fixture
def audited() -> Iterator[Record]:
    global _recorded
    _recorded = []
    try:
        yield _recorded
    finally:
        _recorded = None


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_content_and_exact_mode_whatever_the_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        write_atomic(tmp_path / "wide", b"hello\n", mode=0o644)
    finally:
        os.umask(old_umask)
    write_atomic(tmp_path / "private", b"secret\n", mode=0o600)
    assert (tmp_path / "wide").read_bytes() == b"hello\n"
    assert mode(tmp_path / "wide") == 0o644
    assert mode(tmp_path / "private") == 0o600
    assert leftovers(tmp_path) == []


def test_temp_created_with_final_mode_renamed_then_directory_synced(
    tmp_path: Path, audited: Record
) -> None:
    final = tmp_path / "config.toml"
    write_atomic(final, b"x = 1\n", mode=0o600)
    opens = [args for event, args in audited if event == "open"]
    renames = [args for event, args in audited if event == "os.rename"]
    temp_path, _, temp_flags = opens[0]
    assert Path(temp_path).parent == tmp_path and Path(temp_path).name.endswith(".tmp")
    assert temp_flags & os.O_EXCL  # a fresh file, not someone else's
    created_modes = [args[0] for event, args in audited if event == "mode before chmod"]
    assert created_modes and created_modes[0] & ~0o600 == 0  # never wider than the final file
    assert [(Path(src), Path(dst)) for src, dst, *_ in renames] == [(Path(temp_path), final)]
    rename_at = audited.index(("os.rename", renames[0]))
    dir_opens = [
        (i, args)
        for i, (event, args) in enumerate(audited)
        if event == "open" and Path(args[0]) == tmp_path and args[2] & os.O_DIRECTORY
    ]
    assert dir_opens and dir_opens[0][0] > rename_at  # the folder is synced after the rename


def test_replaces_the_old_file_as_a_whole(tmp_path: Path) -> None:
    final = tmp_path / "segment.ts"
    final.write_bytes(b"old content")
    with final.open("rb") as reader:  # a reader of the old file keeps the old file
        old_inode = os.fstat(reader.fileno()).st_ino
        write_atomic(final, b"new", mode=0o600)
        assert reader.read() == b"old content"
    assert final.read_bytes() == b"new"
    assert final.stat().st_ino != old_inode  # a new file renamed in, not the old one rewritten


def test_no_fsync_dir_skips_only_the_directory_sync(tmp_path: Path, audited: Record) -> None:
    write_atomic(tmp_path / "a", b"a", fsync_dir=False)
    assert (tmp_path / "a").read_bytes() == b"a"
    assert not [a for e, a in audited if e == "open" and a[2] & os.O_DIRECTORY]


def test_failure_leaves_no_temp_and_the_old_file(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.mkdir()
    (blocker / "inside").write_text("keeps the folder non-empty")
    with pytest.raises(OSError):
        write_atomic(blocker, b"data")  # cannot replace a folder
    assert blocker.is_dir() and leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "file", b"data")


def test_large_data_written_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000  # 10 MB: more than one write() may take
    write_atomic(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


def test_owner(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        write_atomic(tmp_path / "mine", b"x", owner=(os.getuid(), os.getgid()))
        assert (tmp_path / "mine").stat().st_uid == os.getuid()
        return
    write_atomic(tmp_path / "theirs", b"x", mode=0o600, owner=(4321, 4322))
    st = (tmp_path / "theirs").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 4322, 0o600)


def test_rewrite_keeps_mode_and_owner_of_the_replaced_file(tmp_path: Path) -> None:
    edited = tmp_path / "config.toml"
    edited.write_text("a = 1\n")
    edited.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(edited, 4321, 4322)
    rewrite_atomic(edited, b"a = 2\n")
    assert edited.read_bytes() == b"a = 2\n" and mode(edited) == 0o640
    if os.geteuid() == 0:
        assert (edited.stat().st_uid, edited.stat().st_gid) == (4321, 4322)
    rewrite_atomic(tmp_path / "new.png", b"png", new_mode=0o600)
    assert mode(tmp_path / "new.png") == 0o600
    assert leftovers(tmp_path) == []
