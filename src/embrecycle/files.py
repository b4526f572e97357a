"""Writing files so that a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import faults
from .errors import DiskFullError

__all__ = ["atomic_write", "check_free_space", "umask_mode", "write_text_atomic"]


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` as the process's umask lets a new file have it (what ``open()`` would create)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path`` (atomic on POSIX).

    The file gets the permissions the umask gives new files. A full disk raises :class:`DiskFullError`
    naming the file, and leaves ``path`` as it was.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, umask_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        faults.point(f"write {target.name}")
        os.replace(tmp, target)
        faults.point(f"wrote {target.name}")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise DiskFullError(
                f"no space left on the device writing {target} (free: {_free_mb(target.parent):.0f} MB). "
                "Free some space and run the command again."
            ) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_free_space(folder: str | os.PathLike[str], needed_bytes: int, what: str) -> None:
    """Raise :class:`DiskFullError` before any work when ``folder``'s file system has less than ``needed_bytes``."""
    where = Path(folder)
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < needed_bytes:
        raise DiskFullError(
            f"{what} needs about {needed_bytes / 1e6:.1f} MB free in {where}, which has {free / 1e6:.1f} MB. "
            "Free some space or write elsewhere."
        )


def _free_mb(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / 1e6
    except OSError:
        return float("nan")
