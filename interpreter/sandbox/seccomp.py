"""The seccomp filter every run gets: a deny-list of kernel interfaces no data-science job needs.

Namespaces, the dropped uid and read-only mounts already keep a run away from the
host; this filter narrows the kernel surface a run can reach, so that a kernel bug
in one of these interfaces (user namespaces, mount APIs, bpf, io_uring, keyrings,
perf...) is not reachable from `/run`. The default action is ALLOW: everything
pandas, matplotlib, seaborn, plotly, scipy and multiprocessing use keeps
working, and a denied call fails with an errno (not a kill), so the run goes on
and Python prints a clear `PermissionError` / `OSError`.

bubblewrap loads the compiled program (`--seccomp FD`) after it has built the
namespaces it needs itself: into the sandboxed Python right before exec, and into
its own pid-1 reaper too (both show `Seccomp: 2` in /proc/N/status), so no process
inside a run is unfiltered.

Notes on single rules:
- clone3 passes its flags in a struct seccomp cannot read, so it answers ENOSYS:
  glibc then falls back to clone(), whose flags (arg 0) are checked for CLONE_NEW*.
  CLONE_NEWTIME shares its bit with the exit-signal byte of clone() and is only
  reachable through clone3/unshare, both denied.
- io_uring, Linux AIO, inotify and POSIX message queues answer ENOSYS (as on
  kernels built without them), so libraries fall back to ordinary reads and writes
  or polling. They allocate from pools wider than the run: aio-max-nr is host-wide,
  and inotify instances/watches, message-queue bytes and pipe pages are charged to
  the host uid (user-namespace "ucounts" are charged at every level up to the
  host's, so a run's own user namespace does not separate them). Each run also
  gets its own host uid (runner.py), which separates what is left per uid.
- Syscalls newer than the system libseccomp are added by number: since Linux 5.1,
  numbers from 424 up are the same on every architecture.
- Only the native ABI is allowed. A syscall made through another ABI on the same
  CPU (x86 `int 0x80`, x32) would bypass per-ABI numbering, so it kills the run.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import platform
import socket

log = logging.getLogger(__name__)

# Namespace flags of clone(2)/unshare(2) (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NAMESPACE_FLAGS = (
    CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET,
)

F_SETPIPE_SZ = 1031  # fcntl command (linux/fcntl.h): F_LINUX_SPECIFIC_BASE + 7

PER_LINUX = 0x0  # the default execution domain, no flags
PERSONALITY_QUERY = 0xFFFFFFFF  # personality(0xffffffff) reads the current value, changes nothing

# Syscalls the system libseccomp (2.5.4 on Debian bookworm) may not know by name.
_UNIFIED_SYSCALL_NUMBERS = {
    "open_tree_attr": 467,  # Linux 6.15: open_tree + mount_setattr in one call
}


@dataclasses.dataclass(frozen=True)
class DenyRule:
    """One family of denied syscalls and the errno each call gets.

    `when` lists the argument conditions under which the call is denied; each
    entry is one alternative (any may match), and an empty tuple of conditions
    means "always". A condition is (arg index, op name, datum_a, datum_b) using
    pyseccomp's comparison names, so this table needs no pyseccomp import.
    """

    family: str
    syscalls: tuple[str, ...]
    errno: int = errno.EPERM
    when: tuple[tuple[tuple[int, str, int, int], ...], ...] = ((),)


def _any_bit_of(flags: tuple[int, ...]) -> tuple[tuple[tuple[int, str, int, int], ...], ...]:
    """arg0 has at least one of `flags` set: one alternative per flag."""
    return tuple(((0, "MASKED_EQ", flag, flag),) for flag in flags)


def _not_default_personality() -> tuple[tuple[tuple[int, str, int, int], ...], ...]:
    """arg0 is neither PER_LINUX (0) nor the query value (0xffffffff).

    libseccomp allows one comparison per argument in a rule, so "!= 0 and
    != 0xffffffff" is written as a union: a 32-bit value is neither all zeros
    nor all ones exactly when some bit i is 1 while bit i+1 (cyclically) is 0,
    i.e. (arg0 & (bit_i | bit_i+1)) == bit_i for some i. Values with anything
    above bit 31 are denied outright (the kernel would truncate them).
    """
    alternatives: list[tuple[tuple[int, str, int, int], ...]] = [((0, "GT", PERSONALITY_QUERY, 0),)]
    for bit in range(32):
        low, high = 1 << bit, 1 << ((bit + 1) % 32)
        alternatives.append(((0, "MASKED_EQ", low | high, low),))
    return tuple(alternatives)


DENY_RULES: tuple[DenyRule, ...] = (
    DenyRule("tracing other processes",
             ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "process_madvise")),
    DenyRule("mounting filesystems",
             ("mount", "umount2", "pivot_root", "move_mount", "open_tree", "open_tree_attr", "fsopen",
              "fsmount", "fsconfig", "fspick", "mount_setattr")),
    DenyRule("creating or joining namespaces", ("unshare", "setns")),
    DenyRule("clone with namespace flags (CLONE_NEWUSER/NS/PID/NET/UTS/IPC/CGROUP)", ("clone",),
             when=_any_bit_of(CLONE_NAMESPACE_FLAGS)),
    DenyRule("clone3 (ENOSYS: flags are unreadable to seccomp; libc falls back to clone)", ("clone3",),
             errno=errno.ENOSYS),
    DenyRule("eBPF", ("bpf",)),
    DenyRule("kernel keyrings", ("keyctl", "add_key", "request_key")),
    DenyRule("performance counters", ("perf_event_open",)),
    DenyRule("loading a new kernel", ("kexec_load", "kexec_file_load")),
    DenyRule("kernel modules", ("init_module", "finit_module", "delete_module")),
    DenyRule("reboot", ("reboot",)),
    DenyRule("swap", ("swapon", "swapoff")),
    DenyRule("raw I/O ports", ("iopl", "ioperm")),
    DenyRule("userfaultfd", ("userfaultfd",)),
    DenyRule("process accounting", ("acct",)),
    DenyRule("disk quotas", ("quotactl", "quotactl_fd")),
    DenyRule("opening files by handle", ("name_to_handle_at", "open_by_handle_at")),
    DenyRule("personality changes (only the default and queries are allowed)", ("personality",),
             when=_not_default_personality()),
    DenyRule("sockets other than AF_UNIX (EAFNOSUPPORT)", ("socket", "socketpair"),
             errno=errno.EAFNOSUPPORT, when=(((0, "NE", socket.AF_UNIX, 0),),)),
    DenyRule("io_uring (ENOSYS)", ("io_uring_setup", "io_uring_enter", "io_uring_register"),
             errno=errno.ENOSYS),
    # Kernel pools shared beyond the run: a data-analysis job needs none of them, and one
    # member could otherwise exhaust them for every other run and for host services.
    DenyRule("Linux AIO contexts (host-wide aio-max-nr) (ENOSYS)",
             ("io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents"),
             errno=errno.ENOSYS),
    DenyRule("inotify (per-uid instance and watch pools; watches other runs' opens) (ENOSYS)",
             ("inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch"), errno=errno.ENOSYS),
    DenyRule("fanotify (per-uid group pool)", ("fanotify_init", "fanotify_mark")),
    DenyRule("POSIX message queues (per-uid RLIMIT_MSGQUEUE) (ENOSYS)",
             ("mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr"),
             errno=errno.ENOSYS),
    DenyRule("growing pipe buffers (fcntl F_SETPIPE_SZ; per-uid pipe page quota)", ("fcntl",),
             when=(((1, "MASKED_EQ", 0xFFFFFFFF, F_SETPIPE_SZ),),)),  # the kernel reads cmd as 32 bits
    DenyRule("reading the kernel log (syslog)", ("syslog",)),
)

# For the status report and SECURITY.md: (family, syscalls).
DENIED_SYSCALL_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (rule.family, rule.syscalls) for rule in DENY_RULES
)

_unavailable_reason = "seccomp_program() has not been built yet"


def seccomp_unavailable_reason() -> str:
    """Why `seccomp_program()` is None ("" when the filter is available)."""
    seccomp_program()
    return _unavailable_reason


@functools.cache
def seccomp_program() -> bytes | None:
    """The compiled BPF program for bwrap's `--seccomp FD`, or None when it cannot be built."""
    global _unavailable_reason
    try:
        import pyseccomp
    except (ImportError, OSError, RuntimeError) as exc:  # pyseccomp raises RuntimeError without libseccomp
        _unavailable_reason = f"libseccomp or pyseccomp is not available ({exc})"
        log.warning("seccomp filter disabled: %s", _unavailable_reason)
        return None
    try:
        program = _compile(pyseccomp)
    except (OSError, ValueError) as exc:
        _unavailable_reason = f"building the seccomp filter failed ({exc})"
        log.warning("seccomp filter disabled: %s", _unavailable_reason)
        return None
    _unavailable_reason = ""
    return program


