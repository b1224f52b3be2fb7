"""The JSON the bot and its execution workers exchange, and its strict checking.

A run request carries the code, limits and the input files themselves (base64), so a
worker needs no database; the answer carries the RunResult with generated files
(base64). Both sides check what they read: a field of the wrong type or an unknown
value is a `WireError` (the worker answers 400 with its message), never a traceback.

Shapes (all JSON objects):
- run request:  {code, timeout, user_id, packages: [str], session_id: str|null,
                 run_id: str|null (the bot's audit id; 32 lowercase hex digits, nothing else),
                 files: [{file_id, filename, file_type, data}]}
- run result:   RunResult's fields; exit_cause as its value, generated_files with base64 data,
                session as {info: SessionInfo fields, active, started, note, ended}
- session info: SessionInfo's fields
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from pathlib import Path
from typing import Any

from interpreter.executor import ExecutionRequest
from interpreter.result import RunResult, SessionState
from interpreter.run_ids import RUN_ID_CHARS, is_run_id
from interpreter.sessions import SessionInfo
from interpreter.types import ExitCause, GeneratedFile, InputFile

INSTANCE_HEADER = "X-Executor-Instance"  # names the worker process in every answer
MAX_NAME_CHARS = 255
MAX_ID_CHARS = 200
MAX_FILES = 100


class WireError(ValueError):
    """A message that does not have the agreed shape; the text says which field."""


# --- small typed readers


def _field(obj: Any, name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise WireError("expected a JSON object")
    value = obj.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise WireError(f"{name}: expected a number")
    if not isinstance(value, kind):
        raise WireError(f"{name}: missing or of the wrong type")
    return value


def _text(obj: Any, name: str, limit: int | None = None, *, optional: bool = False) -> str | None:
    value = _field(obj, name, str, optional=optional)
    if value is not None and limit is not None and len(value) > limit:
        raise WireError(f"{name}: longer than {limit} characters")
    return value


def _number(obj: Any, name: str) -> float:
    value = float(_field(obj, name, (int, float)))
    if not math.isfinite(value):
        raise WireError(f"{name}: not a finite number")
    return value


def _texts(obj: Any, name: str, limit: int = 100) -> tuple[str, ...]:
    values = _field(obj, name, list, optional=True) or []
    if len(values) > limit or not all(isinstance(v, str) and len(v) <= MAX_NAME_CHARS for v in values):
        raise WireError(f"{name}: expected at most {limit} short strings")
    return tuple(values)


def _bytes(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise WireError(f"{name}: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise WireError(f"{name}: not valid base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- run requests


def request_to_wire(request: ExecutionRequest) -> dict:
    """The request as JSON; reads the input files' bytes (call it off the event loop)."""
    return {
        "code": request.code,
        "timeout": request.timeout,
        "user_id": request.user_id,
        "packages": list(request.packages),
        "session_id": request.session_id,
        "run_id": request.run_id,
        "files": [{"file_id": f.file_id, "filename": f.filename, "file_type": f.file_type,
                   "data": _b64(f.host_path.read_bytes())} for f in request.input_files],
    }


def request_from_wire(obj: Any, files_dir: Path, *, max_timeout: float) -> ExecutionRequest:
    """The request a worker received; its input files are written under `files_dir` (off the loop)."""
    code = _text(obj, "code")
    timeout = _number(obj, "timeout")
    if not 0 < timeout <= max_timeout:
        raise WireError(f"timeout: must be above 0 and at most {max_timeout:g} seconds")
    user_id = int(_field(obj, "user_id", int))
    session_id = _text(obj, "session_id", MAX_ID_CHARS, optional=True)
    if session_id is not None and not session_id.strip():
        raise WireError("session_id: empty")
    run_id = obj.get("run_id")  # optional: a bot from before run ids were sent has none
    if run_id is not None and not is_run_id(run_id):
        raise WireError(f"run_id: expected {RUN_ID_CHARS} lowercase hex digits")
    raw_files = _field(obj, "files", list, optional=True) or []
    if len(raw_files) > MAX_FILES:
        raise WireError(f"files: more than {MAX_FILES}")
    inputs = []
    files_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for index, raw in enumerate(raw_files):
        file_id = _text(raw, "file_id", MAX_ID_CHARS)
        filename = _text(raw, "filename", MAX_NAME_CHARS)
        file_type = _text(raw, "file_type", 40)
        data = _bytes(raw.get("data"), f"files[{index}].data")
        path = files_dir / f"{index}.bin"  # never a name from the request
        path.write_bytes(data)
        inputs.append(InputFile(file_id=file_id, filename=filename, file_type=file_type, host_path=path,
                                size=len(data)))
    return ExecutionRequest(code=code, timeout=timeout, user_id=user_id, input_files=tuple(inputs),
                            packages=_texts(obj, "packages"), session_id=session_id, run_id=run_id)


