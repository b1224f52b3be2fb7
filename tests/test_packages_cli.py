"""The admin CLI for packages and status, run as a real subprocess against an offline venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_packages_install import data_dir, wheelhouse  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]
CLI_MODULE = "interpreter"  # interpreter/cli.py registers the admin commands from interpreter/cli_admin.py


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", CLI_MODULE, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def offline_env(data_dir: Path, wheelhouse: Path, tmp_path: Path) -> dict[str, str]:  # noqa: F811
    empty_index = tmp_path / "empty-index"
    empty_index.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key not in {"DISCORD_TOKEN", "MONGODB_URI"}}
    env.update({
        "DATA_DIR": str(data_dir),
        "SANDBOX_VENV_DIR": str(data_dir / "venv"),
        "PIP_FIND_LINKS": str(wheelhouse),
        "PIP_INDEX_URL_SANDBOX": empty_index.as_uri(),
        "APPROVED_PACKAGES": "tinywheel,sympy",
        "SANDBOX_BASE_PACKAGES": "none",  # an empty venv builds in a second
    })
    return env


def test_packages_install_list_and_refusal(data_dir: Path, wheelhouse: Path, tmp_path: Path) -> None:  # noqa: F811
    env = offline_env(data_dir, wheelhouse, tmp_path)

    installed = cli(env, "packages", "install", "tinywheel")
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.strip() == "tinywheel: installed"

    again = cli(env, "packages", "install", "TinyWheel")
    assert again.stdout.strip() == "tinywheel: already present"

    refused = cli(env, "packages", "install", "requests")
    assert refused.returncode == 1
    assert "Package 'requests' is not in the approved list" in refused.stderr

    listing = cli(env, "packages", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    assert data["installed"] == {"tinywheel": "1.0"}
    assert data["approved"] == {"admin approved": ["sympy", "tinywheel"]}

    text = cli(env, "packages", "list")
    assert "admin approved: sympy, tinywheel*" in text.stdout  # * marks what is installed


def test_packages_rebuild_swaps_the_venv(data_dir: Path, wheelhouse: Path, tmp_path: Path) -> None:  # noqa: F811
    env = offline_env(data_dir, wheelhouse, tmp_path)
    assert cli(env, "packages", "install", "tinywheel").returncode == 0
    before = os.readlink(data_dir / "venv" / "current")
    rebuilt = cli(env, "packages", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    after = os.readlink(data_dir / "venv" / "current")
    assert after != before and after in rebuilt.stdout
    listing = json.loads(cli(env, "packages", "list", "--json").stdout)
    assert listing["installed"] == {"tinywheel": "1.0"}, "the rebuild reinstalls what was installed"


def test_status_prints_the_truth_as_json(data_dir: Path, wheelhouse: Path, tmp_path: Path) -> None:  # noqa: F811
    env = offline_env(data_dir, wheelhouse, tmp_path)
    assert cli(env, "packages", "install", "tinywheel").returncode == 0
    shown = cli(env, "status")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["venv_exists"] is True
    assert status["installed_packages"] == ["tinywheel"]
    assert status["approved_package_count"] == 2
    assert "sandbox" in status and "runs" in status
