"""The seed's result dict, built in one place."""

from __future__ import annotations

from typing import Any

from interpreter.sandbox.job import SandboxOutcome
from interpreter.types import ExitCause, GeneratedFile


def error_result(error: str, **extra: Any) -> dict:
    """A run refused before it started (bad input, policy, packages, files)."""
    return {
        "success": False,
        "output": "",
        "error": error,
        "execution_time": 0.0,
        "return_code": -1,
        "generated_files": [],
        **extra,
    }


def build_result(outcome: SandboxOutcome, timeout: float, files: list[GeneratedFile], **extra: Any) -> dict:
    execution_time = round(outcome.duration, 3)
    if outcome.cause is ExitCause.TIMEOUT:
        execution_time = timeout  # as the seed reports it
    result = {
        "success": outcome.success,
        "output": outcome.output,
        "error": outcome.error,
        "execution_time": execution_time,
        "return_code": outcome.return_code,
        "generated_files": [f.to_dict() for f in files],
        "exit_cause": outcome.cause.value,
        "output_truncated": outcome.output_truncated,
        "skipped_files": outcome.skipped_files,
        **extra,
    }
    return result
