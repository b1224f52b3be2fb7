"""A cheap look at a job's code: will it import the heavy data libraries?

The answer picks the warm sandbox a job runs in (one with numpy, pandas,
matplotlib and seaborn already imported, or a plain one) and its place in the
queue (light jobs go first). It only costs or saves time: a wrong guess never
changes what the job can do or what it returns, so member code cannot gain
anything by fooling it beyond a place in the queue.
"""

from __future__ import annotations

import ast
import enum
import re

# Importing any of these costs hundreds of milliseconds (most pull in numpy or pandas).
HEAVY_MODULES = frozenset({
    "numpy", "pandas", "matplotlib", "seaborn", "scipy", "plotly", "sklearn", "statsmodels",
    "pyarrow", "openpyxl", "PIL", "polars",
})
# Names the seed's examples use without importing them in the same snippet,
# and load_file, which reads tables with pandas.
HEAVY_NAMES = frozenset({"pd", "np", "plt", "sns", "px", "go", "load_file"})
# ast.parse of very long code costs more than it can save: assume heavy.
MAX_PARSED_CHARS = 100_000
_HEAVY_WORD = re.compile(r"\b(?:" + "|".join(sorted(HEAVY_MODULES | HEAVY_NAMES)) + r")\b")
_HEAVY_IMPORT_TEXT = re.compile(r"\b(?:import|from)\s+(?:" + "|".join(sorted(HEAVY_MODULES)) + r")\b")


class Workload(enum.Enum):
    LIGHT = "light"  # standard library only: a plain warm sandbox, first in the queue
    HEAVY = "heavy"  # data libraries: a sandbox that imported them ahead


def classify(code: str) -> Workload:
    """LIGHT or HEAVY from the code's imports and names (a few hundred microseconds)."""
    if len(code) > MAX_PARSED_CHARS:
        return Workload.HEAVY
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        # It fails at once wherever it runs; only strings like "import pandas" in exec() matter.
        return Workload.HEAVY if _HEAVY_WORD.search(code) else Workload.LIGHT
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(alias.name.partition(".")[0] in HEAVY_MODULES for alias in node.names):
                return Workload.HEAVY
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").partition(".")[0] in HEAVY_MODULES:
                return Workload.HEAVY
        elif isinstance(node, ast.Name):
            if node.id in HEAVY_NAMES:
                return Workload.HEAVY
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # __import__("pandas"), importlib.import_module("numpy.linalg"), exec("import pandas")
            text = node.value
            if text.partition(".")[0] in HEAVY_MODULES or (len(text) < 10_000 and _HEAVY_IMPORT_TEXT.search(text)):
                return Workload.HEAVY
    return Workload.LIGHT
