"""The fork-server template: imports the data libraries once, then forks one run per request.

Runs inside an ordinary bubblewrap sandbox (launched by interpreter/sandbox/forkserver.py
as `python -I -B forkserver.py SOCKET_FD SECCOMP_FD`), standard library only. It never
runs member code and never sees member data: a request carries only limits and four
fresh file descriptors, and everything a run does happens in a forked child that first
puts itself in new namespaces. Nothing flows back from a run to the template.

One run is three processes:

    template   (this loop; never changes after "ready")
      waiter   takes the run's own host uid (when the host mapped the reserved range
               into the template's user namespace), joins the run's cgroups (the host
               moves it, see the handshake), sets the run's rlimits, unshares
               user/mount/pid/net/ipc/uts/cgroup namespaces, maps that one uid, and
               reports the run's exit status to the host
        init   pid 1 of the run: mounts a private /proc and fresh tmpfs (/tmp, /dev/shm,
               /work, /data), a new devpts, /dev read-only; checks that nothing writable
               is left shared with the template; drops every capability, sets
               no_new_privs and loads the seccomp filter; then becomes the bootstrap's
               supervisor, which forks the member process that runs the jobs
               (interpreter/runtime/bootstrap.py `run_supervised`) and, as pid 1, reaps
               the member's orphans. (A separate supervisor below init was a fourth
               Python process per run: a fork, its copy-on-write faults and an exit,
               ~2 ms of a print's CPU; docs/performance.md.) As pid 1 the supervisor
               cannot be signalled by any process of the run.

Handshake on the run's own socket (SOCK_SEQPACKET): the waiter sends "hello"; the
kernel attaches its pid, as the host sees it (SCM_CREDENTIALS); the host moves that
pid into the run's memory and pids cgroups and answers "go". Only then does anything
of the run begin. At the end the waiter sends {"exit": status} (bwrap's convention:
128 + signal for a signalled run).

Template requests on SOCKET_FD (SOCK_SEQPACKET): one JSON message (limits, tmpfs sizes,
the run's host uid, and `warm`: a spare that warms up in its own process) with four fds (job pipe, output pipe, control pipe, handshake
socket). The template keeps CAP_SETUID in its own user namespace for the waiters'
setresuid (bwrap's --cap-add; the host wrote the map, so the only uids it can take are
the reserved range's); a run never holds it: the waiter's unshare leaves every
capability of the template's namespace behind. The template answers nothing:
a run it cannot fork closes the handshake socket, and the host starts that run cold.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import json
import os
import resource
import signal
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bootstrap  # noqa: E402 - found next to this file

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
RUN_NAMESPACES = (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC
                  | CLONE_NEWUTS | CLONE_NEWCGROUP)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18

NOTICE_CHARS = 500  # of prepare()'s notice in the "ready" message (the host reads 4096 bytes)

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522

UID_INSIDE = 1000  # the uid a run sees (bwrap's --uid, so cold and forked runs look alike)
HOSTNAME = b"sandbox"
CONTROL_FD, JOB_FD = 3, 4  # where the run's supervisor finds its pipes (fd 0 is /dev/null, 1 and 2 the output)
DEVICE_NODES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
# Mounts a run may write to, all made fresh for it by its init (the device nodes are
# the template's, but writing to a device node changes no file).
# The same list as interpreter/sandbox/bwrap.py's MASKED_PROC_FILES (tests/test_forkserver.py checks).
MASKED_PROC_FILES = ("/proc/cmdline", "/proc/locks", "/proc/modules", "/proc/kallsyms")
RUN_WRITABLE = {"/proc", "/tmp", "/dev/shm", "/work", "/data", "/dev/pts", *DEVICE_NODES}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class SetupError(Exception):
    """A step of a run's set-up failed: the run never starts (the host then starts it cold)."""


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(errno)}")


def _prctl(option: int, arg: int = 0, what: str = "prctl") -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), what)


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


# ----------------------------------------------------------------------- the template


