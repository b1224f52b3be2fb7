"""`python -m interpreter run SCRIPT.py [--file DATA ...] [--out DIR] [--timeout S]`.

Runs a script in the same sandbox the bot uses, with the data files available
through load_file()/FILES (by file name), prints the output and writes generated
files to DIR. Exit status: 0 on success, 1 when the code failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from config import Settings, SettingsError, load_settings
from interpreter.filetypes import classify, sanitize_filename
from interpreter.result import RunResult
from interpreter.types import InputFile


def local_inputs(paths: list[Path]) -> list[InputFile]:
    """Files from the command line, known inside by their (sanitised) names."""
    inputs = []
    for path in paths:
        name = sanitize_filename(path.name)
        size = path.stat().st_size
        inputs.append(InputFile(file_id=name, filename=name, file_type=classify(name), host_path=path, size=size))
    return inputs


async def run_script(settings: Settings, code: str, files: list[Path], out_dir: Path,
                     timeout: float | None) -> RunResult:
    from interpreter.engine import Engine

    engine = Engine(settings.replace(sandbox_warm_on_first_run=False))  # one run, then exit: warming would only cost
    try:
        result = await engine.run_snippet(code, local_inputs(files), timeout)
    finally:
        await engine.close()  # reaps the finished sandbox before the event loop ends
    out_dir.mkdir(parents=True, exist_ok=True)
    for generated in result.generated_files:
        (out_dir / generated.filename).write_bytes(generated.data)
    return result


def print_result(result: RunResult, out_dir: Path) -> None:
    if result.output:
        sys.stdout.write(result.output if result.output.endswith("\n") else result.output + "\n")
    if result.error:
        print(result.error.rstrip(), file=sys.stderr)
    for generated in result.generated_files:
        print(f"wrote {out_dir / generated.filename} ({generated.type}, {generated.size:,} bytes)", file=sys.stderr)
    for skipped in result.skipped_files:
        print(f"skipped {skipped}", file=sys.stderr)
    state = "ok" if result.success else "failed"
    print(f"[{state} in {result.execution_time:.2f}s]", file=sys.stderr)


def _run_command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    missing = [str(p) for p in [args.script, *args.file] if not p.is_file()]
    if missing:
        print(f"No such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    code = args.script.read_text(encoding="utf-8", errors="replace")
    result = asyncio.run(run_script(settings, code, args.file, args.out, args.timeout))
    print_result(result, args.out)
    return 0 if result.success else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m interpreter", description="The code-interpreter engine, without Discord.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser("run", help="run a script in the sandbox")
    run.add_argument("script", type=Path, help="the Python file to run")
    run.add_argument("--file", type=Path, action="append", default=[], metavar="DATA", help="a data file for load_file() (repeatable)")
    run.add_argument("--out", type=Path, default=Path("output"), metavar="DIR", help="where generated files go (default: ./output)")
    run.add_argument("--timeout", type=float, default=None, metavar="S", help="seconds (default: RUN_TIMEOUT_SECONDS)")
    run.set_defaults(func=_run_command)
    demo = commands.add_parser("demo", help="analyse the bundled sales.csv and write the chart to a folder")
    demo.add_argument("--out", type=Path, default=Path("demo-output"), metavar="DIR")
    demo.set_defaults(func=lambda a: __import__("interpreter.demo", fromlist=["main"]).main(a.out))
    from interpreter.cli_admin import add_admin_commands

    add_admin_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
