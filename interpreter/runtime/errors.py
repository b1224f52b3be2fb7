"""Inside the sandbox: a member's exception, told the way that helps them fix it.

- Only the member's own frames are shown (`File "<code>", line N`): the runtime's frames
  and library internals (pandas, ast) are counted in one line, not printed. A chained
  exception made only of library frames (pandas' inner KeyError) is left out.
- Python's own hints are kept ("Did you mean: 'total'?"): Python 3.12+ computes them in
  the traceback module; on 3.11 (Debian bookworm's python3, the venv's base) they are only
  printed by the interpreter's C code, so the same algorithm is applied here.
- A KeyError on a DataFrame lists its columns (and the closest one); a forgotten import
  of a usual alias (pd, np, plt, sns...) names the import line; text columns in a numeric
  computation suggest `numeric_only=True`.

`NoInternet` (raised by interpreter/runtime/offline.py) is reported as its one line.
"""

from __future__ import annotations

import sys

# traceback and difflib are imported where an exception is told, not here: every run
# imports this module, and most runs raise nothing (together they cost a run ~2.5 ms).

CODE_FILENAME = "<code>"
MAX_CHAIN = 5
MAX_COLUMNS_LISTED = 30

# Names members use without importing them, when they run one cell of a notebook alone.
USUAL_IMPORTS = {
    "pd": "import pandas as pd",
    "np": "import numpy as np",
    "plt": "import matplotlib.pyplot as plt",
    "sns": "import seaborn as sns",
    "px": "import plotly.express as px",
    "go": "import plotly.graph_objects as go",
    "stats": "from scipy import stats",
    "math": "import math",
    "random": "import random",
    "datetime": "import datetime",
    "json": "import json",
    "re": "import re",
    "os": "import os",
}


class NoInternet(ConnectionError):
    """A run tried to reach the network; its message is the whole explanation."""


# ----------------------------------------------------------------------- Python's suggestions
# The algorithm of CPython 3.12's traceback._compute_suggestion_error (same costs and limits).

_MAX_CANDIDATE_ITEMS = 750
_MAX_STRING_SIZE = 40
_MOVE_COST = 2
_CASE_COST = 1


def _substitution_cost(a: str, b: str) -> int:
    if a == b:
        return 0
    if a.lower() == b.lower():
        return _CASE_COST
    return _MOVE_COST


def _levenshtein(a: str, b: str, max_cost: int) -> int:
    if a == b:
        return 0
    pre = 0
    while a[pre:] and b[pre:] and a[pre] == b[pre]:
        pre += 1
    a, b = a[pre:], b[pre:]
    post = 0
    while a[: len(a) - post] and b[: len(b) - post] and a[len(a) - post - 1] == b[len(b) - post - 1]:
        post += 1
    a, b = a[: len(a) - post or None], b[: len(b) - post or None]
    if not a or not b:
        return _MOVE_COST * (len(a) + len(b))
    if len(a) > _MAX_STRING_SIZE or len(b) > _MAX_STRING_SIZE:
        return max_cost + 1
    if len(b) < len(a):
        a, b = b, a
    if (len(b) - len(a)) * _MOVE_COST > max_cost:
        return max_cost + 1
    row = list(range(_MOVE_COST, _MOVE_COST * (len(a) + 1), _MOVE_COST))
    result = 0
    for bindex in range(len(b)):
        bchar = b[bindex]
        distance = result = bindex * _MOVE_COST
        minimum = sys.maxsize
        for index in range(len(a)):
            substitute = distance + _substitution_cost(bchar, a[index])
            distance = row[index]
            insert_delete = min(result, distance) + _MOVE_COST
            result = min(insert_delete, substitute)
            row[index] = result
            minimum = min(minimum, result)
        if minimum > max_cost:
            return max_cost + 1
    return result