def main() -> None:
    global HOST_UIDS
    HOST_UIDS = _read_id_map("/proc/self/uid_map")
    requests = socket.socket(fileno=int(sys.argv[1]))
    seccomp_fd = int(sys.argv[2])
    seccomp = b""
    if seccomp_fd >= 0:
        with os.fdopen(seccomp_fd, "rb") as fh:
            seccomp = fh.read()
    notice = bootstrap.prepare()
    # Telling an exception imports traceback (and, for some, difflib). A launched sandbox
    # imports them only when a run raises (most do not: ~2.5 ms a run, runtime/errors.py);
    # here they cost no run anything, and a run that raises is spared their import (~8 ms).
    import difflib  # noqa: F401
    import traceback  # noqa: F401
    # Objects that exist now are never collected in a run: its GC does not walk (and so
    # copy) the pages of the libraries it inherited.
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the waiters
    ready = {"kind": "ready", "pid": os.getpid()}
    if notice:
        ready["notice"] = notice[:NOTICE_CHARS]
    requests.sendall(json.dumps(ready).encode())
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(requests, 4096, 8)
        except InterruptedError:
            continue
        if not message:
            os._exit(0)  # the host closed the socket: this template is retired
        try:
            request = json.loads(message)
            if len(fds) != 4:
                raise ValueError("a request carries four descriptors")
            pid = os.fork()
        except (OSError, ValueError) as exc:
            print(f"fork server: request refused: {exc}", file=sys.stderr, flush=True)
            pid = -1
        if pid == 0:
            _run_waiter(request, fds, requests.fileno(), seccomp)  # never returns
        for fd in fds:
            os.close(fd)


# ----------------------------------------------------------------------- one run


