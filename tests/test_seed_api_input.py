"""Bad input to the seed API's execute_code: a clear error in the result dict (never an
exception, never code run on a misread request), a visible note where a value is
lowered, and an audit record for every call. Real sandbox, real SQLite."""

from __future__ import annotations

import pytest

import interpreter
from interpreter import execute_code, upload_file
from interpreter.engine import UNKNOWN_MEMBER_ID

CSV = b"a,b\n1,2\n"


async def audited(engine, user_id: int) -> list[dict]:
    return await engine.recent_runs(100, user_id=user_id)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("user_files", 5, "user_files must be a list of file ids"),
    ("user_files", b"x" * 32, "user_files must be a list of file ids"),
    ("user_files", [5], "user_files must be a list of file ids (text)"),
    ("install_packages", 5, "install_packages must be a list of package names"),
    ("install_packages", "scipy", "install_packages must be a list of package names"),
    ("install_packages", [None], "install_packages must be a list of package names (text)"),
])
async def test_wrong_types_get_a_clear_error_and_are_audited(engine, field, value, message):
    result = await execute_code(code="print('ran')", user_id=7, **{field: value})
    assert result["success"] is False
    assert result["error"] == message
    assert result["output"] == ""  # nothing ran
    [record] = await audited(engine, 7)
    assert record["status"] == "refused"


async def test_one_file_id_given_as_a_string_is_refused_not_split_into_characters(engine):
    uploaded = await upload_file(user_id=7, file_data=CSV, filename="data.csv")
    result = await execute_code(code="print(FILES)", user_id=7, user_files=uploaded["file_id"])
    assert result["success"] is False
    assert result["error"] == "user_files must be a list of file ids (got one id as text: put it in a list)"
    assert "'" + uploaded["file_id"][0] + "'" not in result["error"]  # not 32 one-character ids


@pytest.mark.parametrize("user_id", [None, "abc", 1.5, True, "123"])
async def test_a_bad_user_id_runs_nothing_and_is_audited_as_unknown_member(engine, user_id):
    result = await execute_code(code="print('ran')", user_id=user_id)
    assert result["success"] is False
    assert result["error"] == "user_id must be an integer"  # the same words as upload_file
    assert result["output"] == ""
    [record] = await audited(engine, UNKNOWN_MEMBER_ID)
    assert record["status"] == "refused"


async def test_a_huge_timeout_is_lowered_and_the_result_says_so(engine):
    result = await execute_code(code="print('quick')", user_id=7, timeout=10**9)
    assert result["success"] is True
    maximum = engine.settings.max_run_timeout
    assert result["warnings"] == [f"timeout lowered from 1000000000 to the maximum of {maximum} seconds"]
    assert result["timeout_seconds"] == maximum


async def test_a_timeout_within_bounds_carries_no_warning(engine):
    result = await execute_code(code="print('quick')", user_id=7, timeout=5)
    assert "warnings" not in result
    assert result["timeout_seconds"] == 5


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1, "10"])
async def test_timeouts_that_are_not_a_positive_finite_number_are_refused(engine, timeout):
    result = await execute_code(code="print(1)", user_id=7, timeout=timeout)
    assert result["success"] is False
    assert result["error"] == "Timeout must be a positive number of seconds"


async def test_every_refusal_and_every_run_is_audited(engine):
    calls = [
        dict(code=5, user_id=8),
        dict(code="print(1)", user_id=8, user_files=5),
        dict(code="print(1)", user_id=8, install_packages=5),
        dict(code="print(1)", user_id=8, timeout=0),
        dict(code="print(1)", user_id=8, user_files=["0" * 32]),
        dict(code="print(1)", user_id=8),
    ]
    for call in calls:
        await execute_code(**call)
    records = await audited(engine, 8)
    assert len(records) == len(calls)
    assert [r["status"] for r in records].count("ok") == 1


async def test_an_astronomical_integer_timeout_is_lowered_without_overflowing(engine):
    result = await execute_code(code="print('quick')", user_id=7, timeout=10**5000)
    assert result["success"] is True
    assert result["warnings"] == [f"timeout lowered from more than 10**18 to the maximum of {engine.settings.max_run_timeout} seconds"]
