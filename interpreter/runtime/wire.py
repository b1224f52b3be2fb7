"""Inside the sandbox: JSON for the bootstrap's pipes, from the C codec alone (`_json`).

The `json` package imports `re`, and with it enum, functools and collections: about 5 ms
of every sandbox's start, for a print that uses none of it. The pipes carry one small
dict per line (strings, integers, lists), so the C scanner and encoder that `json` itself
uses do. Same output as `json.dumps` with its defaults, and `loads` refuses what
`json.loads` refuses, with a ValueError (a RecursionError for absurd nesting).
"""

from __future__ import annotations

import _json
import math

_WHITESPACE = " \t\n\r"


class _DecoderSettings:
    """What the C scanner reads off a json.JSONDecoder (its defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.__getitem__


_scan = _json.make_scanner(_DecoderSettings())


def _not_serializable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps' defaults: ASCII output, ": " and ", ", NaN allowed; no circular check (the
# bootstrap never sends a structure that refers to itself; one would end in RecursionError).
_encode = _json.make_encoder(None, _not_serializable, _json.encode_basestring_ascii, None, ": ", ", ",
                             False, False, True)


def dumps(value: object) -> str:
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value)
    return "".join(_encode(value, 0))


def loads(data: str | bytes | bytearray) -> object:
    text = bytes(data).decode("utf-8", "surrogatepass") if isinstance(data, (bytes, bytearray)) else data
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"Extra data: char {end}")
    return value