# --- sessions


def session_info_to_wire(info: SessionInfo | None) -> dict | None:
    return None if info is None else info.to_dict()


def session_info_from_wire(obj: Any) -> SessionInfo | None:
    if obj is None:
        return None
    values = {}
    for field in dataclasses.fields(SessionInfo):
        if field.type in ("bool", bool):
            values[field.name] = bool(_field(obj, field.name, bool))
        elif field.type in ("int", int):
            values[field.name] = int(_field(obj, field.name, int))
        elif field.type in ("float", float):
            values[field.name] = _number(obj, field.name)
        else:
            values[field.name] = _text(obj, field.name, MAX_ID_CHARS)
    return SessionInfo(**values)


# --- results


def result_to_wire(result: RunResult) -> dict:
    return {
        "success": result.success, "output": result.output, "error": result.error,
        "execution_time": result.execution_time, "return_code": result.return_code,
        "generated_files": [{"filename": f.filename, "type": f.type, "size": f.size, "file_id": f.file_id,
                             "data": _b64(f.data)} for f in result.generated_files],
        "exit_cause": result.exit_cause.value if result.exit_cause else None,
        "output_truncated": result.output_truncated, "skipped_files": list(result.skipped_files),
        "timeout_seconds": result.timeout_seconds, "warnings": list(result.warnings),
        "installed_packages": None if result.installed_packages is None else list(result.installed_packages),
        "failed_packages": None if result.failed_packages is None else list(result.failed_packages),
        "session": None if result.session is None else {
            "info": result.session.info.to_dict(), "active": result.session.active,
            "started": result.session.started, "note": result.session.note, "ended": result.session.ended},
    }


def result_from_wire(obj: Any) -> RunResult:
    cause = _text(obj, "exit_cause", 40, optional=True)
    try:
        exit_cause = ExitCause(cause) if cause is not None else None
    except ValueError:
        raise WireError(f"exit_cause: unknown value {cause[:40]!r}") from None
    files = []
    for index, raw in enumerate(_field(obj, "generated_files", list)):
        data = _bytes(raw.get("data") if isinstance(raw, dict) else None, f"generated_files[{index}].data")
        files.append(GeneratedFile(filename=_text(raw, "filename", MAX_NAME_CHARS), type=_text(raw, "type", 40),
                                   data=data, size=len(data), file_id=_text(raw, "file_id", MAX_ID_CHARS, optional=True)))
    failed = _field(obj, "failed_packages", list, optional=True)
    if failed is not None and not all(isinstance(item, dict) for item in failed):
        raise WireError("failed_packages: expected objects")
    session = None
    raw_session = _field(obj, "session", dict, optional=True)
    if raw_session is not None:
        session = SessionState(info=session_info_from_wire(_field(raw_session, "info", dict)),
                               active=bool(_field(raw_session, "active", bool)),
                               started=bool(_field(raw_session, "started", bool)),
                               note=_text(raw_session, "note", 2000) or "",
                               ended=_text(raw_session, "ended", 40, optional=True))
    timeout_seconds = obj.get("timeout_seconds")
    installed = _field(obj, "installed_packages", list, optional=True)
    return RunResult(
        success=bool(_field(obj, "success", bool)), output=_text(obj, "output"), error=_text(obj, "error"),
        execution_time=_number(obj, "execution_time"), return_code=int(_field(obj, "return_code", int)),
        generated_files=tuple(files), exit_cause=exit_cause,
        output_truncated=bool(obj.get("output_truncated")), skipped_files=_texts(obj, "skipped_files", 10_000),
        timeout_seconds=_number(obj, "timeout_seconds") if timeout_seconds is not None else None,
        warnings=_texts(obj, "warnings"),
        installed_packages=None if installed is None else _texts(obj, "installed_packages"),
        failed_packages=None if failed is None else tuple(failed), session=session)
