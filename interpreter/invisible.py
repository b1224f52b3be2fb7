"""Characters that show nothing, as one class: what member text may not carry onto a screen.

Member-controlled text (program output, errors, filenames, column names) is shown to
other members. Characters that draw nothing let it look empty, look identical to other
text (`report.csv` and `report<U+3164>.csv`), or read differently from what it is. The
class, whole rather than by example:

- zero-width: Unicode's Default_Ignorable_Code_Point property (zero-width spaces and
  joiners, bidi controls, the combining grapheme joiner U+034F, variation selectors,
  tags, Hangul fillers, Mongolian selectors, shorthand format controls and the ranges
  Unicode reserves for future ignorables), every format (Cf), control (Cc), private-use
  (Co) and surrogate (Cs) character, and line/paragraph separators (Zl, Zp);
- blank but advancing: glyphs that draw as empty space although they are letters or
  symbols (U+2800 BRAILLE PATTERN BLANK, U+16FE4 KHITAN SMALL SCRIPT FILLER, U+1D159
  MUSICAL SYMBOL NULL NOTEHEAD, and the Hangul fillers when a font gives them width).

Zero-width characters are removed; blank ones become a plain space, so braille charts and
tables keep their columns. Newlines and tabs are kept. Both are one regex pass (linear,
in C), since output is cleaned on the bot's event loop.
"""

from __future__ import annotations

import re
import unicodedata

# DerivedCoreProperties.txt, Default_Ignorable_Code_Point (Unicode 15.1), reserved ranges included.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
# Categories that never draw anything themselves.
_ZERO_WIDTH_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp"})
# Letters and symbols whose glyph is empty. The Hangul fillers are default-ignorable too, but
# fonts often give them width, which is how they make names look blank: shown as a space.
BLANK_CHARACTERS = "\u115f\u1160\u2800\u3164\uffa0\U00016fe4\U0001d159"
_KEPT = "\n\t"
# Where format, control and separator characters live (the other planes hold only letters,
# ideographs and private use); the supplementary private-use planes are taken whole.
_SCANNED = (*range(0x20000), *range(0xE0000, 0xE1000))
_PRIVATE_USE_PLANES = ((0xF0000, 0x10FFFF),)


def _zero_width_class() -> str:
    """A regex class of the zero-width code points, per this Python's Unicode data (one pass)."""
    ignorable = {code for low, high in _DEFAULT_IGNORABLE for code in range(low, high + 1)}
    excluded = {ord(ch) for ch in BLANK_CHARACTERS + _KEPT}
    ranges: list[list[int]] = []
    for code in _SCANNED:
        if code in excluded or (code not in ignorable and unicodedata.category(chr(code)) not in _ZERO_WIDTH_CATEGORIES):
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    ranges += [[low, high] for low, high in _PRIVATE_USE_PLANES]
    return "[" + "".join(re.escape(chr(low)) + (f"-{re.escape(chr(high))}" if high > low else "")
                         for low, high in ranges) + "]"


_ZERO_WIDTH = re.compile(_zero_width_class())
_BLANK = re.compile("[" + re.escape(BLANK_CHARACTERS) + "]")


def strip_invisible(text: str) -> str:
    """`text` with zero-width characters removed and blank ones turned into spaces (newlines and tabs kept)."""
    return _BLANK.sub(" ", _ZERO_WIDTH.sub("", text))

