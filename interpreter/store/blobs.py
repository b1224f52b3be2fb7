"""File contents on local disk: one file per stored user file, named by its id only.

The member's filename never reaches a path: ids are validated against FILE_ID_PATTERN
before any path is built, so nothing a member or a database row says can point
outside the blob directory. Writes are atomic (temp file, fsync, rename, fsync of the
directory), so a crash leaves either a whole blob or a temp file the sweep removes.
All methods block: call them through asyncio.to_thread.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from pathlib import Path

FILE_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
_TEMP_SUFFIX = ".tmp"


def new_file_id() -> str:
    """128 random bits: unguessable, and safe as a file name."""
    return secrets.token_hex(16)


def is_file_id(value: object) -> bool:
    return isinstance(value, str) and FILE_ID_PATTERN.fullmatch(value) is not None


@dataclasses.dataclass(frozen=True)
class BlobEntry:
    name: str
    path: Path
    mtime: float
    file_id: str | None  # None for temp files (an interrupted write)


class BlobDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, file_id: str) -> Path:
        if not is_file_id(file_id):
            raise ValueError("not a file id")
        return self.root / file_id

    def _ensure_root(self) -> None:
        # Blobs are for the bot's user only: the sandbox gets input files through a pipe.
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def write(self, file_id: str, data: bytes) -> Path:
        target = self.path_for(file_id)
        self._ensure_root()
        temp = self.root / f".{file_id}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self._fsync_root()
        return target

    def _fsync_root(self) -> None:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, file_id: str) -> bool:
        try:
            self.path_for(file_id).unlink()
            return True
        except FileNotFoundError:
            return False

    def size(self, file_id: str) -> int | None:
        """Size of a regular-file blob, or None when it is missing (or not a regular file)."""
        try:
            stat = os.stat(self.path_for(file_id), follow_symlinks=False)
        except FileNotFoundError:
            return None
        return stat.st_size if (stat.st_mode & 0o170000) == 0o100000 else None

    def scan(self) -> list[BlobEntry]:
        """Every blob and temp file in the directory (other names are left alone)."""
        entries = []
        try:
            iterator = os.scandir(self.root)
        except FileNotFoundError:
            return []
        with iterator:
            for entry in iterator:
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                if is_file_id(entry.name):
                    entries.append(BlobEntry(entry.name, Path(entry.path), mtime, entry.name))
                elif entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX):
                    entries.append(BlobEntry(entry.name, Path(entry.path), mtime, None))
        return entries
