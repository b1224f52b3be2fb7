"""The seed's execute_code contract through the public facade (real sandbox, real SQLite)."""

from __future__ import annotations

import pytest

import interpreter
from interpreter import execute_code, list_user_files, upload_file

SEED_KEYS = {"success", "output", "error", "execution_time", "return_code", "generated_files"}


async def test_hello_world_has_the_seed_shape(engine):
    result = await execute_code(code="print('Hello, world!')", user_id=123456789)
    assert SEED_KEYS <= set(result)
    assert result["success"] is True
    assert result["output"] == "Hello, world!\n"
    assert result["error"] == ""
    assert result["return_code"] == 0
    assert isinstance(result["execution_time"], float) and result["execution_time"] > 0
    assert result["generated_files"] == []


async def test_timeout_error_is_the_seeds_string_with_the_real_number(engine):
    result = await execute_code(code="while True:\n    pass", user_id=1, timeout=2)
    assert result["success"] is False
    assert result["error"] == "Execution timeout after 2 seconds"
    assert result["return_code"] == -1
    assert result["execution_time"] == 2


async def test_timeout_is_capped_by_the_configured_maximum(engine):
    result = await execute_code(code="print('quick')", user_id=1, timeout=10_000)
    assert result["success"] is True


@pytest.mark.parametrize("bad_timeout", [0, -5, "60", True])
async def test_bad_timeouts_get_a_clear_message(engine, bad_timeout):
    result = await execute_code(code="print(1)", user_id=1, timeout=bad_timeout)
    assert result == {**result, "success": False, "error": "Timeout must be a positive number of seconds"}


@pytest.mark.parametrize(
    "code",
    [
        "import pandas as pd\ndf = pd.DataFrame({'a': [1]}).rename(columns={'a': 'b'})\nprint(list(df.columns))",
        "s = 'a-b'.replace('-', '+')\nprint(s)",
        "lst = [1, 2]\nlst.remove(1)\nprint(lst)",
        "import os\nprint(os.getcwd())",
        "import subprocess\nprint(subprocess.run(['echo', 'fine'], capture_output=True, text=True).stdout)",
        "text = 'eval exec __import__ globals locals'\nprint(len(text))",
    ],
)
async def test_harmless_code_is_never_rejected_by_the_precheck(engine, code):
    result = await execute_code(code=code, user_id=1)
    assert result["success"], result["error"]


async def test_precheck_answers_in_the_seeds_format(engine):
    result = await execute_code(code="!pip install requests", user_id=1)
    assert result["success"] is False
    assert result["error"].startswith("Security validation failed: Blocked unsafe operation: pip install")


async def test_not_text_is_refused_clearly(engine):
    result = await execute_code(code=b"print(1)", user_id=1)  # type: ignore[arg-type]
    assert result["error"] == "Code must be text"


async def test_sales_csv_upload_then_chart(engine):
    """The issue's acceptance path: upload sales.csv, load it, get a chart."""
    up = await upload_file(user_id=7, file_data=b"month,revenue\nJan,10\nFeb,30\n", filename="sales.csv")
    assert up["success"], up
    code = (
        f"df = load_file('{up['file_id']}')\n"
        "import matplotlib.pyplot as plt\n"
        "df.plot(x='month', y='revenue')\n"
        "print(df['revenue'].sum())\n"
    )
    result = await execute_code(code=code, user_id=7, user_files=[up["file_id"]])
    assert result["success"], result["error"]
    assert result["output"].strip() == "40"
    [chart] = result["generated_files"]
    assert chart["type"] == "image" and chart["data"].startswith(b"\x89PNG")


async def test_someone_elses_file_id_runs_nothing_and_names_the_id(engine):
    up = await upload_file(user_id=1, file_data=b"a\n1\n", filename="mine.csv")
    result = await execute_code(code="print('RAN')", user_id=2, user_files=[up["file_id"]])
    assert result["success"] is False
    assert up["file_id"] in result["error"]
    assert "RAN" not in result["output"]


async def test_generated_files_can_be_kept_as_user_files(engine):
    result = await execute_code(code="open('out.csv', 'w').write('x\\n1\\n')", user_id=9, keep_generated_files=True)
    [kept] = result["generated_files"]
    assert kept["file_id"]
    listed = await list_user_files(user_id=9)
    assert [f["file_id"] for f in listed] == [kept["file_id"]]


async def test_status_reports_the_sandbox_truthfully(engine):
    status = await interpreter.get_interpreter_status()
    for key in ("venv_exists", "python_path", "installed_packages", "package_count", "last_cleanup",
                "total_user_files", "total_file_size_mb", "file_expiration_hours", "max_file_size_mb"):
        assert key in status
    sandbox = status["sandbox"]
    assert sandbox["unprivileged_uid"] == 61000
    assert sandbox["uids"] == "61000-61999 (one per live sandbox)"
    assert sandbox["cgroups"].startswith("v")  # this host allows per-run cgroups
    assert sandbox["seccomp"] == "on"
    assert status["runs"]["in_flight"] == 0