def _closest(wrong: str, candidates) -> str | None:
    candidates = list(candidates)
    if len(candidates) > _MAX_CANDIDATE_ITEMS or len(wrong) > _MAX_STRING_SIZE:
        return None
    best_distance, suggestion = len(wrong), None
    for candidate in candidates:
        if not isinstance(candidate, str) or candidate == wrong:
            continue
        max_distance = min((len(candidate) + len(wrong) + 3) * _MOVE_COST // 6, best_distance - 1)
        distance = _levenshtein(wrong, candidate, max_distance)
        if distance <= max_distance and (suggestion is None or distance < best_distance):
            suggestion, best_distance = candidate, distance
    return suggestion


def python_suggestion(exc: BaseException) -> str | None:
    """What Python 3.12 would append as "Did you mean: ...?" (None: no suggestion)."""
    wrong = getattr(exc, "name", None)
    if not isinstance(wrong, str):
        return None
    try:
        if isinstance(exc, AttributeError):
            return _closest(wrong, dir(exc.obj))
        if isinstance(exc, ImportError) and not isinstance(exc, ModuleNotFoundError):
            return None  # `from m import x`: m's names are not kept on the exception in 3.11
        if isinstance(exc, NameError):
            tb = exc.__traceback__
            if tb is None:
                return None
            while tb.tb_next is not None:
                tb = tb.tb_next
            frame = tb.tb_frame
            if "self" in frame.f_locals and hasattr(frame.f_locals["self"], wrong):
                return f"self.{wrong}"
            return _closest(wrong, [*frame.f_locals, *frame.f_globals, *frame.f_builtins])
    except Exception:  # noqa: BLE001 - a suggestion is a courtesy; dir() of member objects may raise
        return None
    return None


# ----------------------------------------------------------------------- extra hints


def _is_pandas(value, kind: str) -> bool:
    return (type(value).__module__ or "").startswith("pandas") and any(
        klass.__name__ == kind for klass in type(value).__mro__)


def _columns_lookup_failed(exc: BaseException):
    """The DataFrame whose *columns* lacked the key (None for a row label, a dict...): a
    DataFrame the failing pandas code worked on (`self` or `obj`) without that column, and
    no other Index (the row labels) as the one that raised."""
    key = exc.args[0] if exc.args else None
    frames, index = [], None
    tb = exc.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        for name in ("self", "obj"):
            if _is_pandas(local.get(name), "DataFrame") and all(local[name] is not f for f in frames):
                frames.append(local[name])
        if _is_pandas(local.get("self"), "Index"):
            index = local["self"]
        tb = tb.tb_next
    for frame in frames:
        if index is not None and frame.columns is not index:
            continue
        try:
            if key not in frame.columns:
                return frame
        except TypeError:  # an unhashable key: not a column lookup
            return None
    return None


def _key_error_hint(exc: KeyError) -> str | None:
    frame = _columns_lookup_failed(exc)
    if frame is None:
        return None
    columns = [str(c) for c in frame.columns]
    missing = str(exc.args[0]) if exc.args else ""
    listed = ", ".join(repr(c) for c in columns[:MAX_COLUMNS_LISTED])
    if len(columns) > MAX_COLUMNS_LISTED:
        listed += f", … {len(columns) - MAX_COLUMNS_LISTED} more"
    hint = f"The DataFrame's columns are: {listed or '(none)'}"
    import difflib

    close = difflib.get_close_matches(missing, columns, n=1, cutoff=0.6)
    if not close:
        close = [c for c in columns if c.strip().lower() == missing.strip().lower()]
    if close:
        hint += f". Did you mean {close[0]!r}?"
    return hint


def _hint(exc: BaseException) -> str | None:
    if isinstance(exc, KeyError):
        return _key_error_hint(exc)
    if isinstance(exc, NameError) and getattr(exc, "name", None) in USUAL_IMPORTS:
        return f"Each run starts fresh: add `{USUAL_IMPORTS[exc.name]}` at the top of your code."
    text = str(exc)
    if "kaleido" in text.lower() and ("requires" in text or "Chrome" in text):
        return ("Runs have no browser, so plotly cannot export images inside them: fig.write_image('chart.png') "
                "or fig.show() (or `fig` as the last line) gets the PNG, drawn after the run.")
    if isinstance(exc, (ValueError, TypeError)) and (
        text.startswith("could not convert string to float") or "Could not convert" in text
            or "could not convert" in text and "numeric" in text):
        return ("Some columns hold text, not numbers: use numeric_only=True (e.g. df.corr(numeric_only=True)) "
                "or select the numeric columns with df.select_dtypes('number').")
    return None


# ----------------------------------------------------------------------- the report


RUNTIME_MODULES = {"__main__", "bootstrap", "deferred", "display", "errors", "offline", "ast"}


def _own_frames(tb) -> tuple[list, list[str]]:
    """The member's frames of a traceback, and the libraries (top-level packages) whose
    frames below the member's code were left out."""
    import traceback

    kept: list = []
    libraries: list[str] = []
    for frame, lineno in traceback.walk_tb(tb):
        if frame.f_code.co_filename == CODE_FILENAME:
            kept.append(traceback.FrameSummary(CODE_FILENAME, lineno, frame.f_code.co_name))
            continue
        library = str(frame.f_globals.get("__name__") or "").split(".")[0]
        if kept and library and library not in RUNTIME_MODULES and library not in libraries:
            libraries.append(library)
    return kept, libraries


def _exception_lines(exc: BaseException) -> list[str]:
    """The exception's own lines (for a SyntaxError: where, the line and a caret), with hints."""
    import traceback

    lines = traceback.format_exception_only(type(exc), exc)
    if sys.version_info < (3, 12) and lines and not isinstance(exc, SyntaxError):
        suggestion = python_suggestion(exc)
        if suggestion:
            lines[-1] = lines[-1].rstrip("\n") + f". Did you mean: {suggestion!r}?\n"
    hint = _hint(exc)
    if hint:
        lines.append(f"Hint: {hint}\n")
    return lines


def _one_exception(exc: BaseException) -> list[str]:
    if isinstance(exc, SyntaxError) and exc.filename == CODE_FILENAME:
        return _exception_lines(exc)  # the message says where; ast.py's frames are not the member's
    frames, libraries = _own_frames(exc.__traceback__)
    lines = []
    if frames:
        import traceback

        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.StackSummary.from_list(frames).format())
        if libraries:
            lines.append(f"  (raised inside {', '.join(libraries)}; its own lines are not shown)\n")
    return lines + _exception_lines(exc)


