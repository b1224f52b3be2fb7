"""Admin commands for `python -m interpreter`: the sandbox venv's packages, and status.

    python -m interpreter packages list [--json]
    python -m interpreter packages install NAME [NAME...]
    python -m interpreter packages rebuild
    python -m interpreter status

`add_admin_commands(subparsers)` registers them on the CLI's argparse subparsers; each
sets `func(args) -> int` (the exit code). The commands work on the same venv as the
bot (SANDBOX_VENV_DIR); a cross-process lock keeps them from racing its installs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from config import SettingsError, load_settings


def add_admin_commands(subparsers: argparse._SubParsersAction) -> None:
    packages = subparsers.add_parser("packages", help="the sandbox venv: approved list, installs, rebuild")
    actions = packages.add_subparsers(dest="packages_command", metavar="{list,install,rebuild}")
    actions.required = True

    listing = actions.add_parser("list", help="approved packages by category, and what is installed")
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing.set_defaults(func=_sync(_packages_list))

    install = actions.add_parser("install", help="install approved packages into the sandbox venv (wheels only)")
    install.add_argument("names", nargs="+", metavar="NAME", help="e.g. sympy; versions come from APPROVED_PACKAGES (a specifier here only checks)")
    install.set_defaults(func=_sync(_packages_install))

    rebuild = actions.add_parser("rebuild", help="build a fresh venv beside the current one and swap it in")
    rebuild.set_defaults(func=_sync(_packages_rebuild))

    status = subparsers.add_parser("status", help="what /status shows: venv, files, sandbox layers, limits")
    status.set_defaults(func=_sync(_status))


def _sync(command):
    def run(args: argparse.Namespace) -> int:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        try:
            return asyncio.run(command(args))
        except SettingsError as exc:
            print(f"Configuration error: {exc}", file=sys.stderr)
            return 2
    return run


def _manager():
    from interpreter.packages import PackageManager

    return PackageManager(load_settings())


async def _packages_list(args: argparse.Namespace) -> int:
    manager = _manager()
    installed = manager.installed_distributions() if manager.is_ready else {}
    approved = manager.approved.by_category()
    if args.json:
        print(json.dumps({"approved": approved, "installed": installed, "venv": str(manager.venv_dir),
                          "venv_exists": manager.is_ready}, indent=2))
        return 0
    print(f"Sandbox venv: {manager.venv_dir if manager.is_ready else 'not built yet (built on first run or install)'}")
    print("Approved packages (* = installed):")
    for category, names in approved.items():
        shown = ", ".join(f"{name}{'*' if name in installed else ''}" for name in names)
        print(f"  {category}: {shown}")
    print(f"Installed ({len(installed)}):")
    for name, version in sorted(installed.items()):
        print(f"  {name}=={version}")
    return 0


async def _packages_install(args: argparse.Namespace) -> int:
    manager = _manager()
    report = await manager.ensure_packages(args.names)
    for requirement in report.installed:
        state = "installed" if requirement in report.newly_installed else "already present"
        print(f"{requirement}: {state}")
    for item in report.failed:
        print(f"{item['package']}: FAILED: {item['reason']}", file=sys.stderr)
    return 1 if report.failed else 0


async def _packages_rebuild(args: argparse.Namespace) -> int:
    from interpreter.packages import VenvError

    manager = _manager()
    try:
        venv = await manager.rebuild()
    except VenvError as exc:
        print(f"Rebuild failed (the previous venv stays in use): {exc}", file=sys.stderr)
        return 1
    print(f"Rebuilt: {venv} (generation {manager.generation}); runs in flight keep the previous venv.")
    return 0


async def _status(args: argparse.Namespace) -> int:
    import interpreter

    status = await interpreter.get_interpreter_status()
    print(json.dumps(status, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (the interpreter CLI normally registers these itself)."""
    parser = argparse.ArgumentParser(prog="python -m interpreter")
    add_admin_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
