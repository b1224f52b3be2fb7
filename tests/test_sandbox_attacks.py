"""One test per attack category of ARCHITECTURE.md: each must be contained.

Every test here runs while the bot's own environment holds a fake token and database
URI (tests/fixtures_sandbox.py), so the secrets tests are real.
"""

from __future__ import annotations

import asyncio
import textwrap
import os
import socket
import subprocess
from pathlib import Path

import pytest

from interpreter.types import ExitCause
from tests.fixtures_sandbox import FAKE_MONGODB_URI, FAKE_TOKEN, FORK_SERVER, RUNNING_AS_ROOT, make_settings
from interpreter.sandbox import SandboxJob
from tests.sandbox_helpers import PIPE_HOG, PIPE_SIZE_PROBE, files_by_name, input_file, run

CANARIES = (FAKE_TOKEN, FAKE_MONGODB_URI, "canary-password-4242")


async def assert_no_survivors(pattern: str) -> None:
    """No process matching `pattern` is left on the host (SIGKILLed ones get a moment to be reaped)."""
    for _ in range(100):
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        if not found:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"sandbox processes survived the run: {pattern!r} -> {found}")


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _bootstrap_processes() -> list[tuple[int, int]]:
    """(pid, host uid) of every sandbox bootstrap process on the host."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"bootstrap.py" in (proc / "cmdline").read_bytes():
                    found.append((int(proc.name), int(_status(int(proc.name))["Uid"].split()[1])))
            except (OSError, KeyError):
                continue
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    """Only this test's runs count: other sandboxes may be running on a shared machine."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(_status(pid)["PPid"])
        except (OSError, KeyError):
            return False
    return False


def assert_no_canary(text: str) -> None:
    for canary in CANARIES:
        assert canary not in text


# --------------------------------------------------------------------------- secrets


async def test_secrets_are_not_in_any_environment_inside(runner):
    assert os.environ["DISCORD_TOKEN"] == FAKE_TOKEN  # the host really has them
    outcome = await run(
        runner,
        """
        import os, glob
        print(dict(os.environ))
        for path in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline'):
            try:
                print(path, open(path, 'rb').read())
            except OSError as exc:
                print(path, 'unreadable', exc.errno)
        """,
    )
    assert outcome.cause is ExitCause.OK, outcome.error
    assert "/proc/1/environ" in outcome.output  # the sandbox's pid 1 was examined
    assert_no_canary(outcome.output)


async def test_no_file_inside_the_sandbox_holds_a_secret(runner):
    # /usr and the venv are read-only binds of system files and /dev holds only device
    # nodes (and the run's own pipes); everything else is scanned.
    outcome = await run(
        runner,
        """
        import os
        needles = [bytes.fromhex(h) for h in NEEDLES]
        hits, scanned = [], 0
        tops = [t for t in os.listdir('/') if not os.path.islink('/' + t)]  # /lib etc. point into /usr
        for top in sorted(set(tops) - {'usr', 'proc', 'sys', 'opt', 'dev'}):
            for root, dirs, files in os.walk('/' + top):
                for name in files:
                    path = os.path.join(root, name)
                    try:
                        data = open(path, 'rb').read(1 << 20)
                    except OSError:
                        continue
                    scanned += 1
                    hits += [path for n in needles if n in data]
        print('scanned', scanned, 'hits', hits)
        print(sorted(os.listdir('/')))
        """.replace("NEEDLES", repr([c.encode().hex() for c in CANARIES])),
    )
    assert outcome.cause is ExitCause.OK, outcome.error
    assert "hits []" in outcome.output
    listing = outcome.output.splitlines()[-1]
    assert "'root'" not in listing and "'home'" not in listing  # no host home dirs, no repo
    assert_no_canary(outcome.output)