def _network_cause(exc: BaseException) -> NoInternet | None:
    """A NoInternet anywhere in the chain (urllib and requests wrap it in their own errors)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, NoInternet):
            return exc
        reason = getattr(exc, "reason", None)
        if isinstance(reason, NoInternet):
            return reason
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def format_member_exception(exc: BaseException) -> str:
    """The error text a member sees for an exception their code raised."""
    offline = _network_cause(exc)
    if offline is not None:
        frames, _ = _own_frames(exc.__traceback__)
        where = f" (line {frames[-1].lineno})" if frames else ""
        return f"{offline}{where}\n"
    chain: list[tuple[BaseException, str]] = []
    current, note = exc, ""
    while current is not None and len(chain) < MAX_CHAIN:
        chain.append((current, note))
        if current.__cause__ is not None:
            current, note = current.__cause__, "\nThe above exception was the direct cause of the following exception:\n\n"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, note = current.__context__, "\nDuring handling of the above exception, another exception occurred:\n\n"
        else:
            break
    parts: list[str] = []
    for current, note in reversed(chain):
        if current is not exc and not _own_frames(current.__traceback__)[0]:
            continue  # raised and re-raised inside a library (pandas' inner KeyError): noise for the member
        parts.extend(_one_exception(current))
        parts.append(note)  # how it led to the next one ("" after the last)
    return "".join(parts)
