"""The code-interpreter engine: the seed's async API, usable without Discord.

    from interpreter import execute_code, upload_file
    up = await upload_file(user_id=1, file_data=csv_bytes, filename="sales.csv")
    res = await execute_code("df = load_file(FILE_ID); print(df.head())".replace("FILE_ID", repr(up["file_id"])),
                             user_id=1, user_files=[up["file_id"]])

Every function takes an optional `db_handler`: a PyMongo async database (or a motor
database) whose `user_files` collection then holds the file metadata. Without it the
store configured in settings is used (SQLite in DATA_DIR unless MONGODB_URI is set).

Sessions keep Python state between runs, as a notebook does:

    await execute_code("import pandas as pd; df = pd.DataFrame({'a': [1, 2]})", user_id=1, session_id="s1")
    res = await execute_code("df.describe()", user_id=1, session_id="s1")   # df is still there
    await end_session("s1")

The engine is built lazily from `config.load_settings()`; call `configure(settings)`
first to use other settings (the bot and the tests do).
"""

from __future__ import annotations

from typing import Any

from interpreter.access import Admission, Denial, RunContext
from interpreter.engine import Engine, configure, get_engine
from interpreter.executor import ExecutionRequest, Executor, LocalExecutor, SessionOpened
from interpreter.result import RunResult, SessionState
from interpreter.sandbox.admission import observe_queue
from interpreter.sessions import EndReason, SessionInfo
from interpreter.types import ExitCause, GeneratedFile, InputFile, InterpreterError

__all__ = [
    "Admission",
    "Denial",
    "EndReason",
    "Engine",
    "ExecutionRequest",
    "Executor",
    "ExitCause",
    "GeneratedFile",
    "InputFile",
    "InterpreterError",
    "RunContext",
    "RunResult",
    "SessionInfo",
    "SessionOpened",
    "SessionState",
    "admit_run",
    "check_run",
    "cleanup_expired_files",
    "configure",
    "delete_user_file",
    "end_session",
    "execute_code",
    "get_engine",
    "get_executor",
    "get_file_manager",
    "get_interpreter_status",
    "get_package_manager",
    "get_session",
    "list_user_files",
    "observe_queue",
    "queued_runs",
    "recent_runs",
    "run_code",
    "shutdown",
    "start_session",
    "upload_file",
    "warm_up",
]


async def execute_code(
    code: str,
    user_id: int,
    user_files: list[str] | None = None,
    install_packages: list[str] | None = None,
    timeout: float | None = None,
    db_handler: Any = None,
    session_id: str | None = None,
    **options: Any,
) -> dict:
    """Run `code`; returns the seed's result dict (never raises for user errors).

    Without `session_id` the code runs in a fresh sandbox. With one it runs in the
    member's long-lived session of that id (opened on first use), keeping globals,
    imports and work-dir files; result["session"] tells its runs, time left and, when
    an earlier session with that id expired, a note saying so.
    """
    engine = await get_engine(db_handler)
    return await engine.execute(code, user_id, user_files, install_packages, timeout, session_id=session_id, **options)


# --- the typed API front ends use (the bot's cogs): results and sessions as objects


async def run_code(
    code: str,
    user_id: int,
    user_files: list[str] | None = None,
    install_packages: list[str] | None = None,
    timeout: float | None = None,
    *,
    session_id: str | None = None,
    guild_id: int | None = None,
    channel_id: int | None = None,
    keep_generated_files: bool = False,
    attach_named_files: bool = True,
) -> RunResult:
    """`execute_code` with a typed result: what the bot uses. `attach_named_files=False` for
    code someone else wrote: the member's files its text names are then not made available."""
    engine = await get_engine()
    return await engine.run(code, user_id, user_files, install_packages, timeout, session_id=session_id,
                            guild_id=guild_id, channel_id=channel_id, keep_generated_files=keep_generated_files,
                            attach_named_files=attach_named_files)


async def get_executor() -> Executor:
    """Where runs and sessions execute: this machine's sandboxes, or the execution workers
    named by EXECUTOR_URLS. Session calls (open, end, reset, list, sweep) go here."""
    return (await get_engine()).executor