async def test_bot_source_data_dir_and_dotenv_are_invisible(runner, sandbox_settings):
    repo = Path(__file__).resolve().parent.parent
    outcome = await run(
        runner,
        f"""
        import os
        for path in [{str(repo)!r}, {str(repo / '.env')!r}, {str(sandbox_settings.data_dir)!r},
                     '/etc/shadow', '/etc/passwd', '/root', '/var/lib']:
            print(path, os.path.exists(path))
        """,
    )
    assert outcome.cause is ExitCause.OK, outcome.error
    assert all(line.endswith("False") for line in outcome.output.splitlines()), outcome.output


async def test_runs_as_an_unprivileged_uid_with_no_capabilities(runner):
    outcome = await run(
        runner,
        """
        import os
        print(os.getuid(), os.getgid(), os.getgroups())
        status = open('/proc/self/status').read()
        print([line for line in status.splitlines() if line.startswith(('CapEff', 'CapPrm', 'NoNewPrivs'))])
        """,
    )
    lines = outcome.output.splitlines()
    assert lines[0].startswith("1000 1000")
    assert "CapEff:\\t0000000000000000" in lines[1] and "CapPrm:\\t0000000000000000" in lines[1]


async def test_sandbox_processes_run_as_the_sandbox_uid_on_the_host(runner, sandbox_settings):
    """Seen from the host, every process of a run belongs to one uid of the reserved range, never
    to root (pitfall 1); so does every other sandbox process of this runner (with
    TEST_SANDBOX_FORK_SERVER=1 its templates, each with a uid of its own)."""
    marker = "uid-probe-7f3a"  # the run's member process names itself (PR_SET_NAME) so the host finds it
    task = asyncio.create_task(run(runner, f"import ctypes\nctypes.CDLL(None).prctl(15, b'{marker}', 0, 0, 0)\n"
                                           "while True:\n    pass\n", timeout=5))
    member = None
    for _ in range(200):  # poll (bounded) until the run's python is visible on the host
        member = next((int(proc.name) for proc in Path("/proc").iterdir() if proc.name.isdigit()
                       and _process_name(int(proc.name)) == marker and _descends_from(int(proc.name), os.getpid())),
                      None)
        if member is not None:
            break
        await asyncio.sleep(0.05)
    assert member is not None, "the run's member process never showed on the host"
    supervisor = int(_status(member)["PPid"])
    run_owners = {int(_status(pid)["Uid"].split()[1]) for pid in (member, supervisor)}
    sandbox_owners = {uid for pid, uid in _bootstrap_processes() if _descends_from(pid, os.getpid())}
    await task
    if RUNNING_AS_ROOT:  # one uid of the reserved range, leased to this sandbox
        first = sandbox_settings.sandbox_uid
        reserved = range(first, first + sandbox_settings.sandbox_uid_count)
        assert len(run_owners) == 1 and min(run_owners) in reserved, run_owners
        assert all(uid in reserved for uid in sandbox_owners), sandbox_owners
    else:
        assert run_owners | sandbox_owners == {os.geteuid()}
    assert 0 not in run_owners | sandbox_owners


def _process_name(pid: int) -> str | None:
    try:
        return _status(pid)["Name"]
    except (OSError, KeyError):
        return None


async def test_each_live_sandbox_has_a_host_uid_of_its_own(runner):
    """Per-uid kernel pools (here pipe buffer pages: 16 pages a pipe, 16,384 a uid before new pipes
    shrink to one page) belonged to everyone while every run shared one uid. A session keeps
    1,200 pipes open (its processes stopped between runs, the pipes still charged); a run
    started meanwhile still gets full-size pipes. With TEST_SANDBOX_FORK_SERVER=1 both are
    forked from the template."""
    from interpreter.sandbox.runner import SandboxProcess

    if FORK_SERVER:
        hog = await runner.fork_server.fork(60)
        assert hog is not None, runner.fork_server.describe()
    else:
        hog = SandboxProcess(runner, await runner.packages.ensure_venv(), cpu_seconds=60)
        await hog.start()
    try:
        assert await hog.wait_ready()
        held = await hog.run_job(SandboxJob(code=PIPE_HOG, timeout=30))
        assert held.output.strip() == "holding 1200", (held.output, held.error)
        probe = await run(runner, PIPE_SIZE_PROBE)
        if not RUNNING_AS_ROOT:  # no setpriv: every run has the bot's uid (SECURITY.md, unprivileged mode)
            assert runner.describe()["uids"] == f"{os.geteuid()} (the bot's own)"
            return
        assert probe.output.strip() == "65536", "a run's pipes shrank because another run used its uid's quota"
        assert runner.describe()["uids"] == "61000-61999 (one per live sandbox)"
        assert hog.uid is not None and hog.uid in runner.uids._held
    finally:
        await hog.destroy()
    assert hog.uid is None  # released once nothing of it was left


