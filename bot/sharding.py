"""Which gateway shards this bot process runs, from SHARD_COUNT / SHARD_IDS / SHARDS_PER_POD.

Three shapes:
- nothing set: one unsharded connection (a plain `commands.Bot`), as a single process always was;
- SHARD_COUNT (+ SHARD_IDS): `AutoShardedBot` runs the named shards, or all of them;
- SHARD_COUNT + SHARDS_PER_POD: the shards come from the pod ordinal that ends the host
  name, so a Kubernetes StatefulSet (pods bot-0, bot-1, ...) needs one manifest for
  every pod: pod N runs shards N*SHARDS_PER_POD .. (N+1)*SHARDS_PER_POD-1.

Slash commands are registered once per deployment, by the process holding shard 0:
every process syncing the same tree would spend the application's rate limit for nothing.
"""

from __future__ import annotations

import dataclasses
import re
import socket

from config import Settings, SettingsError

_ORDINAL = re.compile(r"-(\d+)$")


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    shard_count: int | None  # None: not sharded (one plain gateway connection)
    shard_ids: tuple[int, ...] | None  # None: every shard of shard_count

    @property
    def sharded(self) -> bool:
        return self.shard_count is not None

    @property
    def syncs_commands(self) -> bool:
        """Whether this process registers the slash commands (exactly one process does)."""
        return self.shard_ids is None or 0 in self.shard_ids

    def describe(self) -> str:
        if not self.sharded:
            return "not sharded"
        ids = "all" if self.shard_ids is None else ", ".join(map(str, self.shard_ids))
        return f"shards {ids} of {self.shard_count}"


def pod_ordinal(hostname: str) -> int:
    """The StatefulSet ordinal at the end of a pod's host name ('code-interpreter-bot-3' -> 3)."""
    match = _ORDINAL.search(hostname)
    if not match:
        raise SettingsError(f"SHARDS_PER_POD is set but the host name {hostname!r} does not end in a pod ordinal "
                            "(-0, -1, ...): run the bot as a StatefulSet, or name the shards with SHARD_IDS.")
    return int(match.group(1))


def plan_shards(settings: Settings, hostname: str | None = None) -> ShardPlan:
    """The shards of this process. Raises SettingsError (one clear line) when the pod has none."""
    if not settings.shard_count:
        return ShardPlan(None, None)
    if settings.shard_ids:
        return ShardPlan(settings.shard_count, tuple(sorted(settings.shard_ids)))
    if not settings.shards_per_pod:
        return ShardPlan(settings.shard_count, None)
    ordinal = pod_ordinal(hostname if hostname is not None else socket.gethostname())
    first = ordinal * settings.shards_per_pod
    if first >= settings.shard_count:
        pods_needed = -(-settings.shard_count // settings.shards_per_pod)
        raise SettingsError(
            f"this is bot pod {ordinal}, but SHARD_COUNT={settings.shard_count} with SHARDS_PER_POD="
            f"{settings.shards_per_pod} needs only {pods_needed} pod(s): lower the StatefulSet's replicas "
            "or raise SHARD_COUNT.")
    last = min(first + settings.shards_per_pod, settings.shard_count)
    return ShardPlan(settings.shard_count, tuple(range(first, last)))
