"""What a member's table files look like (shape, columns with dtypes, first rows), computed
*in the sandbox*: the bot never parses a member's file with pandas, so a zip-bomb workbook
or a pathological CSV can only exhaust a sandbox.

`preview_code(file_ids)` is the snippet to run with those files; `parse_previews(output)`
reads its answer back (one marked JSON line per file, bounded, linear to parse). Used by
uploads (cogs/_uploads.py) and by /ask to tell the model what the member's files hold.
"""

from __future__ import annotations

import json
from typing import Any

MARKER = "__dci_preview__"
MAX_LINE_CHARS = 8000  # a preview line is at most ~3 KB; anything longer is not ours

# Extensions that get a table preview.
TABLE_EXTENSIONS = frozenset({"csv", "tsv", "xlsx", "xls", "json", "jsonl", "ndjson", "parquet", "feather"})

_SNIPPET = """
import json as _json
for _file_id in {file_ids!r}:
    _out, _obj = {{"file_id": _file_id}}, None
    try:
        _obj = load_file(_file_id)
        _out["kind"] = type(_obj).__name__
        import pandas as _pd
        if isinstance(_obj, _pd.Series):
            _obj = _obj.to_frame()
        if isinstance(_obj, _pd.DataFrame):
            _out["rows"], _out["cols"] = int(_obj.shape[0]), int(_obj.shape[1])
            _out["columns"] = [[str(c)[:40], str(t)] for c, t in list(_obj.dtypes.items())[:25]]
            with _pd.option_context("display.width", 120, "display.max_columns", 8, "display.max_colwidth", 18):
                _out["head"] = _obj.head(5).to_string()[:1500]
        elif hasattr(_obj, "__len__"):
            _out["length"] = len(_obj)
    except Exception as _exc:
        _out["note"] = type(_exc).__name__ + ": " + str(_exc)[:200]
    print({marker!r} + _json.dumps(_out))
    del _obj
"""


def preview_code(file_ids: list[str]) -> str:
    """Code that prints one marked JSON line per file (its shape, columns, first rows)."""
    return _SNIPPET.format(file_ids=list(file_ids), marker=MARKER)


def parse_previews(output: str) -> dict[str, dict[str, Any]]:
    """file id -> preview, from the snippet's output (lines that are not ours are ignored)."""
    found: dict[str, dict[str, Any]] = {}
    for line in output.splitlines():
        if not line.startswith(MARKER) or len(line) > MAX_LINE_CHARS:
            continue
        try:
            info = json.loads(line[len(MARKER):])
        except ValueError:
            continue
        if isinstance(info, dict) and isinstance(info.get("file_id"), str):
            found[info["file_id"]] = info
    return found


def shape_text(info: dict[str, Any]) -> str:
    """One line for a model or a log: '120 rows × 4 columns: region (object), sales (int64)'."""
    if isinstance(info.get("rows"), int) and isinstance(info.get("cols"), int):
        columns = info.get("columns") or []
        listed = ", ".join(f"{name} ({dtype})" for name, dtype in columns if isinstance(name, str))
        more = f", … {info['cols'] - len(columns)} more" if info["cols"] > len(columns) else ""
        return f"{info['rows']:,} rows × {info['cols']:,} columns: {listed}{more}"
    if isinstance(info.get("length"), int):
        return f"{info.get('kind', 'object')} of {info['length']:,} items"
    if info.get("note"):
        return f"could not be loaded ({str(info['note'])[:200]})"
    return str(info.get("kind") or "")