def _run_waiter(request: dict, fds: list[int], template_fd: int, seccomp: bytes) -> None:
    """The run's outermost process (in the template's namespaces). Never returns."""
    status = 1
    handshake = None
    try:
        os.close(template_fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        job_fd, output_fd, control_fd, handshake_fd = fds
        handshake = socket.socket(fileno=handshake_fd)
        if request.get("uid") is not None:
            _become(_uid_inside(int(request["uid"])))
        handshake.sendall(b"hello")  # the kernel adds our pid; the host moves us into the run's cgroups
        if handshake.recv(16) != b"go":
            os._exit(1)
        for name, (soft, hard) in request["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (soft, hard))
        uid, gid = os.getuid(), os.getgid()
        _check(_libc.unshare(RUN_NAMESPACES), "unshare")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{UID_INSIDE} {uid} 1\n")
        _write("/proc/self/gid_map", f"{UID_INSIDE} {gid} 1\n")
        init = os.fork()
        if init == 0:
            handshake.close()
            _run_init(request, job_fd, output_fd, control_fd, seccomp)  # never returns
        for fd in (job_fd, output_fd, control_fd):
            os.close(fd)
        _, wait_status = os.waitpid(init, 0)
        status = _exit_status(wait_status)
    except BaseException as exc:  # noqa: BLE001 - anything here means the run cannot start
        _say(fds[1] if len(fds) > 1 else 2, f"fork server: run set-up failed: {exc}")
    finally:
        if handshake is not None:
            try:
                handshake.sendall(json.dumps({"exit": status}).encode())
            except OSError:
                pass
        os._exit(0)


def _read_id_map(path: str) -> list[tuple[int, int, int]]:
    """(inside, outside, count) lines of a user namespace map."""
    with open(path) as fh:
        return [tuple(int(field) for field in line.split()) for line in fh if line.strip()]


HOST_UIDS: list[tuple[int, int, int]] = []  # the template's uid_map, read once at start


def _uid_inside(host_uid: int) -> int:
    for inside, outside, count in HOST_UIDS:
        if outside <= host_uid < outside + count:
            return inside + host_uid - outside
    raise SetupError(f"host uid {host_uid} is not mapped in the template's user namespace")


def _become(uid: int) -> None:
    """The run's own uid, for good (real, effective and saved)."""
    if os.getuid() != uid:
        os.setresuid(uid, uid, uid)
    # The uid change made us undumpable, which leaves /proc/self (setgroups, uid_map) to root:
    # the maps written next are our own. Nothing of the run can see this process.
    _prctl(PR_SET_DUMPABLE, 1, "PR_SET_DUMPABLE")


def _run_init(request: dict, job_fd: int, output_fd: int, control_fd: int, seccomp: bytes) -> None:
    """pid 1 of the run: build its private world, give up every privilege, become the supervisor."""
    try:
        # The waiter gone: the whole run goes. (getppid() is 0 here, pid 1 of a new
        # namespace, so a waiter killed before this line goes unnoticed; the host then
        # closed the run's pipes already, and the run ends at its first read.)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
        _mount_private_world(request["tmpfs"])
        _check(_libc.sethostname(HOSTNAME, len(HOSTNAME)), "sethostname")
        # No further user namespaces from inside (as bwrap's --disable-userns); seccomp denies them too.
        _write("/proc/sys/user/max_user_namespaces", "0")
        _check_nothing_shared_is_writable()
        _drop_privileges(seccomp)
    except BaseException as exc:  # noqa: BLE001
        _say(output_fd, f"fork server: run set-up failed: {exc}")
        os._exit(1)
    _run_supervisor(job_fd, output_fd, control_fd, warm=bool(request.get("warm")))  # never returns


def _mount_private_world(sizes: dict) -> None:
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    # A proc of the run's own pid namespace: it lists the run's processes and nobody else's.
    # (bwrap, started unprivileged as here, covers nothing in its /proc, so the kernel allows it.)
    _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mounting /proc")
    for masked in MASKED_PROC_FILES:  # host-wide facts shown empty, as bwrap does for launched runs
        if os.path.exists(masked):
            _check(_libc.mount(b"/dev/null", masked.encode(), None, MS_BIND, None), f"masking {masked}")
            _check(_libc.mount(None, masked.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID, None),
                   f"masking {masked} read-only")
    for target, size in sizes.items():
        options = f"size={int(size)},mode=0755".encode()
        _check(_libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options), f"mounting {target}")
    _check(_libc.mount(b"devpts", b"/dev/pts", b"devpts", MS_NOSUID | MS_NOEXEC,
                       b"newinstance,ptmxmode=0666,mode=0620"), "mounting /dev/pts")
    _check(_libc.mount(None, b"/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None),
           "making /dev read-only")


def _check_nothing_shared_is_writable() -> None:
    """Fail closed if any writable mount the run can reach is not one made for it.

    Reads mountinfo: for each mount point the last (topmost) mount is the visible one.
    """
    visible: dict[str, bool] = {}
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            mount_point, options = fields[4], fields[5].split(",")
            visible[mount_point] = "rw" in options
    shared = sorted(point for point, writable in visible.items() if writable and point not in RUN_WRITABLE)
    if shared:
        raise SetupError(f"writable mounts shared with the template: {', '.join(shared)}")


def _drop_privileges(seccomp: bytes) -> None:
    """Every capability of the run's user namespace gone, no way back, then the syscall filter."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:  # EINVAL: past the last
            break
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0)
    data = bytes(24)  # two cap_user_data_t, all zero: no effective, permitted or inheritable capability
    _check(_libc.capset(ctypes.c_char_p(header), ctypes.c_char_p(data)), "dropping capabilities")
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")  # the init's memory is not readable through /proc/1/mem
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    if seccomp:
        if len(seccomp) % 8:
            raise SetupError("the seccomp program is not a whole number of BPF instructions")
        program = ctypes.create_string_buffer(seccomp, len(seccomp))

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        fprog = SockFprog(len(seccomp) // 8, ctypes.addressof(program))
        _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "loading seccomp")


def _run_supervisor(job_fd: int, output_fd: int, control_fd: int, *, warm: bool) -> None:
    """The run's pid 1 from here on: the bootstrap's supervisor (and its member process) on
    the run's pipes, laid out as in a launched sandbox; nothing of the template's (its log
    pipe on 1 and 2) stays open. `warm`: a spare, whose member process draws the warm-up
    chart in its own pages before it is ready (bootstrap.member_main)."""
    try:
        os.setsid()
        # Out of the way first, so no target number overwrites a source still to be moved.
        job_fd, output_fd, control_fd = (fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (job_fd, output_fd, control_fd))
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # input() fails at once instead of hanging
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.dup2(control_fd, CONTROL_FD)
        os.dup2(job_fd, JOB_FD)
        os.closerange(JOB_FD + 1, 1024)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _reseed()
        bootstrap.run_supervised(CONTROL_FD, JOB_FD, prepared=True, warm=warm, reap_orphans=True)
    except BaseException as exc:  # noqa: BLE001
        _say(2, f"fork server: run set-up failed: {exc}")
    os._exit(1)


def _reseed() -> None:
    """Random state inherited from the template would repeat in every run: draw fresh seeds.

    Only for modules the template imported: one the run imports itself seeds itself from
    the kernel then. (Importing random here to seed it cost every forked print ~1.5 ms of
    CPU in the light template, which never imports it.)"""
    random = sys.modules.get("random")
    if random is not None:
        random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def _exit_status(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _say(fd: int, text: str) -> None:
    try:
        os.write(fd, (text + "\n").encode(errors="replace")[:2000])
    except OSError:
        pass


if __name__ == "__main__":
    main()
