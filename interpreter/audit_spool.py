"""Run-audit records the database could not take, kept on local disk until it can.

One JSON object per line in `<DATA_DIR>/audit-spool-<store namespace>.jsonl`, appended
and fsynced, so records survive a restart during an outage. The audit replays the file
in order once the database answers again, then removes it. The file is bounded
(`max_records`): beyond it records are dropped and counted, as are records that cannot
be written at all (a full disk) and lines that cannot be read back.

Replay is idempotent: every record carries its run's id and the store upserts on it, so a
record whose write reached the database just as the connection broke, replayed again, is
still one record (and a run's admission replayed after its end changes nothing). Lines
from before run ids (none) are added as they are. All methods block: call them in a thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from interpreter.store import RunRecord

log = logging.getLogger(__name__)

DEFAULT_MAX_RECORDS = 100_000  # ~30 MB of lines: days of runs for a busy server
_TIMES = ("started_at", "expires_at")
_LISTS = ("packages", "files_used", "files_produced")


def _line(record: RunRecord) -> str:
    fields = dataclasses.asdict(record)
    for name in _TIMES:
        fields[name] = fields[name].isoformat() if fields[name] is not None else None
    return json.dumps(fields, separators=(",", ":")) + "\n"


def _record(line: str) -> RunRecord:
    fields = json.loads(line)
    for name in _TIMES:
        fields[name] = datetime.fromisoformat(fields[name]) if fields[name] is not None else None
    for name in _LISTS:
        fields[name] = tuple(str(item) for item in fields[name])
    if not isinstance(fields.get("run_id"), (str, type(None))):
        raise TypeError("run_id")
    return RunRecord(**fields)


class AuditSpool:
    def __init__(self, path: Path, *, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        self.path = Path(path)
        self.max_records = max_records
        self._count: int | None = None  # lines in the file; read lazily (the file may predate this process)

    @property
    def count_known(self) -> bool:
        """Whether `count` answers without reading the file (one stat at most)."""
        if self._count is None and not self.path.exists():
            self._count = 0
        return self._count is not None

    @property
    def count(self) -> int:
        if self._count is None:
            try:
                with self.path.open("rb") as handle:
                    self._count = sum(1 for _ in handle)
            except FileNotFoundError:
                self._count = 0
        return self._count

    def append(self, records: Iterable[RunRecord]) -> tuple[int, int]:
        """Keep records; returns (kept, dropped). Drops what exceeds the bound or cannot be written."""
        records = list(records)
        room = max(0, self.max_records - self.count)
        kept, dropped = records[:room], len(records) - min(room, len(records))
        if not kept:
            return 0, dropped
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write("".join(_line(record) for record in kept))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            log.error("run audit: could not keep %d records on disk either (%s); they are lost", len(kept), exc)
            self._count = None  # a partial write may have added lines: count again
            return 0, dropped + len(kept)
        self._count = self.count + len(kept) if self._count is not None else None
        return len(kept), dropped

    def read(self) -> tuple[list[RunRecord], int]:
        """Every kept record, oldest first, and how many lines could not be read back."""
        records: list[RunRecord] = []
        unreadable = 0
        try:
            with self.path.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    try:
                        records.append(_record(line))
                    except (ValueError, TypeError, KeyError, AttributeError):
                        unreadable += 1
        except FileNotFoundError:
            pass
        return records, unreadable

    def replace(self, records: list[RunRecord]) -> None:
        """Keep exactly `records` (what a partial replay left); none: remove the file."""
        if not records:
            self.path.unlink(missing_ok=True)
            self._count = 0
            return
        temp = self.path.with_suffix(".tmp")
        with temp.open("w", encoding="utf-8") as handle:
            handle.write("".join(_line(record) for record in records))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)
        self._count = len(records)