async def test_a_run_learns_nothing_host_wide_from_proc(runner, tmp_path):
    """Before: /proc/cmdline showed the host's boot parameters and /proc/locks every lock held on
    the host (device and inode, other runs' included); inotify on the shared venv showed other
    runs' file opens."""
    import fcntl

    with open(tmp_path / "host-lock", "w") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)  # a lock held on the host while the run looks
        assert Path("/proc/locks").read_text() and Path("/proc/cmdline").read_text()
        outcome = await run(runner, """
            import ctypes, errno, os
            for name in ('/proc/cmdline', '/proc/locks', '/proc/kallsyms'):
                if os.path.exists(name):
                    print(name, repr(open(name).read()))
            libc = ctypes.CDLL(None, use_errno=True)
            print('inotify', libc.inotify_init1(0), errno.errorcode[ctypes.get_errno()])
            """)
    assert outcome.cause is ExitCause.OK, outcome.error
    lines = outcome.output.splitlines()
    assert lines[:2] == ["/proc/cmdline ''", "/proc/locks ''"]
    assert all(line.endswith("''") for line in lines[:-1])
    assert lines[-1] == "inotify -1 ENOSYS"


# --------------------------------------------------------------------------- other users


async def test_another_members_file_is_not_reachable(runner, tmp_path):
    other = input_file(tmp_path, "secret.csv", b"a,b\n1,2\n", file_id="f_other")
    mine = input_file(tmp_path, "mine.csv", b"x\n1\n", file_id="f_mine")
    await run(runner, "print(load_file('f_other'))", inputs=(other,))
    outcome = await run(
        runner,
        """
        import os
        print(sorted(os.listdir('/data')), sorted(FILES))
        try:
            load_file('f_other')
        except FileNotFoundError as exc:
            print('refused:', exc)
        """,
        inputs=(mine,),
    )
    assert outcome.output.splitlines()[0] == "['f_mine'] ['f_mine']"
    assert "refused: No file 'f_other'" in outcome.output
    assert str(other.host_path) not in outcome.output


async def test_nothing_persists_from_an_earlier_run(runner):
    await run(
        runner,
        """
        for path in ['/tmp/left.txt', '/dev/shm/left.txt', '/work/left.txt']:
            open(path, 'w').write('from run one')
        """,
    )
    outcome = await run(
        runner,
        "import os\nprint([os.path.exists(p) for p in ['/tmp/left.txt', '/dev/shm/left.txt', '/work/left.txt']])",
    )
    assert outcome.output.strip() == "[False, False, False]"


# --------------------------------------------------------------------------- network


