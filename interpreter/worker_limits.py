"""The execution workers' per-run limits, as the bot learns them from their /v1/status.

The limits are the workers' (they are the machines that run the code): a bot whose
settings disagree must not send runs the workers refuse (a default timeout above their
maximum refused every /run), nor tell members numbers that are not enforced. The bot
takes the lowest value over the workers that answered (a run may go to any of them),
lowers its timeouts to that maximum, and logs once which of its settings disagree.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from config.settings import FIELDS

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Compared:
    key: str  # in a worker's status()["sandbox"]["limits"]
    attr: str  # the bot's setting with the same meaning
    scale: int = 1  # the setting's value divided by this is in the key's unit

    def mine(self, settings: "Settings") -> int:
        return int(getattr(settings, self.attr)) // self.scale

    @property
    def env(self) -> str:
        return next(field.env for field in FIELDS if field.attr == self.attr)


# Each a limit a worker applies to every run whatever the bot says, and the bot tells
# members (/help, the run's header): a difference means members are told wrong numbers.
COMPARED = (
    Compared("max_timeout_s", "max_run_timeout"),
    Compared("memory_mb", "run_memory_mb"),
    Compared("processes", "run_max_processes"),
    Compared("workdir_mb", "run_workdir_mb"),
    Compared("output_kb", "output_limit_bytes", 1000),
    Compared("max_file_size_mb", "max_file_size_mb"),
)
DEFAULT_TIMEOUT = Compared("max_timeout_s", "run_timeout")


def lowest_limits(statuses: list[Any]) -> dict[str, float]:
    """The lowest positive value of each limit over the workers' status bodies (others skipped)."""
    lowest: dict[str, float] = {}
    for body in statuses:
        sandbox = body.get("sandbox") if isinstance(body, dict) else None
        limits = sandbox.get("limits") if isinstance(sandbox, dict) else None
        if not isinstance(limits, dict):
            continue
        for key, value in limits.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                lowest[key] = min(value, lowest.get(key, value))
    return lowest


def disagreements(settings: "Settings", limits: dict[str, float]) -> list[str]:
    """The bot's settings the workers' limits contradict, in words naming both sides."""
    found = []
    maximum = limits.get(DEFAULT_TIMEOUT.key)
    if maximum is not None and DEFAULT_TIMEOUT.mine(settings) > maximum:
        found.append(f"{DEFAULT_TIMEOUT.env}={DEFAULT_TIMEOUT.mine(settings)} is above the workers' "
                     f"maximum run time of {maximum:g} s (runs get {maximum:g} s)")
    for compared in COMPARED:
        theirs = limits.get(compared.key)
        if theirs is not None and compared.mine(settings) != theirs:
            found.append(f"{compared.env}={getattr(settings, compared.attr)} here, "
                         f"{theirs:g} ({compared.key}) on the workers")
    return found


def as_applied(settings: "Settings", limits: dict[str, float]) -> "Settings":
    """`settings` with the workers' per-run limits in place of the bot's own: a timeout is
    at most the lower of the two maximums, the others are the workers' whatever the bot says."""
    if not limits:
        return settings
    changes = {compared.attr: int(limits[compared.key] * compared.scale) for compared in COMPARED
               if compared.key in limits}
    if "max_run_timeout" in changes:
        changes["max_run_timeout"] = min(changes["max_run_timeout"], settings.max_run_timeout)
        changes["run_timeout"] = min(settings.run_timeout, changes["max_run_timeout"])
    return settings.replace(**changes)


class LimitsWarning:
    """Logs the disagreements once, and again only if they change (a worker reconfigured)."""

    def __init__(self) -> None:
        self._last = ""

    def check(self, settings: "Settings", limits: dict[str, float]) -> None:
        text = "; ".join(disagreements(settings, limits))
        if text and text != self._last:
            log.warning("the execution workers' per-run limits differ from this bot's settings; the workers' "
                        "apply: %s. Set the bot's values to the workers' to tell members the right numbers.", text)
        self._last = text
