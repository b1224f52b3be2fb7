"""Free space on the disk that holds DATA_DIR (blobs and the SQLite database).

A full disk must look like what it is, never like a database outage, and the bot must
still be able to free space on it. So:
- `is_disk_full(exc)` recognises ENOSPC/EDQUOT and SQLite's "database or disk is full";
  stores and the file manager turn those into StorageFull, whose message says so;
- uploads are refused while fewer than DISK_FREE_FLOOR_MB would be left after them
  (`check_room`), so the bot itself never fills the disk;
- a reserve file of DISK_RESERVE_MB (real blocks, not a sparse file) is kept in
  DATA_DIR while there is room for it. When something else fills the disk and a delete
  fails for want of space (SQLite needs a few pages to delete a row), the reserve is
  removed and the delete retried; it is made again once space is back.

All methods block (statvfs, fallocate): call them through asyncio.to_thread.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path

from interpreter.store.base import StorageFull

log = logging.getLogger(__name__)

MB = 1024 * 1024
RESERVE_NAME = ".disk-reserve"
LOW_SPACE_MESSAGE = ("The server is low on disk space, so the file was not saved (uploads stop while less than "
                     "{floor} MB would be left). Deleting old files frees space; please try again later")


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return False


NEARLY_FULL_BYTES = 1 * MB  # less than this free: an I/O error of the database is taken to be the full disk


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:  # DATA_DIR may not exist yet: ask its disk
        path = path.parent
    return path


def nearly_full(path: Path) -> bool:
    try:
        stat = os.statvfs(_existing(Path(path)))
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < NEARLY_FULL_BYTES


class DiskSpace:
    def __init__(self, root: Path, *, floor_bytes: int, reserve_bytes: int) -> None:
        self.root = Path(root)
        self.floor_bytes = max(0, floor_bytes)
        self.reserve_bytes = max(0, reserve_bytes)
        self.reserve_path = self.root / RESERVE_NAME

    def _statvfs(self) -> os.statvfs_result:
        return os.statvfs(_existing(self.root))

    def free_bytes(self) -> int:
        stat = self._statvfs()
        return stat.f_bavail * stat.f_frsize

    def check_room(self, size: int) -> None:
        """Raise StorageFull when writing `size` bytes would leave less than the floor."""
        if self.free_bytes() - size < self.floor_bytes:
            raise StorageFull(LOW_SPACE_MESSAGE.format(floor=self.floor_bytes // MB))

    def keep_reserve(self) -> bool:
        """Make the reserve file if it is missing and there is room for it above the floor."""
        if self.reserve_bytes == 0 or self.reserve_path.exists():
            return False
        if self.free_bytes() - self.reserve_bytes < self.floor_bytes:
            return False
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except FileExistsError:
            return False
        except OSError as exc:
            log.warning("could not set aside the disk reserve (%s)", exc)
            self.reserve_path.unlink(missing_ok=True)
            return False
        return True

    def release_reserve(self) -> bool:
        """Remove the reserve (the disk is full and space is needed to free space). True if it was there."""
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        log.error("disk full: released the %d MB reserve in %s so deletes can proceed", self.reserve_bytes // MB,
                  self.root)
        return True

    def describe(self) -> dict:
        """For /status: free and total space, the floor, and whether the reserve is held."""
        try:
            stat = self._statvfs()
        except OSError as exc:
            return {"disk_error": str(exc)}
        return {
            "disk_free_mb": round(stat.f_bavail * stat.f_frsize / MB, 1),
            "disk_total_mb": round(stat.f_blocks * stat.f_frsize / MB, 1),
            "disk_free_floor_mb": self.floor_bytes // MB,
            "disk_reserve_held": self.reserve_path.exists(),
        }