async def test_no_network_of_any_kind(runner):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        outcome = await run(
            runner,
            f"""
            import socket, urllib.request, os
            print(sorted(os.listdir('/sys/class/net')) if os.path.exists('/sys/class/net') else 'no sysfs')
            for target in [('127.0.0.1', {port}), ('10.0.0.1', 80), ('1.1.1.1', 53)]:
                try:
                    s = socket.socket(); s.settimeout(2)
                    s.connect(target); print('CONNECTED', target)
                except OSError as exc:
                    print('refused', target, type(exc).__name__)
            try:
                socket.getaddrinfo('pypi.org', 443); print('DNS WORKS')
            except OSError as exc:
                print('no dns', type(exc).__name__)
            try:
                urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2); print('HTTP WORKS')
            except Exception as exc:
                print('no http', type(exc).__name__)
            try:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b'x', ('8.8.8.8', 53)); print('UDP SENT')
            except OSError as exc:
                print('no udp', type(exc).__name__)
            """,
        )
    finally:
        listener.close()
    assert "CONNECTED" not in outcome.output and "WORKS" not in outcome.output and "UDP SENT" not in outcome.output
    assert outcome.cause is ExitCause.OK, outcome.error
    assert outcome.output.splitlines()[0] == "no sysfs"
    assert "no dns" in outcome.output and "no http" in outcome.output


# --------------------------------------------------------------------------- filesystem


async def test_system_venv_and_root_are_read_only(runner):
    outcome = await run(
        runner,
        """
        import sys
        targets = ['/usr/evil', '/opt/venv/evil', sys.prefix + '/lib/python3.11/site-packages/evil.py',
                   '/evil', '/etc/evil', '/opt/runtime/bootstrap.py']
        for path in targets:
            try:
                open(path, 'w').write('x'); print('WROTE', path)
            except OSError as exc:
                print('refused', path, exc.errno)
        """,
    )
    assert "WROTE" not in outcome.output
    assert outcome.output.count("refused") == 6


async def test_work_dir_fill_stops_at_its_size_with_a_clear_error(runner):
    outcome = await run(
        runner,
        """
        chunk = b'x' * (1 << 20)
        written = 0
        try:
            for part in range(100):
                with open(f'fill{part}.bin', 'wb') as fh:
                    for _ in range(40):   # 40 MB per file: under the 50 MB file-size limit
                        fh.write(chunk); written += 1
        except OSError as exc:
            print('stopped', exc.errno, written <= 210)
        """,
    )
    assert "stopped 28 True" in outcome.output  # ENOSPC near RUN_WORKDIR_MB (200)


async def test_huge_sparse_file_is_refused_by_the_file_size_limit(runner):
    outcome = await run(
        runner,
        """
        import os, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        with open('sparse.bin', 'wb') as fh:
            try:
                fh.seek(10 ** 12); fh.write(b'x'); fh.flush()
                print('WROTE')
            except OSError as exc:
                print('refused', exc.errno)
        """,
    )
    assert "refused 27" in outcome.output  # EFBIG
    assert "sparse.bin" not in files_by_name(outcome) or len(files_by_name(outcome)["sparse.bin"]) == 0


# --------------------------------------------------------------------------- processes


async def test_fork_bomb_is_contained_and_the_host_is_fine(runner):
    outcome = await run(
        runner,
        """
        import os
        children = 0
        try:
            while True:
                if os.fork() == 0:
                    os.execvp('sleep', ['sleep', '31.4159'])
                children += 1
        except OSError as exc:
            print('fork refused after', children, exc.errno)
        """,
        timeout=15,
    )
    assert "fork refused after" in outcome.output
    children = int(outcome.output.split()[3])
    # cgroup pids.max per run as root; without root RLIMIT_NPROC, shared by the uid's runs
    assert children < (64 if RUNNING_AS_ROOT else 64 * 4)
    await assert_no_survivors("sleep 31.4159")


async def test_timeout_kills_everything_the_run_started(runner):
    outcome = await run(
        runner,
        """
        import subprocess, os
        subprocess.Popen(['sleep', '300.271'], start_new_session=True)
        os.fork() or os.execvp('sleep', ['sleep', '300.271'])
        while True:
            pass
        """,
        timeout=2,
    )
    assert outcome.cause is ExitCause.TIMEOUT
    assert outcome.error == "Execution timeout after 2 seconds"
    await assert_no_survivors("sleep 300.271")


