"""`python -m interpreter.service`: run an execution worker until SIGTERM, then drain.

Listens on EXECUTOR_HOST:EXECUTOR_PORT. Refuses to start without EXECUTOR_TOKEN
unless the address is loopback only (a development worker on the bot's machine).
Prints one line "listening on http://HOST:PORT" once it accepts connections.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys

from aiohttp import web

from config import SettingsError, load_settings
from interpreter.service.app import ExecutionService

log = logging.getLogger("interpreter.service")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or every interface ("0.0.0.0" is not loopback either)


def start_refusal(settings) -> str | None:
    """Why this worker must not start as configured, else None."""
    if not settings.executor_token and not is_loopback(settings.executor_host):
        return (f"EXECUTOR_TOKEN is empty but EXECUTOR_HOST={settings.executor_host} is not loopback-only: "
                "anyone who can reach the port could run code. Set EXECUTOR_TOKEN (the same on the bot) "
                "or listen on 127.0.0.1.")
    return None


async def serve(settings) -> None:
    service = ExecutionService(settings)
    runner = web.AppRunner(service.app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.executor_host, settings.executor_port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start_background()
    print(f"listening on http://{settings.executor_host}:{settings.executor_port}", flush=True)
    await stop.wait()
    await service.drain()
    await runner.cleanup()


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    refusal = start_refusal(settings)
    if refusal:
        print(f"Refusing to start: {refusal}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
