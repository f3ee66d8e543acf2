"""Writing a file a user named (`export -o`, `backup`) without ever leaving half of one behind.

A regular file (or a new path) is written beside itself as `NAME.partial` and renamed over the
name only when complete, so readers see the old file or the new one. A symlink is followed: its
target is written, the link itself is never replaced. Anything else (a terminal, `/dev/stdout`,
a FIFO) cannot be renamed over, so it is written through. Every OS error becomes one line that
names the path and says what went wrong.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TextIO

from labeller.errors import UserError


def cannot_write(path: Path, exc: OSError) -> UserError:
    reason = exc.strerror or str(exc)
    return UserError(f"cannot write {path}: {reason}; choose another path")


def _is_regular_or_new(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:  # missing, or under a path that cannot exist: creating it will say why
        return True


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """Yield a `.partial` path to fill; on success it becomes `path` (a symlink's target), on
    any failure it is removed."""
    target = path.resolve() if path.is_symlink() else path
    if not _is_regular_or_new(target):
        raise UserError(f"{path} is not a regular file; choose a file path")
    if target.is_dir():
        raise UserError(f"{path} is a directory; choose a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    partial = partial_path(target)
    try:
        yield partial
        os.replace(partial, target)
    except OSError as exc:
        with suppress(OSError):
            partial.unlink()
        raise cannot_write(path, exc) from None
    except BaseException:
        with suppress(OSError):
            partial.unlink()
        raise


@contextmanager
def open_output(path: Path) -> Iterator[TextIO]:
    """A text handle on `path`: atomic for regular files, written through for devices/FIFOs."""
    target = path.resolve() if path.is_symlink() else path
    if target.is_dir():
        raise UserError(f"{path} is a directory; choose a file path")
    if not _is_regular_or_new(target):
        try:
            with target.open("w", encoding="utf-8") as handle:
                yield handle
        except OSError as exc:
            raise cannot_write(path, exc) from None
        return
    with replaced_atomically(path) as partial:
        try:
            handle = partial.open("w", encoding="utf-8")
        except OSError as exc:
            raise cannot_write(path, exc) from None
        with handle:
            yield handle


@contextmanager
def replaced_dir_atomically(path: Path, *, marker: str) -> Iterator[Path]:
    """Yield an empty `NAME.partial` folder to fill; on success it becomes `path`, on any failure
    it is removed. An existing `path` is replaced only when it is empty or holds `marker` (a
    folder this program wrote); the old one is moved aside first and removed after the swap, so
    `path` holds the old tree or the new one, never a mix."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file; this format writes a folder, choose a folder path")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).exists():
        raise UserError(f"{path} is a folder with other files in it; choose a new or empty folder")
    partial = partial_path(path)
    old = path.with_name(path.name + ".old")
    try:
        for leftover in (partial, old):
            if leftover.exists():
                shutil.rmtree(leftover)
        partial.mkdir(parents=True)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    try:
        yield partial
        if path.exists():
            os.replace(path, old)
        os.replace(partial, path)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise cannot_write(path, exc) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
