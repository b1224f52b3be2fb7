"""A fast, friendly first answer for code that cannot work in the sandbox.

This is NOT the security boundary (the sandbox is: see interpreter/sandbox). It only
spares members a slow, confusing failure: a network call that the sandbox would
refuse anyway, or `!pip install` notebook syntax. It must never reject harmless code
such as `df.rename(...)`, `s.replace(...)`, `lst.remove(...)` or `import os`;
tests/test_policy.py holds it to that.
"""

from __future__ import annotations

import re

MAX_CODE_CHARS = 100_000

# Every pattern must stay linear in the code's length (precheck runs on the bot's event loop):
# no `\s*` after a `^` in MULTILINE mode, since `\s` also matches newlines and then every line
# start rescans all the blank lines after it (quadratic; tests/test_policy.py). `[^\S\n]` is
# "whitespace but not a newline": a notebook command is one line.
_CHECKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"^[^\S\n]*[!%][^\S\n]*pip3?[^\S\n]+install\b", re.MULTILINE),
        "Blocked unsafe operation: pip install from code. Ask for packages with the packages option instead",
    ),
    (
        re.compile(r"\b(?:requests|httpx|aiohttp|urllib3)\s*\.\s*(?:get|post|put|patch|delete|head|request|Session|PoolManager)\s*\("),
        "Blocked unsafe operation: network access. The sandbox has no internet; upload the data as a file instead",
    ),
    (
        re.compile(r"\burlopen\s*\(\s*['\"](?:https?|ftp)://"),
        "Blocked unsafe operation: network access. The sandbox has no internet; upload the data as a file instead",
    ),
)


def precheck(code: str) -> str | None:
    """A reason to refuse `code` before starting a sandbox, or None to run it."""
    if not code.strip():
        return "No code to run"
    if len(code) > MAX_CODE_CHARS:
        return f"Code is too long ({len(code):,} characters; the limit is {MAX_CODE_CHARS:,})"
    if "\x00" in code:
        return "Code contains a NUL character"
    for pattern, message in _CHECKS:
        if pattern.search(code):
            return message
    return None
