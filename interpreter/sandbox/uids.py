"""Host uids for sandboxes: one per live sandbox, from SANDBOX_UID .. SANDBOX_UID + SANDBOX_UID_COUNT - 1.

Some kernel pools are charged per host uid, whatever the namespaces: pipe buffer pages
(`pipe-user-pages-soft`), epoll watches, pending signals (`RLIMIT_SIGPENDING`), and
everything a user namespace counts in "ucounts" (inotify, message queues, ...), which
the kernel charges at every level up to the host's. Runs that shared one uid shared
those pools, so one member could exhaust them for everyone. With a uid of its own, a
run exhausts only its own.

A uid is leased with an exclusive flock on a file in LEASE_DIR, so runners in other
processes on the same host (a second worker, a test) skip it too; the lease ends when
the sandbox's last process has gone (SandboxProcess.destroy). Uids are handed out
round-robin, so the one reused is the one released longest ago. When every uid is
leased (more live sandboxes than SANDBOX_UID_COUNT), runs share the first one and the
log says so: still unprivileged, only less separated.

Runs forked from the fork-server template (interpreter/sandbox/forkserver.py) get their
uid from the same leases: the host writes the template's user namespace maps itself
(`template_uid_map`), so that every uid of the range exists inside it and the template
can hand each forked run the one leased for it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

LEASE_DIR = Path("/run/code-interpreter/uids")
# Where the range appears inside the fork-server template's user namespace: far from the
# uid the template itself has there (1000), whatever SANDBOX_UID is.
TEMPLATE_RANGE_INSIDE = 100_000


class UidLeases:
    def __init__(self, first: int, count: int, lease_dir: Path = LEASE_DIR) -> None:
        self.first = first
        self.count = max(1, count)
        self.lease_dir = lease_dir
        self._held: dict[int, int] = {}  # uid -> the fd holding its flock
        self._next = 0
        self.shared_fallbacks = 0

    @property
    def description(self) -> str:
        if self.count == 1:
            return f"{self.first} (shared by every run)"
        return f"{self.first}-{self.first + self.count - 1} (one per live sandbox)"

    def acquire(self) -> int:
        if self.count == 1:
            return self.first
        try:
            self.lease_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            return self._shared(f"cannot create {self.lease_dir} ({exc.strerror})")
        for _ in range(self.count):
            uid = self.first + self._next
            self._next = (self._next + 1) % self.count
            if uid in self._held:
                continue
            try:
                fd = os.open(self.lease_dir / str(uid), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                return self._shared(f"cannot open a uid lease ({exc.strerror})")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # leased by another runner on this host
                os.close(fd)
                continue
            self._held[uid] = fd
            return uid
        return self._shared(f"all {self.count} sandbox uids are in use")

    def template_uid_map(self, template_uid: int, template_inside: int) -> str:
        """The uid_map of the fork-server template's user namespace: its own uid as
        `template_inside`, and every other uid of the range (so each forked run can be
        given its own), at TEMPLATE_RANGE_INSIDE + offset. Lines may not overlap, so the
        template's uid, when it is one of the range, is left out of the range's lines."""
        lines = [f"{template_inside} {template_uid} 1"]
        start, end = self.first, self.first + self.count  # [start, end)
        for low, high in ((start, min(end, template_uid)), (max(start, template_uid + 1), end)):
            if low < high:
                lines.append(f"{TEMPLATE_RANGE_INSIDE + low - self.first} {low} {high - low}")
        return "".join(line + "\n" for line in lines)

    def release(self, uid: int | None) -> None:
        fd = self._held.pop(uid, None) if uid is not None else None
        if fd is not None:
            os.close(fd)

    def _shared(self, why: str) -> int:
        self.shared_fallbacks += 1
        log.warning("%s: this sandbox shares uid %s with others", why, self.first)
        return self.first