def _native_arch(pyseccomp) -> int:
    arch = pyseccomp.system_arch()
    if arch not in (pyseccomp.Arch.X86_64, pyseccomp.Arch.AARCH64):
        # Argument positions (clone's flags) differ on some architectures; refuse to guess.
        raise ValueError(f"the filter is written for x86_64 and aarch64, this machine is {platform.machine()}")
    return arch


def native_syscall_number(name: str) -> int | None:
    """The number of syscall `name` on this machine, or None where it does not exist (needs pyseccomp)."""
    import pyseccomp

    return _syscall_number(pyseccomp, _native_arch(pyseccomp), name)


def _syscall_number(pyseccomp, arch: int, name: str) -> int | None:
    number = pyseccomp.resolve_syscall(arch, name)
    if number >= 0:
        return number
    # -1: unknown to this libseccomp; below -1: a pseudo-number for a syscall this arch lacks.
    return _UNIFIED_SYSCALL_NUMBERS.get(name)


def build_filter(pyseccomp):
    """The libseccomp filter object (for `export_bpf`, or `export_pfc` to read it as text)."""
    arch = _native_arch(pyseccomp)
    syscall_filter = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    syscall_filter.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    syscall_filter.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)  # binary search over syscall numbers
    for rule in DENY_RULES:
        for name in rule.syscalls:
            number = _syscall_number(pyseccomp, arch, name)
            if number is None:
                continue  # e.g. iopl/ioperm on aarch64: nothing to deny
            for conditions in rule.when:
                args = [pyseccomp.Arg(index, getattr(pyseccomp, op), a, b) for index, op, a, b in conditions]
                syscall_filter.add_rule(pyseccomp.ERRNO(rule.errno), number, *args)
    return syscall_filter


def _compile(pyseccomp) -> bytes:
    syscall_filter = build_filter(pyseccomp)
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as buffer:
        syscall_filter.export_bpf(buffer)
        buffer.seek(0)
        program = buffer.read()
    if not program or len(program) % 8:
        raise ValueError(f"libseccomp exported a malformed program ({len(program)} bytes)")
    return program
