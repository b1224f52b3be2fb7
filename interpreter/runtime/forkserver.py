"""The fork-server template: imports the data libraries once, then forks one run per request.

Runs inside an ordinary bubblewrap sandbox (launched by interpreter/sandbox/forkserver.py
as `python -I -B forkserver.py SOCKET_FD SECCOMP_FD`), standard library only. It never
runs member code and never sees member data: a request carries only limits and four
fresh file descriptors, and everything a run does happens in a forked child that first
puts itself in new namespaces. Nothing flows back from a run to the template.

One run is two processes:

    template   (this loop; never changes after "ready")
      init     pid 1 of the run, cloned by the template straight into new user, mount,
               pid, network, IPC and UTS namespaces (clone(2), its user namespace owned
               by the run's own host uid when the host mapped the reserved range into
               the template's user namespace); joins the run's cgroups (the host moves
               it, see the handshake) and only then its own cgroup namespace, sets the
               run's rlimits, maps that one uid; mounts a private /proc and fresh tmpfs
               (/tmp, /dev/shm, /work, /data), a new devpts, /dev read-only; checks that
               nothing writable is left shared with the template; drops every
               capability, sets no_new_privs and loads the seccomp filter; then becomes
               the bootstrap's supervisor, which forks the member process that runs the
               jobs (interpreter/runtime/bootstrap.py `run_supervised`) and, as pid 1,
               reaps the member's orphans. As pid 1 the supervisor cannot be signalled
               by any process of the run.

(A "waiter" process between the template and init, which unshared the namespaces and
forked init into them, was a third Python process per run: its fork, copy-on-write
faults and exit were ~2.5 ms of a print's ~11 ms of forked CPU; docs/performance.md. A
separate supervisor below init was a fourth, ~2 ms.)

Handshake on the run's own socket (SOCK_SEQPACKET): init sends "hello"; the kernel
attaches its pid, as the host sees it (SCM_CREDENTIALS); the host moves that pid into
the run's memory and pids cgroups and answers "go"; init closes its end. Only then does
anything of the run begin. At the end the template, which reaps its children, sends
{"exit": status} on the socket (bwrap's convention: 128 + signal for a signalled run):
the run's status is the kernel's word, whether init exited or was killed, and no process
of the run holds the socket it travels on.

Template requests on SOCKET_FD (SOCK_SEQPACKET): one JSON message (limits, tmpfs sizes,
the run's host uid, and `warm`: a spare that warms up in its own process) with four fds (job pipe, output pipe, control pipe, handshake
socket). The template keeps CAP_SETUID in its own user namespace to take a run's uid as
its effective uid for the clone (bwrap's --cap-add; the host wrote the map, so the only
uids it can take are the reserved range's), and takes its own back at once; a run never
holds it: a process cloned into a new user namespace has no capability in its parent's. The template answers nothing:
a run it cannot fork closes the handshake socket, and the host starts that run cold.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import json
import os
import platform
import resource
import select
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
# The cgroup namespace is unshared by init once the host has moved it into the run's
# cgroups, so that its root is the run's group (cloned in, it would be the template's).
RUN_NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
CLONE_SYSCALL = {"x86_64": 56, "aarch64": 220}  # clone(2)'s number; the flags come first on both

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
_libc.syscall.restype = ctypes.c_long
_libc.syscall.argtypes = [ctypes.c_long, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


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
    if platform.machine() not in CLONE_SYSCALL:  # the host logs this and starts runs cold
        sys.exit(f"fork server: no clone(2) number known for {platform.machine()}")
    HOST_UIDS = _read_id_map("/proc/self/uid_map")
    # Blocked in every thread the imports below may start, so that a run's end wakes
    # this one (the wakeup fd below), whichever thread the kernel would pick.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
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
    ended_r, ended_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # a byte per SIGCHLD
    signal.set_wakeup_fd(ended_w)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)  # what counts is the wakeup fd
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    runs: dict[int, socket.socket] = {}  # each run's init -> the socket its exit status goes to
    ready = {"kind": "ready", "pid": os.getpid()}
    others = _other_threads()
    if others:  # sandbox_env turns off the ones known (bwrap.py); a library update may bring one
        notice = "; ".join(filter(None, [notice, f"threads besides the template's main one ({', '.join(others)}): "
                                                  "a lock one holds when a run is cloned stays held in its init"]))
    if notice:
        ready["notice"] = notice[:NOTICE_CHARS]
    requests.sendall(json.dumps(ready).encode())
    while True:
        readable, _, _ = select.select([requests, ended_r], [], [])
        if ended_r in readable:
            _drain(ended_r)
            _report_ended_runs(runs)
        if requests not in readable:
            continue
        try:
            message, fds, _flags, _addr = socket.recv_fds(requests, 4096, 8)
        except InterruptedError:
            continue
        if not message:
            os._exit(0)  # the host closed the socket: this template is retired
        handshake = None
        try:
            request = json.loads(message)
            if len(fds) != 4:
                raise ValueError("a request carries four descriptors")
            handshake = socket.socket(fileno=fds.pop())
            template_fds = [requests.fileno(), ended_r, ended_w, *(sock.fileno() for sock in runs.values())]
            runs[_clone_run(request, fds, handshake, template_fds, seccomp)] = handshake
        except (OSError, ValueError, SetupError) as exc:
            print(f"fork server: request refused: {exc}", file=sys.stderr, flush=True)
            if handshake is not None:
                handshake.close()  # EOF: the host starts this run cold
        for fd in fds:  # the run's pipes are the run's own now (or refused with it)
            os.close(fd)


def _other_threads() -> list[str]:
    """Names of this process's threads but the calling one. A bare clone copies only the
    caller and runs no library's at-fork handler: the others must not exist (_clone)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != os.getpid():  # main() runs in the main thread, whose id is the pid
            try:
                with open(f"/proc/self/task/{tid}/comm") as fh:
                    names.append(fh.read().strip())
            except OSError:
                pass  # it has just ended
    return names


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _report_ended_runs(runs: dict[int, socket.socket]) -> None:
    """Reap every ended run's init and tell the host how it ended, on the run's own socket."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        handshake = runs.pop(pid, None)
        if handshake is not None:
            try:
                handshake.send(json.dumps({"exit": _exit_status(wait_status)}).encode())
            except OSError:
                pass  # the host let go of the run already
            handshake.close()


# ----------------------------------------------------------------------- one run


def _clone_run(request: dict, fds: list[int], handshake: socket.socket, template_fds: list[int],
               seccomp: bytes) -> int:
    """Clone the run's init into its new namespaces; its pid (in the template's pid namespace)."""
    own = os.geteuid()
    uid = _uid_inside(int(request["uid"])) if request.get("uid") is not None else own
    gid = os.getegid()
    if uid != own:
        os.seteuid(uid)  # the run's user namespace is owned by the run's own uid (its kernel pools)
    try:
        pid = _clone(RUN_NAMESPACES)
        if pid == 0:
            # The child must never come back to the template's request loop as a second
            # template: whatever is raised before _run_init takes over ends it here.
            try:
                _run_init(request, fds, handshake, template_fds, uid, gid, seccomp)  # never returns
            finally:
                os._exit(1)
    finally:
        if uid != own:  # (the child never gets here)
            os.seteuid(own)
            _prctl(PR_SET_DUMPABLE, 1, "PR_SET_DUMPABLE")  # as it was: the uid change cleared it
    return pid


def _clone(flags: int) -> int:
    """fork(2), but the child begins in new namespaces: clone(2) with no stack of its own
    goes on in its copy of ours, as fork's child does; Python's own bookkeeping of a fork
    (locks, at-fork hooks) around it as os.fork does. 0 in the child.

    Unlike glibc's fork(), a bare clone leaves the child's cached thread id the
    template's: raise(3) and pthread_kill(3) would miss in it. Nothing the run's init
    does uses them, and the member is forked by os.fork, which sets its own."""
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _libc.syscall(CLONE_SYSCALL[platform.machine()], flags | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    errno = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(errno, f"clone: {os.strerror(errno)}")
    return pid


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


def _run_init(request: dict, fds: list[int], handshake: socket.socket, template_fds: list[int],
              uid: int, gid: int, seccomp: bytes) -> None:
    """pid 1 of the run, just cloned: join the run's cgroups, build its private world, give
    up every privilege, become the supervisor. Never returns."""
    job_fd, output_fd, control_fd = fds
    try:
        # The template gone: the whole run goes. (getppid() is 0 here, pid 1 of a new
        # namespace, so a template killed before this line goes unnoticed; the host then
        # closed the run's pipes already, and the run ends at its first read.)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in template_fds:  # its request socket, its wakeup pipe, other runs' sockets
            os.close(fd)
        # The template's uid change made its memory undumpable, which leaves /proc/self
        # (setgroups, uid_map) to root: the maps written next are our own.
        _prctl(PR_SET_DUMPABLE, 1, "PR_SET_DUMPABLE")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{UID_INSIDE} {uid} 1\n")
        _write("/proc/self/gid_map", f"{UID_INSIDE} {gid} 1\n")
        # The real and saved uids were the template's: all three the run's now (the host
        # checks the real one, which the kernel attaches to the hello).
        os.setresuid(UID_INSIDE, UID_INSIDE, UID_INSIDE)
        handshake.sendall(b"hello")  # the kernel adds our pid; the host moves us into the run's cgroups
        if handshake.recv(16) != b"go":
            os._exit(1)
        handshake.close()  # the exit status is the template's to tell
        for name, (soft, hard) in request["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (soft, hard))
        _check(_libc.unshare(CLONE_NEWCGROUP), "unshare")  # rooted at the run's own cgroup
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