async def admit_run(context: RunContext, *, count: bool = True, cooldown: bool = True) -> Admission | Denial:
    """The run access rules (denied members/roles, run channels, hourly limit) for `context`.

    With `count` the run counts against the member's hourly limit from now on (cancel
    the Admission if it never starts); without it nothing is counted. `cooldown=False`:
    a later run of a request already admitted (an /ask question's next run).
    """
    access = (await get_engine()).access
    if count:
        return await access.admit(context, cooldown=cooldown)
    return await access.check(context) or Admission()


def queued_runs() -> int | None:
    """Runs waiting in this process's queue right now; None when runs execute on remote workers."""
    from interpreter.engine import default_engine

    runner = getattr(default_engine(), "runner", None)
    return runner.queued if runner is not None else None


async def check_run(context: RunContext, *, use_store: bool = True) -> Denial | None:
    """The run access rules without counting a run. Without `use_store` no database is
    asked (the hourly limit counts this process's runs): for answers before Discord's 3 s deadline."""
    return await (await get_engine()).access.check(context, use_store=use_store)


async def recent_runs(limit: int = 10, user_id: int | None = None, guild_id: int | None = None) -> list[dict]:
    """Audited runs, newest first. Raises StoreUnavailable (message for members) when the database is down."""
    return await (await get_engine()).recent_runs(limit, user_id, guild_id)


async def warm_up() -> dict:
    """Prepare execution now rather than on the first run: build the sandbox venv, start
    the warm capacity (the fork-server template, or the pool) and return once it is ready
    (or could not start within a bound; runs then start cold while it keeps trying).
    Returns the sandbox layers in force, warm capacity included. With EXECUTOR_URLS the
    workers warm themselves and report ready on /readyz when they are.

    Without it, the first execute_code starts the warm capacity in the background
    (SANDBOX_WARM_ON_FIRST_RUN) and runs start cold until it is ready."""
    executor = await get_executor()
    layers = await executor.warm_up()
    await (await get_engine()).learn_run_limits()  # start-up: disagreeing settings are logged now
    if isinstance(executor, LocalExecutor):
        await executor.wait_warm()
        layers = executor.runner.describe()
    return layers


async def shutdown() -> None:
    """End every session, stop warm capacity and flush the audit: no sandbox is left running."""
    await (await get_engine()).close()


async def start_session(session_id: str, user_id: int) -> dict:
    """Open the member's session (or return the open one): {"created": bool, **session info}.

    Raises InterpreterError with a member-facing message (capacity, ownership, sandbox).
    """
    opened = await (await get_executor()).open_session(session_id, user_id)
    return {"created": opened.created, **opened.info.to_dict()}


async def get_session(session_id: str) -> dict | None:
    """The open session's info (runs, idle and age left), or None."""
    info = await (await get_executor()).get_session(session_id)
    return info.to_dict() if info else None


async def end_session(session_id: str) -> dict | None:
    """End the session now (its sandbox is destroyed); its last info, or None if none was open."""
    info = await (await get_executor()).end_session(session_id)
    return info.to_dict() if info else None


async def upload_file(user_id: int, file_data: bytes, filename: str, file_type: str | None = None, db_handler: Any = None) -> dict:
    engine = await get_engine(db_handler)
    return await engine.files.upload(user_id, file_data, filename, file_type)


async def list_user_files(user_id: int, db_handler: Any = None) -> list[dict]:
    engine = await get_engine(db_handler)
    return await engine.files.list_files(user_id)


async def delete_user_file(file_id: str, user_id: int, db_handler: Any = None) -> bool:
    engine = await get_engine(db_handler)
    return await engine.files.delete(file_id, user_id)


async def cleanup_expired_files(db_handler: Any = None) -> int:
    engine = await get_engine(db_handler)
    return await engine.cleanup_expired()  # files (counted) and expired run-audit records


async def get_interpreter_status(db_handler: Any = None) -> dict:
    engine = await get_engine(db_handler)
    return await engine.status()


def get_package_manager():
    """The PackageManager of the default engine (synchronous, as in the seed)."""
    from interpreter.engine import default_engine

    return default_engine().packages


def get_file_manager(db_handler: Any = None):
    """A FileManager bound to `db_handler` (or the configured store). Its methods are async."""
    from interpreter.engine import default_engine

    return default_engine().for_db(db_handler).files
