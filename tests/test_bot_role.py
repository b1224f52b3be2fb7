"""The bot role as the StatefulSet runs it, on loopback: the environment rendered from
deploy/kubernetes (ConfigMap + the pod's env), a read-only root filesystem with only DATA_DIR
and /tmp writable, the pod's host name (its ordinal picks the shards), the executors over
HTTP and MongoDB (the wire test server). It starts, syncs commands as pod 0, warms the
workers, and drains on SIGTERM without one write outside its volumes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.fake_discord import FakeDiscord
from tests.fixtures_executor import WORKER_TOKEN, descendants
from tests.test_bot_drain import LAUNCH
from tests.test_bot_main import REJECTED_TOKEN
from tests.test_deploy_kubernetes import bot, container, effective_environment

ROOT = Path(__file__).resolve().parents[1]


def code_back_over_tmpfs() -> list[str]:
    """Read-only binds of the checkout and its venv where they live under /tmp (a CI clone
    can): the pod's empty /tmp would otherwise hide the code the pod has in its image."""
    binds: list[str] = []
    for path in sorted({ROOT, Path(sys.prefix).resolve()}):
        if path.is_relative_to("/tmp"):
            binds += ["--ro-bind", str(path), str(path)]
    return binds


async def test_bot_pod_starts_on_a_read_only_root_and_drains(tmp_path, executor_workers, mongo_server,
                                                             mongo_db_name):
    worker, = await executor_workers(1)
    data = tmp_path / "data"
    data.mkdir()
    identified = threading.Event()
    fake = FakeDiscord(identified.set)
    env = effective_environment(container(bot(), "bot"))  # as the pod gets it, secrets as stand-ins
    env.update(DISCORD_TOKEN=REJECTED_TOKEN, AUTO_UPLOAD="false", MONGODB_URI=mongo_server.uri, MONGODB_DATABASE=mongo_db_name,
               EXECUTOR_URLS=worker.url, EXECUTOR_TOKEN=WORKER_TOKEN, DATA_DIR=str(data), HOME=str(data),
               RUN_TIMEOUT_SECONDS="30", MAX_RUN_TIMEOUT_SECONDS="30", PYTHONPATH=str(ROOT),
               PATH="/usr/bin:/bin", PYTHONDONTWRITEBYTECODE="1",
               FAKE_DISCORD_API=f"http://127.0.0.1:{fake.port}/api/v10",
               FAKE_DISCORD_GATEWAY=f"ws://127.0.0.1:{fake.port}/gateway")
    # readOnlyRootFilesystem, an emptyDir at DATA_DIR and at /tmp, the StatefulSet's host name.
    command = [shutil.which("bwrap"), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--tmpfs", "/tmp", *code_back_over_tmpfs(), "--bind", str(data), str(data),
               "--unshare-uts", "--hostname", "code-interpreter-bot-0", "--die-with-parent",
               sys.executable, "-c", LAUNCH]
    proc = subprocess.Popen(command, cwd=data, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if not identified.wait(120):
            proc.kill()
            raise AssertionError(f"the bot never reached the gateway: {proc.communicate()[1][-4000:]}")
        bot_process = next(pid for pid in descendants(proc.pid)
                           if b"-c" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
        os.kill(bot_process, signal.SIGTERM)  # what the kubelet sends the container's process
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fake.stop()
    assert proc.returncode == 0, err[-4000:]
    assert "Read-only file system" not in err and "Traceback" not in err, err[-4000:]
    assert "Unclosed" not in err, err[-4000:]  # every connection to the workers closed at exit
    assert fake.identified_shards == [[0, 2]]  # pod 0 of SHARD_COUNT=2, SHARDS_PER_POD=1
    assert [call for call in fake.api_calls if call[0] == "PUT" and call[1].endswith("/commands")]
    assert "draining: 0 interactions in progress" in err
    assert REJECTED_TOKEN not in out + err and mongo_server.uri not in out + err
