"""Rendering results for Discord: limits, attachments, and text that tries to escape."""

from __future__ import annotations

import re

from cogs._format import MESSAGE_LIMIT, code_block, extract_code, inline, render_result
from interpreter import ExitCause, GeneratedFile, RunResult

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100


def result(**fields) -> RunResult:
    fields["generated_files"] = tuple(GeneratedFile(**f) for f in fields.get("generated_files", ()))
    base = {"success": True, "output": "", "error": "", "execution_time": 0.5, "return_code": 0,
            "exit_cause": ExitCause.OK}
    base.update(fields)
    return RunResult(**base)


def fences(text: str) -> int:
    return len(re.findall("```", text))


def test_fenced_code_is_unwrapped():
    assert extract_code("```py\nprint(1)\n```") == "print(1)"
    assert extract_code("look:\n```python\nx = 1\nprint(x)\n``` thanks") == "x = 1\nprint(x)"
    assert extract_code("```print(2)```") == "print(2)"
    assert extract_code("`print(3)`") == "print(3)"
    assert extract_code("print(4)") == "print(4)"


def test_output_cannot_close_the_code_block():
    evil = "ok\n```\n@everyone **bold** [link](https://x)\n```"
    rendered = render_result(result(output=evil), upload_limit=10_000_000)
    assert fences(rendered.content) == 2  # only our own opening and closing fence
    assert "@everyone" in rendered.content  # shown, inside the block (mentions are off at send time)


def test_zero_width_and_bidi_tricks_are_removed():
    sneaky = "a`\u200b`\u200b`b \u202eevil\u202c \u2066x\u2069 \x07bell"
    block = code_block(sneaky)
    assert fences(block) == 2
    for ch in ("\u202e", "\u202c", "\u2066", "\u2069", "\x07"):
        assert ch not in block
    assert "\u202e" not in inline("name\u202egnp.exe")


def test_long_output_goes_to_output_txt():
    output = "".join(f"line {i}\n" for i in range(2000))
    rendered = render_result(result(output=output), upload_limit=10_000_000)
    assert len(rendered.content) <= MESSAGE_LIMIT
    assert "output.txt" in rendered.content
    names = [f.filename for f in rendered.files]
    assert names == ["output.txt"]
    assert rendered.files[0].fp.read().decode() == output


def test_images_first_and_files_over_the_limit_are_listed():
    files = [
        {"filename": "data.csv", "type": "data", "data": b"a,b\n1,2\n", "size": 8},
        {"filename": "big.parquet", "type": "data", "data": b"x" * 5000, "size": 5000},
        {"filename": "chart.png", "type": "image", "data": PNG, "size": len(PNG)},
    ]
    rendered = render_result(result(output="hi", generated_files=files), upload_limit=1000)
    assert [f.filename for f in rendered.files] == ["chart.png", "data.csv"]
    assert "big.parquet" in rendered.content and "upload limit" in rendered.content


def test_hostile_filenames_are_sanitised_and_deduplicated():
    files = [
        {"filename": "../../etc/passwd", "type": "file", "data": b"x", "size": 1},
        {"filename": "chart.png", "type": "image", "data": PNG, "size": len(PNG)},
        {"filename": "chart.png", "type": "image", "data": PNG, "size": len(PNG)},
    ]
    rendered = render_result(result(generated_files=files), upload_limit=10_000_000)
    names = [f.filename for f in rendered.files]
    assert names == ["chart.png", "chart_2.png", "passwd"]


def test_more_than_ten_files_are_listed_not_dropped_silently():
    files = [{"filename": f"f{i}.png", "type": "image", "data": PNG, "size": len(PNG)} for i in range(12)]
    rendered = render_result(result(generated_files=files), upload_limit=10_000_000)
    assert len(rendered.files) == 10
    assert "f10.png" in rendered.content and "f11.png" in rendered.content


def test_errors_one_line_in_header_tracebacks_in_the_block():
    short = render_result(result(success=False, error="Execution timeout after 5 seconds", return_code=-1),
                          upload_limit=1)
    assert short.content.splitlines()[0] == "❌ Execution timeout after 5 seconds"
    trace = "Traceback (most recent call last):\n  File \"<code>\", line 1\nZeroDivisionError: division by zero"
    failed = render_result(result(success=False, output="before\n", error=trace), upload_limit=1)
    assert failed.content.startswith("❌ Failed in 0.50 s")
    assert "ZeroDivisionError" in failed.content and "before" in failed.content


def test_cut_output_is_said_so():
    """The engine reports a cut with `output_truncated` (the formatter once read a key no
    engine wrote, so members were never told); the typed result ties the two together."""
    rendered = render_result(result(output="x" * 100, output_truncated=True), upload_limit=10_000_000)
    assert "the end was cut" in rendered.content
    assert "the end was cut" not in render_result(result(output="x"), upload_limit=10_000_000).content


# Issue 12: invisible characters, as a class. Named examples from every family; the sweep
# below takes the categories from unicodedata itself, independently of interpreter/invisible.py.
INVISIBLE_EXAMPLES = {
    "hangul filler": "\u3164", "hangul choseong filler": "\u115f", "hangul jungseong filler": "\u1160",
    "halfwidth hangul filler": "\uffa0", "braille blank": "\u2800", "combining grapheme joiner": "\u034f",
    "soft hyphen": "\u00ad", "arabic letter mark": "\u061c", "khmer inherent vowel": "\u17b4",
    "mongolian selector": "\u180b", "mongolian vowel separator": "\u180e", "zero width space": "\u200b",
    "zero width joiner": "\u200d", "word joiner": "\u2060", "invisible times": "\u2062",
    "reserved ignorable": "\u2065", "variation selector 16": "\ufe0f", "byte order mark": "\ufeff",
    "shorthand format": "\U0001bca0", "musical format": "\U0001d173", "tag letter": "\U000e0041",
    "variation selector 17": "\U000e0100", "khitan filler": "\U00016fe4", "null notehead": "\U0001d159",
    "line separator": "\u2028", "paragraph separator": "\u2029", "private use": "\ue000",
    "supplementary private use": "\U000f0001", "rtl override": "\u202e", "rtl isolate": "\u2067",
}


def test_every_invisible_family_is_gone_from_blocks_lines_and_filenames():
    from cogs._format import display_filename

    for family, ch in INVISIBLE_EXAMPLES.items():
        text = f"a{ch}b{ch}{ch}"
        for shown in (code_block(text), inline(text), display_filename(f"re{ch}port{ch}.csv")):
            assert ch not in shown, (family, shown)
        assert display_filename(ch * 5) == "file", family  # a name of nothing is no name


def test_every_format_control_and_separator_character_is_removed():
    import sys
    import unicodedata

    kept = {"\n", "\t"}
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        if unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} and ch not in kept:
            assert ch not in inline(f"x{ch}y"), hex(code)


def test_blank_characters_keep_their_column_as_a_space():
    braille_chart = "\u2801\u2800\u2802\n\u2800\u2800\u2804"
    assert code_block(braille_chart) == "```\n\u2801 \u2802\n  \u2804\n```"
    assert inline("a\u3164b") == "a b"


def test_cleaning_long_output_is_linear_and_quick():
    import time

    output = ("x\u200b\u3164" * 300_000) + "end"
    started = time.thread_time()
    block = code_block(output)
    assert time.thread_time() - started < 0.5
    assert block.endswith("end\n```") and "\u200b" not in block
