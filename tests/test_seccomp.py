"""The seccomp filter: what it denies, with which errno, and that ordinary work is untouched.

Three levels:
- the compiled BPF program itself, run through a small classic-BPF interpreter, so
  every denied syscall (even reboot or kexec, which no test should really call) is
  shown to get its errno, and the allowed cases (fork, threads, AF_UNIX, the default
  personality) are shown to pass;
- the program loaded by bubblewrap into a real child process that *has* every
  capability in its namespaces (`--cap-add ALL`): each family is called for real,
  and the same probes run without the filter show the kernel would have said
  something else, so the errno seen comes from the filter;
- the real `SandboxRunner`: the data-science stack works under the filter, and a
  denied call fails with a clear Python error while the run goes on.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import random
import shutil
import socket
import struct
import subprocess

import pytest

from interpreter.sandbox import seccomp
from interpreter.sandbox.seccomp import (
    CLONE_NAMESPACE_FLAGS,
    DENIED_SYSCALL_FAMILIES,
    DENY_RULES,
    native_syscall_number,
    seccomp_program,
    seccomp_unavailable_reason,
)
from interpreter.types import ExitCause
from tests.sandbox_helpers import run

SYSTEM_PYTHON = "/usr/bin/python3"

# ---------------------------------------------------------------- the BPF program, interpreted

SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000
SIGCHLD = 17
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_VFORK, CLONE_THREAD, CLONE_SYSVSEM, CLONE_SETTLS = 0x4000, 0x10000, 0x40000, 0x80000
CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x100000, 0x200000, 0x1000000
PTHREAD_CREATE_FLAGS = (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
                        | CLONE_SETTLS | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID)
FORK_FLAGS = CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD
VFORK_FLAGS = CLONE_VM | CLONE_VFORK | SIGCHLD
ADDR_NO_RANDOMIZE = 0x0040000
PER_LINUX32 = 0x0008


def native_audit_arch() -> int:
    return {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}[platform.machine()]


def evaluate(program: bytes, nr: int, args: tuple[int, ...] = (), arch: int | None = None) -> int:
    """Run a classic BPF seccomp program on one syscall and return the action word.

    Implements the instructions libseccomp emits (LD W ABS, JEQ/JGT/JGE/JSET K,
    ALU AND K, RET K) and fails on anything else rather than guessing.
    """
    arch = native_audit_arch() if arch is None else arch
    full_args = (list(args) + [0] * 6)[:6]
    data = struct.pack("<iIQ6Q", nr, arch, 0x400000, *[a & 0xFFFFFFFFFFFFFFFF for a in full_args])
    insns = [struct.unpack_from("<HBBI", program, offset) for offset in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:  # BPF_ALU | BPF_AND | BPF_K
            acc &= k
        elif code in (0x15, 0x25, 0x35, 0x45):  # BPF_JMP | JEQ / JGT / JGE / JSET, BPF_K
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        elif code == 0x06:  # BPF_RET | BPF_K
            return k
        else:
            raise AssertionError(f"instruction {code:#x} at {pc} is not handled by this test's interpreter")
        pc += 1


def errno_action(number: int) -> int:
    return RET_ERRNO | number


@pytest.fixture(scope="module")
def program() -> bytes:
    built = seccomp_program()
    assert built is not None, f"the seccomp program could not be built: {seccomp_unavailable_reason()}"
    return built


def number(name: str) -> int:
    found = native_syscall_number(name)
    assert found is not None, f"{name} does not exist on {platform.machine()}"
    return found


def test_program_builds_once_and_is_a_whole_number_of_instructions(program):
    assert 0 < len(program) < 64 * 1024  # fits the pipe the runner writes it into
    assert len(program) % 8 == 0
    assert seccomp_program() is seccomp_program()  # cached: built once per process
    assert seccomp_unavailable_reason() == ""


def test_every_listed_family_is_in_the_program_with_its_errno(program):
    """DENIED_SYSCALL_FAMILIES (what SECURITY.md and /status say) is what the program does."""
    triggering_args = {
        "clone": (seccomp.CLONE_NEWUSER | SIGCHLD,),
        "personality": (ADDR_NO_RANDOMIZE,),
        "socket": (socket.AF_INET, socket.SOCK_STREAM, 0),
        "socketpair": (socket.AF_INET6, socket.SOCK_STREAM, 0),
        "fcntl": (3, seccomp.F_SETPIPE_SZ, 1 << 20),
    }
    assert [family for family, _ in DENIED_SYSCALL_FAMILIES] == [rule.family for rule in DENY_RULES]
    checked = 0
    for rule in DENY_RULES:
        for name in rule.syscalls:
            nr = native_syscall_number(name)
            if nr is None:
                assert platform.machine() != "x86_64", f"{name} should exist on x86_64"
                continue
            action = evaluate(program, nr, triggering_args.get(name, ()))
            assert action == errno_action(rule.errno), f"{name}: {action:#x}"
            checked += 1
    assert checked >= 63  # 66 on x86_64; aarch64 has no iopl/ioperm/inotify_init


def test_namespace_flags_on_clone_are_denied_and_plain_clone_is_not(program):
    clone = number("clone")
    for flag in CLONE_NAMESPACE_FLAGS:
        assert evaluate(program, clone, (flag | SIGCHLD,)) == errno_action(errno.EPERM), hex(flag)
        assert evaluate(program, clone, (flag | PTHREAD_CREATE_FLAGS,)) == errno_action(errno.EPERM), hex(flag)
    for flags in (PTHREAD_CREATE_FLAGS, FORK_FLAGS, VFORK_FLAGS, SIGCHLD):
        assert evaluate(program, clone, (flags,)) == RET_ALLOW, hex(flags)
    assert evaluate(program, number("clone3"), (0, 88)) == errno_action(errno.ENOSYS)
    for name in ("fork", "vfork"):
        nr = native_syscall_number(name)
        if nr is not None:  # x86_64 has them, aarch64 only clone
            assert evaluate(program, nr) == RET_ALLOW


def test_only_the_default_personality_and_queries_are_allowed(program):
    personality = number("personality")
    assert evaluate(program, personality, (0,)) == RET_ALLOW
    assert evaluate(program, personality, (0xFFFFFFFF,)) == RET_ALLOW
    denied = [1 << bit for bit in range(64)] + [0xFFFFFFFE, 0x7FFFFFFF, PER_LINUX32, ADDR_NO_RANDOMIZE,
                                               1 << 32, (1 << 32) | 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF]
    denied += random.Random(7).sample(range(1, 0xFFFFFFFF), 2000)
    for value in denied:
        assert evaluate(program, personality, (value,)) == errno_action(errno.EPERM), hex(value)


def test_only_af_unix_sockets_are_allowed(program):
    for name in ("socket", "socketpair"):
        nr = number(name)
        assert evaluate(program, nr, (socket.AF_UNIX, socket.SOCK_STREAM, 0)) == RET_ALLOW
        for family in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET, 0, 255,
                       socket.AF_UNIX | (1 << 32)):  # junk above the int: denied, never truncated to AF_UNIX
            assert evaluate(program, nr, (family, socket.SOCK_STREAM, 0)) == errno_action(errno.EAFNOSUPPORT)


def test_ordinary_syscalls_are_allowed(program):
    for name in ("read", "write", "openat", "close", "mmap", "munmap", "mprotect", "futex", "execve",
                 "wait4", "kill", "pipe2", "getrandom", "rt_sigaction", "exit_group", "memfd_create"):
        assert evaluate(program, number(name), (3, 0, 0)) == RET_ALLOW, name


def test_only_growing_a_pipe_is_denied_of_fcntl(program):
    """fcntl is everywhere (locks, flags, dup): only F_SETPIPE_SZ, which draws on the uid's pipe pages, is denied,
    whatever junk sits above the 32 bits the kernel reads."""
    fcntl_nr = number("fcntl")
    for cmd in (0, 1, 2, 3, 4, 5, 6, 7, 1030, 1032, 1024, 1025, 1026, 1033, 1034):  # F_DUPFD, F_GETFL, locks, ...
        assert evaluate(program, fcntl_nr, (3, cmd, 0)) == RET_ALLOW, cmd
    for cmd in (seccomp.F_SETPIPE_SZ, (1 << 32) | seccomp.F_SETPIPE_SZ, (0xFFFF << 48) | seccomp.F_SETPIPE_SZ):
        assert evaluate(program, fcntl_nr, (3, cmd, 1 << 20)) == errno_action(errno.EPERM), hex(cmd)


def test_other_abis_on_the_same_cpu_kill_the_run(program):
    """A 32-bit (int 0x80) or x32 syscall would dodge x86_64 numbering: it ends the process."""
    assert evaluate(program, 0, arch=AUDIT_ARCH_I386) == RET_KILL_PROCESS
    if platform.machine() == "x86_64":
        assert evaluate(program, X32_SYSCALL_BIT | number("read")) == RET_KILL_PROCESS
        assert evaluate(program, X32_SYSCALL_BIT | number("ptrace")) == RET_KILL_PROCESS


def test_unavailable_libseccomp_is_reported_not_raised(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyseccomp(name, *args, **kwargs):
        if name == "pyseccomp":
            raise RuntimeError("Unable to find libseccomp")  # what pyseccomp raises without the library
        return real_import(name, *args, **kwargs)

    seccomp_program.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_pyseccomp)
    try:
        assert seccomp_program() is None
        assert "Unable to find libseccomp" in seccomp_unavailable_reason()
    finally:
        monkeypatch.undo()
        seccomp_program.cache_clear()
    assert seccomp_program() is not None
    assert seccomp_unavailable_reason() == ""


# ---------------------------------------------------------------- loaded by bwrap into a real process

PROBE_SCRIPT = r'''
import ctypes, errno, json, os, socket, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def arg(value):
    if value is None:
        return None
    if isinstance(value, str):
        return ctypes.c_char_p(value.encode())
    if isinstance(value, dict) and "buf" in value:
        return ctypes.create_string_buffer(value["buf"])
    if isinstance(value, dict) and "pid" in value:
        return ctypes.c_long(os.getpid())
    return ctypes.c_long(value)

def outcome(result):
    return "OK" if result >= 0 else errno.errorcode[ctypes.get_errno()]

def call(kind, nr, args):
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(nr), *[arg(a) for a in args])
    if result > 0 and kind == "clone":
        os.waitpid(result, 0)
    elif result == 0 and kind == "clone":
        os._exit(0)  # the child of a raw clone: leave at once
    return outcome(result)

def python_socket(kind, family):
    try:
        if kind == "socket":
            socket.socket(family, socket.SOCK_STREAM if family != socket.AF_NETLINK else socket.SOCK_RAW).close()
        else:
            for s in socket.socketpair(family, socket.SOCK_STREAM):
                s.close()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "OK"

results = {}
for label, kind, nr, args in json.loads(sys.argv[1]):
    if kind in ("socket", "socketpair"):
        results[label] = python_socket(kind, args[0])
    else:
        results[label] = call(kind, nr, args)
print(json.dumps(results))
'''

O_CLOEXEC = 0o2000000
AT_FDCWD = -100
UFFD_USER_MODE_ONLY = 1
Q_SYNC = 0x800001

# (label, syscall, args, errno expected under the filter). Arguments are chosen so that,
# without the filter and with capabilities, the kernel answers something else.
SYSCALL_PROBES: list[tuple[str, str, list, str]] = [
    ("ptrace(PEEKDATA, bwrap's pid 1)", "ptrace", [2, 1, 0, 0], "EPERM"),
    ("process_vm_readv(self)", "process_vm_readv", [{"pid": 0}, None, 0, None, 0, 0], "EPERM"),
    ("process_vm_writev(self)", "process_vm_writev", [{"pid": 0}, None, 0, None, 0, 0], "EPERM"),
    ("pidfd_getfd", "pidfd_getfd", [-1, 0, 0], "EPERM"),
    ("process_madvise", "process_madvise", [-1, None, 0, 0, 0], "EPERM"),
    ("mount(tmpfs on /tmp)", "mount", ["none", "/tmp", "tmpfs", 0, None], "EPERM"),
    ("umount2", "umount2", ["/nonexistent", 0], "EPERM"),
    ("pivot_root", "pivot_root", ["/nonexistent", "/nonexistent"], "EPERM"),
    ("move_mount", "move_mount", [-1, "", AT_FDCWD, "/tmp", 0], "EPERM"),
    ("open_tree", "open_tree", [AT_FDCWD, "/nonexistent", 0], "EPERM"),
    ("open_tree_attr", "open_tree_attr", [AT_FDCWD, "/nonexistent", 0, None, 0], "EPERM"),
    ("fsopen", "fsopen", ["no-such-fs", 0], "EPERM"),
    ("fsmount", "fsmount", [-1, 0, 0], "EPERM"),
    ("fsconfig", "fsconfig", [-1, 0, None, None, 0], "EPERM"),
    ("fspick", "fspick", [AT_FDCWD, "/nonexistent", 0], "EPERM"),
    ("mount_setattr", "mount_setattr", [-1, "", 0, None, 0], "EPERM"),
    ("unshare(0)", "unshare", [0], "EPERM"),
    ("setns", "setns", [-1, 0], "EPERM"),
    *[(f"clone({name}|SIGCHLD)", "clone", [flag | SIGCHLD, 0, 0, 0, 0], "EPERM")
      for name, flag in (("CLONE_NEWNS", seccomp.CLONE_NEWNS), ("CLONE_NEWCGROUP", seccomp.CLONE_NEWCGROUP),
                         ("CLONE_NEWUTS", seccomp.CLONE_NEWUTS), ("CLONE_NEWIPC", seccomp.CLONE_NEWIPC),
                         ("CLONE_NEWUSER", seccomp.CLONE_NEWUSER), ("CLONE_NEWPID", seccomp.CLONE_NEWPID),
                         ("CLONE_NEWNET", seccomp.CLONE_NEWNET))],
    ("clone3", "clone3", [None, 0], "ENOSYS"),
    ("bpf(PROG_LOAD)", "bpf", [5, None, 0], "EPERM"),
    ("keyctl(GET_KEYRING_ID)", "keyctl", [0, -3, 0], "EPERM"),
    ("add_key", "add_key", ["user", "probe", "x", 1, -2], "EPERM"),
    ("request_key", "request_key", ["user", "no-such-key", None, 0], "EPERM"),
    ("perf_event_open", "perf_event_open", [None, 0, -1, -1, 0], "EPERM"),
    ("kexec_load", "kexec_load", [0, 0, None, 0], "EPERM"),
    ("kexec_file_load", "kexec_file_load", [-1, -1, 0, None, 0], "EPERM"),
    ("init_module", "init_module", [None, 0, ""], "EPERM"),
    ("finit_module", "finit_module", [-1, "", 0], "EPERM"),
    ("delete_module", "delete_module", ["no_such_module", 0], "EPERM"),
    ("reboot(bad magic)", "reboot", [0, 0, 0, None], "EPERM"),
    ("swapon", "swapon", ["/nonexistent", 0], "EPERM"),
    ("swapoff", "swapoff", ["/nonexistent"], "EPERM"),
    ("iopl(0)", "iopl", [0], "EPERM"),
    ("ioperm", "ioperm", [0, 0, 0], "EPERM"),
    ("userfaultfd(USER_MODE_ONLY)", "userfaultfd", [UFFD_USER_MODE_ONLY | O_CLOEXEC], "EPERM"),
    ("acct", "acct", [None], "EPERM"),
    ("quotactl(Q_SYNC)", "quotactl", [Q_SYNC, None, 0, None], "EPERM"),
    ("quotactl_fd", "quotactl_fd", [-1, 0, 0, None], "EPERM"),
    ("name_to_handle_at", "name_to_handle_at", [AT_FDCWD, "/", None, None, 0], "EPERM"),
    ("open_by_handle_at", "open_by_handle_at", [AT_FDCWD, None, 0], "EPERM"),
    ("personality(ADDR_NO_RANDOMIZE)", "personality", [ADDR_NO_RANDOMIZE], "EPERM"),
    ("personality(PER_LINUX32)", "personality", [PER_LINUX32], "EPERM"),
    ("io_uring_setup", "io_uring_setup", [1, {"buf": 120}], "ENOSYS"),
    ("io_uring_enter", "io_uring_enter", [-1, 0, 0, 0, None, 0], "ENOSYS"),
    ("io_uring_register", "io_uring_register", [-1, 0, None, 0], "ENOSYS"),
    ("io_setup(1)", "io_setup", [1, {"buf": 8}], "ENOSYS"),
    ("io_destroy", "io_destroy", [0], "ENOSYS"),
    ("io_submit", "io_submit", [0, 0, None], "ENOSYS"),
    ("io_cancel", "io_cancel", [0, None, None], "ENOSYS"),
    ("io_getevents", "io_getevents", [0, 0, 0, None, None], "ENOSYS"),
    ("io_pgetevents", "io_pgetevents", [0, 0, 0, None, None, None], "ENOSYS"),
    ("inotify_init", "inotify_init", [], "ENOSYS"),
    ("inotify_init1", "inotify_init1", [0], "ENOSYS"),
    ("inotify_add_watch", "inotify_add_watch", [-1, "/", 0xFFF], "ENOSYS"),
    ("inotify_rm_watch", "inotify_rm_watch", [-1, 1], "ENOSYS"),
    ("fanotify_init(FAN_REPORT_FID)", "fanotify_init", [0x200, 0], "EPERM"),  # allowed unprivileged since 5.13
    ("fanotify_mark", "fanotify_mark", [-1, 1, 1, AT_FDCWD, "/"], "EPERM"),
    ("mq_open", "mq_open", ["probe", 0o100 | 2, 0o600, None], "ENOSYS"),
    ("mq_unlink", "mq_unlink", ["probe"], "ENOSYS"),
    ("mq_timedsend", "mq_timedsend", [-1, None, 0, 0, None], "ENOSYS"),
    ("mq_timedreceive", "mq_timedreceive", [-1, None, 0, None, None], "ENOSYS"),
    ("mq_notify", "mq_notify", [-1, None], "ENOSYS"),
    ("mq_getsetattr", "mq_getsetattr", [-1, None, None], "ENOSYS"),
    ("fcntl(F_SETPIPE_SZ)", "fcntl", [-1, 1031, 1 << 20], "EPERM"),
    ("syslog(SIZE_BUFFER)", "syslog", [10, None, 0], "EPERM"),
    # allowed under the filter
    ("personality(PER_LINUX)", "personality", [0], "OK"),
    ("personality(query)", "personality", [0xFFFFFFFF], "OK"),
    ("clone(SIGCHLD)", "clone", [SIGCHLD, 0, 0, 0, 0], "OK"),
]
SOCKET_PROBES: list[tuple[str, str, int, str]] = [
    *[(f"socket({name})", "socket", getattr(socket, name), "EAFNOSUPPORT")
      for name in ("AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET", "AF_VSOCK")],
    ("socketpair(AF_INET)", "socketpair", socket.AF_INET, "EAFNOSUPPORT"),
    ("socket(AF_UNIX)", "socket", socket.AF_UNIX, "OK"),
    ("socketpair(AF_UNIX)", "socketpair", socket.AF_UNIX, "OK"),
]
# The kernel refuses these without the filter too (they need capabilities in the initial
# namespace, or the host has them switched off); the interpreter tests above show the
# program denies them itself.
KERNEL_REFUSES_ANYWAY = {
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "swapon", "swapoff",
    "acct", "bpf(PROG_LOAD)", "open_by_handle_at", "socket(AF_VSOCK)", "perf_event_open",
    "syslog(SIZE_BUFFER)",  # dmesg_restrict=1 on most hosts; the filter denies it where it is 0
}


def bwrap_path() -> str:
    path = shutil.which("bwrap")
    assert path, "bwrap is needed for these tests: install the Debian package 'bubblewrap'"
    return path


def run_in_bwrap(code: str, *argv: str, program: bytes | None, capabilities: bool) -> subprocess.CompletedProcess:
    """Run /usr/bin/python3 -c CODE in a fresh bwrap, with the filter loaded when `program` is given."""
    args = [bwrap_path(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--unshare-all", "--die-with-parent"]
    if capabilities:
        args += ["--cap-add", "ALL"]
    fds: list[int] = []
    if program is not None:
        read_end, write_end = os.pipe()
        os.write(write_end, program)
        os.close(write_end)
        fds.append(read_end)
        args += ["--seccomp", str(read_end)]
    try:
        return subprocess.run([*args, SYSTEM_PYTHON, "-c", code, *argv], pass_fds=fds, capture_output=True,
                              text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    finally:
        for fd in fds:
            os.close(fd)


def probe(program: bytes | None) -> dict[str, str]:
    spec = [(label, "syscall" if name != "clone" else "clone", native_syscall_number(name), args)
            for label, name, args, _ in SYSCALL_PROBES if native_syscall_number(name) is not None]
    spec += [(label, kind, 0, [family]) for label, kind, family, _ in SOCKET_PROBES]
    done = run_in_bwrap(PROBE_SCRIPT, json.dumps(spec), program=program, capabilities=True)
    assert done.returncode == 0, f"probe failed ({done.returncode}): {done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def filtered_and_unfiltered(program) -> tuple[dict[str, str], dict[str, str]]:
    return probe(program), probe(None)


def expected_results() -> dict[str, str]:
    expected = {label: want for label, name, _, want in SYSCALL_PROBES if native_syscall_number(name) is not None}
    expected.update({label: want for label, _, _, want in SOCKET_PROBES})
    return expected


def test_each_denied_family_gets_its_errno_in_a_real_process(filtered_and_unfiltered):
    filtered, _ = filtered_and_unfiltered
    wrong = {label: (got, expected_results()[label]) for label, got in filtered.items()
             if got != expected_results()[label]}
    assert not wrong, f"(got, expected) under the filter: {wrong}"
    if platform.machine() == "x86_64":
        assert "iopl(0)" in filtered and "open_tree_attr" in filtered


def test_the_errno_comes_from_the_filter_not_the_kernel(filtered_and_unfiltered):
    """Without the filter (same capabilities) the kernel answers differently: the filter is what denies."""
    _, unfiltered = filtered_and_unfiltered
    expected = expected_results()
    same = {label: got for label, got in unfiltered.items()
            if expected[label] != "OK" and label not in KERNEL_REFUSES_ANYWAY and got == expected[label]}
    assert not same, f"the kernel alone already gives these the filter's errno: {same}"
    # the kernel really allows these, so the filter is the only thing in the way
    for label in ("unshare(0)", "clone(CLONE_NEWUSER|SIGCHLD)", "mount(tmpfs on /tmp)",
                  "process_vm_readv(self)", "socket(AF_INET)", "personality(ADDR_NO_RANDOMIZE)"):
        assert unfiltered[label] == "OK", (label, unfiltered[label])


WORKLOAD_SCRIPT = r'''
import asyncio, json, mmap, multiprocessing, os, signal, socket, subprocess, sys, tempfile, threading
from concurrent.futures import ProcessPoolExecutor

def square(x):
    return x * x

def check(name, fn):
    try:
        results[name] = fn()
    except Exception as exc:
        results[name] = f"FAILED: {type(exc).__name__}: {exc}"

def fork_and_wait():
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

def threads():
    out = []
    workers = [threading.Thread(target=out.append, args=(i,)) for i in range(16)]
    for w in workers: w.start()
    for w in workers: w.join()
    return sorted(out) == list(range(16))

def unix_pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(b"ping"); data = b.recv(4); a.close(); b.close()
    return data.decode()

def maps():
    anon = mmap.mmap(-1, 1 << 20); anon[:5] = b"hello"
    with tempfile.TemporaryFile() as f:
        f.write(b"x" * 4096); f.flush()
        backed = mmap.mmap(f.fileno(), 4096)
        return anon[:5].decode() + backed[:1].decode()

def pool(method):
    with multiprocessing.get_context(method).Pool(2) as p:
        return p.map(square, range(6))

def executor():
    with ProcessPoolExecutor(2) as ex:
        return list(ex.map(square, range(4)))

async def async_subprocess():
    proc = await asyncio.create_subprocess_exec("/bin/echo", "async", stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    return out.decode().strip()

if __name__ == "__main__":
    results = {}
    check("fork", fork_and_wait)
    check("subprocess", lambda: subprocess.run(["/bin/sh", "-c", "echo $((6*7))"], capture_output=True, text=True).stdout.strip())
    check("threads", threads)
    check("socketpair(AF_UNIX)", unix_pair)
    check("mmap", maps)
    check("pool(fork)", lambda: pool("fork"))
    check("pool(spawn)", lambda: pool("spawn"))
    check("pool(forkserver)", lambda: pool("forkserver"))
    check("ProcessPoolExecutor", executor)
    check("asyncio subprocess", lambda: asyncio.run(async_subprocess()))
    check("signals", lambda: (signal.signal(signal.SIGUSR1, lambda *a: None), os.kill(os.getpid(), signal.SIGUSR1), "ok")[2])
    print(json.dumps(results))
'''


def test_ordinary_process_work_still_works_under_the_filter(program):
    done = run_in_bwrap(
        "import sys; sys.argv[0] = '/tmp/workload.py'; open('/tmp/workload.py', 'w').write(sys.argv[1]);"
        " import runpy; runpy.run_path('/tmp/workload.py', run_name='__main__')",
        WORKLOAD_SCRIPT, program=program, capabilities=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "fork": 7,
        "subprocess": "42",
        "threads": True,
        "socketpair(AF_UNIX)": "ping",
        "mmap": "hellox",
        "pool(fork)": [0, 1, 4, 9, 16, 25],
        "pool(spawn)": [0, 1, 4, 9, 16, 25],
        "pool(forkserver)": [0, 1, 4, 9, 16, 25],
        "ProcessPoolExecutor": [0, 1, 4, 9],
        "asyncio subprocess": "async",
        "signals": "ok",
    }


# ---------------------------------------------------------------- through the real runner


async def test_runner_applies_the_filter_and_reports_it(runner):
    assert runner.seccomp_program == seccomp_program()
    assert runner.describe()["seccomp"] == "on"
    outcome = await run(runner, """
        import _socket, errno
        try:  # the C socket: the runtime words socket.socket's refusal for members
            _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        except OSError as exc:
            print("denied:", errno.errorcode[exc.errno])
        for pid in ('self', '1'):  # the job and bwrap's pid-1 reaper: nothing in a run is unfiltered
            with open(f'/proc/{pid}/status') as status:
                print(pid, [line.split()[1] for line in status if line.startswith('Seccomp:')][0])
        print("still running")
        """)
    assert outcome.cause is ExitCause.OK, outcome.error
    assert outcome.output.splitlines() == [
        "denied: EAFNOSUPPORT",
        "self 2",  # SECCOMP_MODE_FILTER
        "1 2",
        "still running",
    ]


async def test_denied_families_fail_cleanly_inside_a_run(runner):
    outcome = await run(runner, """
        import ctypes, errno, os
        libc = ctypes.CDLL(None, use_errno=True)
        def attempt(name, *args):
            ctypes.set_errno(0)
            result = libc.syscall(*args)
            print(name, 'allowed' if result >= 0 else errno.errorcode[ctypes.get_errno()])
        attempt('unshare', %(unshare)d, 0)
        attempt('clone(CLONE_NEWUSER)', %(clone)d, 0x10000000 | 17, 0, 0, 0, 0)
        attempt('clone3', %(clone3)d, None, 0)
        attempt('mount', %(mount)d, b'none', b'/tmp', b'tmpfs', 0, None)
        attempt('ptrace(PEEKDATA, 1)', %(ptrace)d, 2, 1, 0, 0)
        attempt('keyctl', %(keyctl)d, 0, -3, 0)
        attempt('bpf', %(bpf)d, 5, None, 0)
        attempt('io_uring_setup', %(io_uring_setup)d, 1, ctypes.create_string_buffer(120))
        attempt('io_setup', %(io_setup)d, 1, ctypes.create_string_buffer(8))
        attempt('inotify_init1', %(inotify_init1)d, 0)
        attempt('mq_open', %(mq_open)d, b'q', 0o102, 0o600, None)
        r, w = os.pipe()
        attempt('fcntl(F_SETPIPE_SZ)', %(fcntl)d, w, 1031, 1 << 20)
        attempt('fcntl(F_GETPIPE_SZ)', %(fcntl)d, w, 1032, 0)
        pid = os.fork()  # plain fork still works afterwards
        if pid == 0:
            os._exit(3)
        print('fork exit', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """ % {name: number(name) for name in ("unshare", "clone", "clone3", "mount", "ptrace", "keyctl", "bpf",
                                               "io_uring_setup", "io_setup", "inotify_init1", "mq_open",
                                               "fcntl")})
    assert outcome.cause is ExitCause.OK, outcome.error
    assert outcome.output.splitlines() == [
        "unshare EPERM",
        "clone(CLONE_NEWUSER) EPERM",
        "clone3 ENOSYS",
        "mount EPERM",
        "ptrace(PEEKDATA, 1) EPERM",
        "keyctl EPERM",
        "bpf EPERM",
        "io_uring_setup ENOSYS",
        "io_setup ENOSYS",
        "inotify_init1 ENOSYS",
        "mq_open ENOSYS",
        "fcntl(F_SETPIPE_SZ) EPERM",
        "fcntl(F_GETPIPE_SZ) allowed",
        "fork exit 3",
    ]


async def test_an_uncaught_denial_ends_the_run_with_a_clear_error(runner):
    outcome = await run(runner, """
        import socket
        print("before")
        socket.create_connection(("127.0.0.1", 80))
        """)
    assert outcome.cause is ExitCause.EXCEPTION
    assert outcome.output.startswith("before")
    assert "This sandbox has no internet" in outcome.error  # the runtime's words for the filter's refusal


async def test_data_science_stack_works_under_the_filter(runner):
    outcome = await run(runner, """
        import multiprocessing
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        import numpy as np
        import pandas as pd
        import plotly.express as px
        import scipy.stats
        import seaborn as sns

        df = pd.DataFrame({'x': np.arange(50), 'y': np.arange(50) ** 2, 'g': ['a', 'b'] * 25})
        sns.lineplot(data=df, x='x', y='y', hue='g')
        plt.savefig('chart.png')
        px.scatter(df, x='x', y='y').write_html('chart.html')
        print(df.groupby('g')['y'].sum().to_dict())
        print(round(scipy.stats.pearsonr(df.x, df.y).statistic, 3))
        with multiprocessing.Pool(2) as pool:
            print(pool.map(abs, [-1, -2, -3]))
        """, timeout=60)
    assert outcome.cause is ExitCause.OK, outcome.error
    assert outcome.output.splitlines() == ["{'a': 19600, 'b': 20825}", "0.967", "[1, 2, 3]"]
    names = {f.filename for f in outcome.files}
    assert {"chart.png", "chart.html"} <= names
