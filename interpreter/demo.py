"""The offline demo: a sample CSV analysed in the sandbox, the chart written to a folder.

`python -m bot` runs this when no DISCORD_TOKEN is configured, so a fresh clone shows
what the bot does without a Discord application.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from config import SettingsError, load_settings
from interpreter.cli import print_result, run_script

DEMO_DIR = Path(__file__).resolve().parent / "demo_data"


def main(out_dir: Path | str = "demo-output") -> int:
    out_dir = Path(out_dir)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    script = DEMO_DIR / "analysis.py"
    print(f"Demo: running {script.name} on sales.csv in the sandbox (first run builds the sandbox venv: a minute or two)...",
          file=sys.stderr)
    result = asyncio.run(run_script(settings, script.read_text(), [DEMO_DIR / "sales.csv"], out_dir, None))
    print_result(result, out_dir)
    if result.success:
        print(f"Demo chart: {(out_dir / 'revenue_by_month.png').resolve()}", file=sys.stderr)
    return 0 if result.success else 1
