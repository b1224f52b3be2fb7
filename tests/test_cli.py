"""`python -m interpreter run|demo` as a new user would type it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cli(tmp_path: Path, *args: str, sandbox_settings) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DISCORD_TOKEN", "MONGODB_URI"}}
    env.update(DATA_DIR=str(sandbox_settings.data_dir), SANDBOX_VENV_DIR=str(sandbox_settings.venv_dir))
    return subprocess.run([sys.executable, "-m", "interpreter", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_run_a_script_on_my_own_csv(tmp_path, sandbox_settings):
    (tmp_path / "scores.csv").write_text("name,score\nada,90\nbob,70\n")
    (tmp_path / "chart.py").write_text(
        "import matplotlib.pyplot as plt\n"
        "df = load_file('scores.csv')\n"
        "print(df['score'].mean())\n"
        "df.plot.bar(x='name', y='score')\n"
    )
    done = cli(tmp_path, "run", "chart.py", "--file", "scores.csv", "--out", "charts", sandbox_settings=sandbox_settings)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "80.0"
    assert (tmp_path / "charts" / "figure_1.png").read_bytes().startswith(b"\x89PNG")


def test_failing_script_exits_non_zero_with_the_traceback(tmp_path, sandbox_settings):
    (tmp_path / "broken.py").write_text("print('start')\nraise ValueError('bad data')\n")
    done = cli(tmp_path, "run", "broken.py", sandbox_settings=sandbox_settings)
    assert done.returncode == 1
    assert done.stdout == "start\n"
    assert "ValueError: bad data" in done.stderr


def test_missing_file_is_a_usage_error(tmp_path, sandbox_settings):
    done = cli(tmp_path, "run", "nope.py", sandbox_settings=sandbox_settings)
    assert done.returncode == 2
    assert "No such file: nope.py" in done.stderr


def test_demo_writes_the_chart_to_the_folder_it_names(tmp_path, sandbox_settings):
    done = cli(tmp_path, "demo", "--out", "demo", sandbox_settings=sandbox_settings)
    assert done.returncode == 0, done.stderr
    chart = tmp_path / "demo" / "revenue_by_month.png"
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert f"Demo chart: {chart}" in done.stderr
