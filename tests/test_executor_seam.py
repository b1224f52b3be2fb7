"""The Executor seam and the typed RunResult: the seed's dict shape is kept, and the
bot's side reaches the engine only through `interpreter`'s public API."""

from __future__ import annotations

import ast
from pathlib import Path

import interpreter
from interpreter import ExitCause, GeneratedFile, RunResult

REPO = Path(__file__).resolve().parent.parent
SEED_KEYS = ["success", "output", "error", "execution_time", "return_code", "generated_files"]
RAN_KEYS = SEED_KEYS + ["exit_cause", "output_truncated", "skipped_files"]


def test_refusal_dict_is_the_seeds_base_shape():
    refused = RunResult.refusal("Security validation failed: x")
    assert refused.refused
    assert refused.to_dict() == {"success": False, "output": "", "error": "Security validation failed: x",
                                 "execution_time": 0.0, "return_code": -1, "generated_files": []}
    with_packages = RunResult.refusal("no", installed_packages=(), failed_packages=({"package": "x", "reason": "r"},))
    assert list(with_packages.to_dict()) == SEED_KEYS + ["installed_packages", "failed_packages"]


def test_ran_dict_keeps_every_key_in_order():
    png = GeneratedFile(filename="a.png", type="image", data=b"\x89PNG", size=4, file_id="f")
    result = RunResult(success=True, output="hi\n", error="", execution_time=0.25, return_code=0,
                       generated_files=(png,), exit_cause=ExitCause.OK, output_truncated=True,
                       skipped_files=("x (too big)",))
    as_dict = result.to_dict()
    assert list(as_dict) == RAN_KEYS
    assert as_dict["exit_cause"] == "ok" and as_dict["output_truncated"] is True
    assert as_dict["skipped_files"] == ["x (too big)"]
    assert as_dict["generated_files"] == [{"filename": "a.png", "type": "image", "data": b"\x89PNG", "size": 4,
                                           "file_id": "f"}]


async def test_execute_code_is_run_code_as_a_dict(engine):
    typed = await interpreter.run_code("print('same')", user_id=1)
    seed = await interpreter.execute_code("print('same')", user_id=1)
    assert isinstance(typed, RunResult) and typed.exit_cause is ExitCause.OK
    assert list(seed) == list(typed.to_dict()) == RAN_KEYS + ["timeout_seconds"]
    assert seed["output"] == typed.output == "same\n"
    refused = await interpreter.execute_code("print(1)", user_id=1, user_files=["nope"])
    assert list(refused) == SEED_KEYS + ["timeout_seconds"] and refused["return_code"] == -1


def _reaches(tree: ast.AST) -> set[str]:
    """Attributes read anywhere (`x.runner`), plus names called like the engine's accessors."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.Name) and node.id == "default_engine":
            found.add(node.id)
    return found


def test_bot_side_uses_only_the_public_api():
    """Cogs and the client never reach into the engine's execution parts (its runner,
    sessions, access rules, package manager): with a remote executor the first two live in
    another process, and the rules are reached through interpreter.admit_run/check_run."""
    forbidden = {"default_engine", "runner", "sessions", "access"}
    offenders = {}
    for path in sorted([*REPO.glob("cogs/*.py"), REPO / "bot" / "client.py"]):
        tree = ast.parse(path.read_text())
        used = _reaches(tree) & forbidden
        imports = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        internal = {m for m in imports if m in {"interpreter.engine", "interpreter.sessions", "interpreter.sandbox"}}
        if used or internal:
            offenders[path.name] = sorted(used | internal)
    assert not offenders, offenders