async def test_processes_left_running_end_with_a_clean_run(runner):
    """The reply to a clean run does not wait for the kernel to tear the sandbox down,
    but everything in it was SIGKILLed first: a process the member left behind ends."""
    outcome = await run(
        runner,
        """
        import subprocess, os
        subprocess.Popen(['sleep', '271.828'], start_new_session=True)
        os.fork() or os.execvp('sleep', ['sleep', '271.828'])
        print('left two sleepers behind')
        """,
    )
    assert outcome.cause is ExitCause.OK and outcome.output == "left two sleepers behind\n"
    await runner.wait_reaped()
    await assert_no_survivors("sleep 271.828")


async def test_signals_cannot_reach_host_processes(runner):
    # a host process of the same uid the run has on the host
    victim = subprocess.Popen(["sleep", "60"], user=65534 if RUNNING_AS_ROOT else None)
    try:
        outcome = await run(
            runner,
            f"""
            import os, signal
            try:
                os.kill({victim.pid}, signal.SIGKILL); print('sent')
            except OSError as exc:
                print('no such process', exc.errno)
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            """,
        )
        assert victim.poll() is None, "a host process of the sandbox uid was killed from inside"
        assert outcome.output.startswith("no such process") or outcome.cause is not ExitCause.OK
    finally:
        victim.kill()
        victim.wait()


async def test_ptrace_and_new_namespaces_are_refused(runner):
    outcome = await run(
        runner,
        """
        import ctypes, os, subprocess
        libc = ctypes.CDLL(None, use_errno=True)
        print('unshare', libc.unshare(0x10000000), ctypes.get_errno())   # CLONE_NEWUSER
        r = subprocess.run(['unshare', '-U', 'true'], capture_output=True)
        print('unshare-cmd', r.returncode != 0)
        print('ptrace', libc.ptrace(16, 1, 0, 0))                         # PTRACE_ATTACH pid 1
        """,
    )
    lines = outcome.output.splitlines()
    assert lines[0].startswith("unshare -1")
    assert lines[1] == "unshare-cmd True"
    assert lines[2] == "ptrace -1"


async def test_subprocess_is_harmless_inside(runner):
    outcome = await run(runner, "import subprocess\nprint(subprocess.run(['id', '-u'], capture_output=True, text=True).stdout)")
    assert outcome.output.strip() == "1000"


# --------------------------------------------------------------------------- resources


async def test_memory_bomb_is_stopped_with_a_clear_error(tmp_path, sandbox_venv):
    from interpreter.packages import PackageManager
    from interpreter.sandbox import SandboxRunner

    settings = make_settings(tmp_path, RUN_MEMORY_MB="200")
    small = SandboxRunner(settings, PackageManager(settings))
    outcome = await run(small, "blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))\n")
    assert outcome.cause is ExitCause.MEMORY, (outcome.cause, outcome.error, outcome.output)
    assert outcome.error == "Out of memory: the code used more than 200 MB and was stopped"


async def test_cpu_loop_hits_the_timeout(runner):
    outcome = await run(runner, "while True:\n    pass\n", timeout=1)
    assert outcome.cause is ExitCause.TIMEOUT
    assert outcome.error == "Execution timeout after 1 seconds"


async def test_output_flood_is_cut_and_stopped(tmp_path, sandbox_venv):
    from interpreter.packages import PackageManager
    from interpreter.sandbox import SandboxRunner

    settings = make_settings(tmp_path, OUTPUT_LIMIT_BYTES="5000", OUTPUT_KILL_BYTES="2000000")
    small = SandboxRunner(settings, PackageManager(settings))
    outcome = await run(small, "while True:\n    print('spam' * 50)\n", timeout=30)
    assert outcome.cause is ExitCause.OUTPUT_LIMIT
    assert outcome.error.startswith("Output limit exceeded")
    assert outcome.output.endswith("bytes]")
    assert len(outcome.output) < 5200


async def test_long_output_is_truncated_with_a_marker(runner):
    outcome = await run(runner, "for i in range(20000):\n    print('line', i)\n")
    assert outcome.cause is ExitCause.OK
    assert outcome.output_truncated
    assert "[output truncated: showing 100,000 of" in outcome.output


# --------------------------------------------------------------------------- output files


async def test_hostile_output_files_are_contained(runner):
    outcome = await run(
        runner,
        r"""
        import os
        os.symlink('/etc/passwd', 'passwd_link.txt')
        os.symlink('/opt/venv/pyvenv.cfg', 'cfg_link.txt')
        try:
            os.link('/opt/venv/pyvenv.cfg', 'hard.txt')
        except OSError as exc:
            print('hard link refused', exc.errno)
        os.mkfifo('pipe.txt')
        top = os.getcwd()
        try:
            for _ in range(1000):
                os.mkdir('d'); os.chdir('d')
        except OSError as exc:
            print('deep stopped', exc.errno)
        open('bottom.txt', 'w').write('deep')
        os.chdir(top)
        os.makedirs('many', exist_ok=True)
        for i in range(10000):
            open(f'many/{i}.txt', 'w').close()
        open(b'bad\xff\xfename.txt', 'w').write('x')
        open('..evil.txt', 'w').write('x')
        open('\u202eexe.txt', 'w').write('x')
        print('done')
        """,
        timeout=60,
    )
    assert outcome.cause is ExitCause.OK, outcome.error
    names = [f.filename for f in outcome.files]
    assert len(names) <= 20  # MAX_GENERATED_FILES
    for f in outcome.files:
        assert "/" not in f.filename and "\\" not in f.filename and not f.filename.startswith(".")
        assert "\u202e" not in f.filename
        assert b"root:" not in f.data
    assert not any(n.startswith(("passwd_link", "cfg_link", "pipe")) for n in names)
    assert any("too many files" in s for s in outcome.skipped_files)


# --------------------------------------------------------------------------- interpreter tricks


async def test_interpreter_tricks_reach_nothing_outside(runner):
    outcome = await run(
        runner,
        """
        import pickle, os, importlib, ctypes
        # a subclass walk to os.system, __globals__, runtime-built names
        system = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0].__init__.__globals__['sys' + 'tem']
        system('cat /etc/shadow 2>&1 | head -c 60; echo')
        class Evil:
            def __reduce__(self):
                return (os.system, ('ls /root 2>&1 | head -c 80; echo',))
        pickle.loads(pickle.dumps(Evil()))
        getattr(importlib.import_module('o' + 's'), 'sys' + 'tem')('id -u')
        def probe(): pass
        print('{0.__globals__[os]}'.format(probe)[:30])
        import pandas as pd
        print(pd.eval('1 + 2'))
        print(ctypes.CDLL(None).getuid())
        """,
    )
    assert outcome.cause is ExitCause.OK, outcome.error
    assert "root:" not in outcome.output
    assert "No such file or directory" in outcome.output
    assert "1000" in outcome.output
    assert_no_canary(outcome.output)


async def test_ctypes_segfault_is_reported_as_a_crash(runner):
    outcome = await run(runner, "import ctypes\nctypes.string_at(0)\n")
    assert outcome.cause is ExitCause.CRASH
    assert outcome.error == "The Python process crashed (segmentation fault)"


@pytest.mark.parametrize("snippet", ["breakpoint()", "help()", "import code; code.interact()"])
async def test_interactive_helpers_end_instead_of_hanging(runner, snippet):
    outcome = await run(runner, snippet + "\nprint('after')\n", timeout=10)
    assert outcome.cause is not ExitCause.TIMEOUT


async def test_unicode_identifiers_and_coding_declarations_change_nothing(runner):
    outcome = await run(
        runner,
        "# -*- coding: latin-1 -*-\nimport os\nｏｓ = os\nprint(ｏｓ.getuid(), os.path.exists('/root'))\n",
    )
    assert outcome.output.strip() == "1000 False"
