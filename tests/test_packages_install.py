"""Installs and the venv's life, offline: real venvs, real pip, wheels built here, a local find-links dir.

Each test builds a small venv (no base set) under its own tmp dir; pip is pointed at an
empty local index plus a find-links dir holding the wheels made here, so nothing reaches
the network. `PackageManager.pip_calls` counts real pip invocations.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from config import load_settings
from interpreter.packages import MARKER, PackageManager, VenvError

APPROVED_FOR_TESTS = ("tinywheel", "tinysdist", "numpy", "tinydep", "tinyhook", "tinyshadow")


def make_wheel(directory: Path, name: str, version: str, body: str, requires: tuple[str, ...] = (),
               extra_files: dict[str, str] | None = None) -> Path:
    """A minimal valid pure-Python wheel: one module (and `extra_files`), dist-info with METADATA, WHEEL and RECORD."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    requires_lines = "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    files = {
        f"{module}/__init__.py": body.encode(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires_lines}".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        **{path: text.encode() for path, text in (extra_files or {}).items()},
    }
    record_lines = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record_lines.append(f"{path},sha256={digest},{len(data)}")
    record_lines.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record_lines) + "\n").encode()
    wheel = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def make_sdist(directory: Path, name: str, version: str, tripwire: Path) -> Path:
    """An sdist whose setup.py would leave a tripwire file if pip ever ran it."""
    setup_py = (
        f"open({str(tripwire)!r}, 'w').write('build code ran')\n"
        f"from setuptools import setup\nsetup(name={name!r}, version={version!r}, py_modules=[])\n"
    ).encode()
    pkg_info = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    sdist = directory / f"{name}-{version}.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for member, data in ((f"{name}-{version}/setup.py", setup_py), (f"{name}-{version}/PKG-INFO", pkg_info)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return sdist


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    directory = tmp_path / "wheelhouse"
    directory.mkdir()
    make_wheel(directory, "tinywheel", "1.0", "VALUE = 'tiny 1.0'\n")
    return directory


@pytest.fixture
def data_dir():
    """A data dir the sandbox uid can traverse (pytest's tmp_path is mode 700, as private dirs should be)."""
    directory = Path(tempfile.mkdtemp(prefix="test-packages-"))
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def offline_settings(tmp_path: Path, data_dir: Path, wheelhouse: Path):
    empty_index = tmp_path / "empty-index"
    empty_index.mkdir()
    return load_settings({}, dotenv=False).replace(
        data_dir=data_dir,
        pip_find_links=str(wheelhouse),
        pip_index_url=empty_index.as_uri(),
        approved_packages_override=APPROVED_FOR_TESTS,
        install_timeout=120,
    )


@pytest.fixture
def manager(offline_settings) -> PackageManager:
    return PackageManager(offline_settings, base_packages=())


def run_in_venv(manager: PackageManager, code: str) -> str:
    """Run code with the venv's python as a plain host process (the sandbox has its own tests)."""
    done = subprocess.run([str(manager.python_path), "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.defpath})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_first_use_builds_a_ready_venv_without_pip_inside(manager: PackageManager) -> None:
    venv = await manager.ensure_venv()
    assert venv == manager.venv_dir and venv.is_dir()
    assert manager.python_path == venv / "bin" / "python"
    assert (venv / MARKER).is_file()
    assert manager.generation == 1
    assert os.path.realpath(manager.python_path).startswith("/usr/"), "base Python must be readable by the sandbox uid"
    assert run_in_venv(manager, "import importlib.util; print(importlib.util.find_spec('pip'))") == "None"
    assert manager.pip_calls == 0  # empty base set: nothing to install


async def test_concurrent_first_use_builds_once(manager: PackageManager) -> None:
    first, second, third = await asyncio.gather(manager.ensure_venv(), manager.ensure_venv(), manager.ensure_venv())
    assert first == second == third
    assert [p.name for p in manager.root.glob("gen-*")] == [first.name]


async def test_install_from_find_links_then_no_second_pip_call(manager: PackageManager) -> None:
    report = await manager.ensure_packages(["tinywheel"])
    assert report.failed == [] and report.installed == ["tinywheel"] and report.newly_installed == ["tinywheel"]
    assert manager.pip_calls == 1
    assert run_in_venv(manager, "import tinywheel; print(tinywheel.VALUE)") == "tiny 1.0"

    again = await manager.ensure_packages(["TinyWheel", "tinywheel>=1.0"])
    assert again.installed == ["tinywheel", "tinywheel>=1.0"] and again.newly_installed == []
    assert manager.pip_calls == 1, "an already-satisfied request must not call pip"

    status = await manager.status()
    assert "tinywheel" in status["installed_packages"]
    assert status["requested_packages"] == ["tinywheel"]


async def test_concurrent_requests_for_one_package_install_it_once(manager: PackageManager) -> None:
    reports = await asyncio.gather(*(manager.ensure_packages(["tinywheel"]) for _ in range(4)))
    assert all(r.installed == ["tinywheel"] for r in reports)
    assert manager.pip_calls == 1


def installed_version(manager: PackageManager, name: str = "tinywheel") -> str | None:
    return manager.installed_distributions().get(name)


async def test_a_member_cannot_move_an_installed_version_up_or_down(manager: PackageManager, wheelhouse: Path) -> None:
    """Issue 12 item 4: the venv is shared; a member's specifier checks, it never upgrades or downgrades."""
    await manager.ensure_packages(["tinywheel"])
    generation = manager.generation
    make_wheel(wheelhouse, "tinywheel", "2.0", "VALUE = 'tiny 2.0'\n")
    for asked in ("tinywheel>=2", "tinywheel==0.9", "tinywheel<1"):
        report = await manager.ensure_packages([asked])
        assert report.installed == [] and report.failed[0]["package"] == asked
        assert report.error_message() == (
            f"Package '{asked}' is not available: this server provides tinywheel 1.0. "
            "Versions are chosen by the server's admin for everyone; ask for 'tinywheel' to use it")
    assert manager.pip_calls == 1, "a version the member asks for never reaches pip"
    assert installed_version(manager) == "1.0" and manager.generation == generation
    assert (await manager.ensure_packages(["tinywheel>=1"])).installed == ["tinywheel>=1"], "a specifier that suits is fine"


async def test_an_exact_old_version_installs_the_policys_version_and_is_not_remembered(
        manager: PackageManager, wheelhouse: Path) -> None:
    """Issue 12 item 4: `numpy==<old>` on a package not installed yet used to install that old
    release for everyone and pin it into every rebuild."""
    make_wheel(wheelhouse, "tinywheel", "2.0", "VALUE = 'tiny 2.0'\n")
    report = await manager.ensure_packages(["tinywheel==1.0"])
    assert report.failed and "this server provides tinywheel 2.0" in report.error_message()
    assert installed_version(manager) == "2.0"
    assert manager.marker()["requested"] == ["tinywheel"], "names are remembered, never a member's version"
    await manager.rebuild()
    assert installed_version(manager) == "2.0" and manager.marker()["requested"] == ["tinywheel"]


async def test_a_pin_remembered_by_an_older_venv_is_not_reinstalled(manager: PackageManager, wheelhouse: Path) -> None:
    await manager.ensure_packages(["tinywheel"])
    venv = manager.venv_dir
    marker = manager.marker()
    manager._write_marker(venv, {**marker, "requested": ["tinywheel==1.0", "TinyWheel"]})  # what the old code wrote
    make_wheel(wheelhouse, "tinywheel", "2.0", "VALUE = 'tiny 2.0'\n")
    await manager.rebuild()
    assert installed_version(manager) == "2.0"
    assert manager.marker()["requested"] == ["tinywheel"]


async def test_the_operators_policy_chooses_the_version(offline_settings, wheelhouse: Path) -> None:
    make_wheel(wheelhouse, "tinywheel", "2.0", "VALUE = 'tiny 2.0'\n")
    manager = PackageManager(offline_settings.replace(approved_packages_override=("tinywheel<2", "tinydep")),
                             base_packages=())
    report = await manager.ensure_packages(["tinywheel"])
    assert report.installed == ["tinywheel"] and installed_version(manager) == "1.0"
    assert "this server provides tinywheel 1.0" in (await manager.ensure_packages(["tinywheel>=2"])).error_message()
    assert (await manager.status())["version_policy"] == ["tinywheel<2"]


async def test_a_changed_policy_rebuilds_the_venv_at_the_new_version(offline_settings, wheelhouse: Path) -> None:
    make_wheel(wheelhouse, "tinywheel", "2.0", "VALUE = 'tiny 2.0'\n")
    first = PackageManager(offline_settings.replace(venv_max_age_days=0), base_packages=())
    await first.ensure_packages(["tinywheel"])
    assert installed_version(first) == "2.0"
    pinned = PackageManager(offline_settings.replace(venv_max_age_days=0, approved_packages_override=("tinywheel<2",)),
                            base_packages=())
    old_venv = await pinned.ensure_venv()  # the old venv keeps serving while the new one builds
    await pinned.wait_for_rebuild()
    assert pinned.venv_dir != old_venv and installed_version(pinned) == "1.0"
    await pinned.ensure_venv()
    await pinned.wait_for_rebuild()
    assert pinned.pip_calls == 1, "built under the policy in force: no second rebuild"


async def test_an_extra_package_cannot_move_what_others_import(manager: PackageManager, wheelhouse: Path) -> None:
    """Issue 12 item 4: a member's extra package whose dependencies want another version of
    an installed package fails; it used to downgrade that package for everyone."""
    make_wheel(wheelhouse, "tinywheel", "2.0", "VALUE = 'tiny 2.0'\n")
    await manager.ensure_packages(["tinywheel"])
    make_wheel(wheelhouse, "tinydep", "1.0", "", requires=("tinywheel==1.0",))
    report = await manager.ensure_packages(["tinydep"])
    assert report.error_message() == ("Package 'tinydep' could not be installed: "
                                      "its dependencies conflict with the installed packages")
    assert installed_version(manager) == "2.0" and installed_version(manager, "tinydep") is None
    assert manager.marker()["requested"] == ["tinywheel"]

    make_wheel(wheelhouse, "tinydep", "1.1", "", requires=("tinywheel>=1",))
    assert (await manager.ensure_packages(["tinydep"])).installed == ["tinydep"], "a compatible one installs"
    assert installed_version(manager, "tinydep") == "1.1" and installed_version(manager) == "2.0"


async def test_sdist_only_package_is_refused_and_its_build_code_never_runs(
    manager: PackageManager, wheelhouse: Path, tmp_path: Path
) -> None:
    tripwire = tmp_path / "tripwire"
    make_sdist(wheelhouse, "tinysdist", "1.0", tripwire)
    report = await manager.ensure_packages(["tinysdist"])
    assert report.installed == []
    assert report.failed[0]["package"] == "tinysdist"
    assert "no compatible wheel" in report.failed[0]["reason"]
    assert report.error_message().startswith("Package 'tinysdist' could not be installed")
    assert str(manager.root) not in report.error_message(), "host paths never reach members"
    assert not tripwire.exists()


async def test_one_failing_package_is_named_and_fails_the_request(manager: PackageManager, wheelhouse: Path) -> None:
    make_sdist(wheelhouse, "tinysdist", "1.0", wheelhouse / "tripwire")
    report = await manager.ensure_packages(["tinywheel", "tinysdist"])
    assert [item["package"] for item in report.failed] == ["tinysdist"]
    assert report.installed == ["tinywheel"]
    assert report.error_message().startswith("Package 'tinysdist' could not be installed")


async def test_a_missing_version_gets_a_clear_reason(manager: PackageManager) -> None:
    report = await manager.ensure_packages(["tinywheel==9.9"])
    assert "is not available: this server provides tinywheel 1.0" in report.error_message()


async def test_install_timeout_kills_pip_and_reports_it(offline_settings) -> None:
    # An "index" that accepts connections and never answers: pip waits until our timeout ends it.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    index = f"http://127.0.0.1:{silent.getsockname()[1]}/simple"
    try:
        manager = PackageManager(offline_settings.replace(install_timeout=3, pip_index_url=index), base_packages=())
        await manager.ensure_venv()
        report = await manager.ensure_packages(["tinywheel==3.0"])  # not in the wheelhouse: pip must ask the index
        assert report.error_message() == "Package 'tinywheel==3.0' could not be installed: the install timed out"

        # pip was killed, not left behind: its connection to the index is closed.
        silent.settimeout(30)
        connection, _ = silent.accept()
        with connection:
            while connection.recv(4096):
                pass
    finally:
        silent.close()


async def test_a_venv_without_its_marker_is_never_used(manager: PackageManager) -> None:
    half_built = manager.root / "gen-19700101T000000-dead"
    (half_built / "bin").mkdir(parents=True)
    manager.root.joinpath("current").symlink_to(half_built.name)
    assert not manager.is_ready and manager.generation == 0

    venv = await manager.ensure_venv()
    assert venv != half_built and (venv / MARKER).exists()
    assert not half_built.exists(), "leftovers of an interrupted build are removed"


async def test_rebuild_swaps_atomically_and_keeps_runs_in_flight_working(manager: PackageManager) -> None:
    await manager.ensure_packages(["tinywheel"])
    old_venv, old_python, old_generation = manager.venv_dir, manager.python_path, manager.generation

    # A "run in flight": started on the old venv, it imports only after the rebuild has happened.
    in_flight = await asyncio.create_subprocess_exec(
        str(old_python), "-c", "import sys; sys.stdin.readline(); import tinywheel; print(tinywheel.VALUE)",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env={"PATH": os.defpath},
    )
    new_venv = await manager.rebuild()
    out, _ = await in_flight.communicate(b"go\n")
    assert in_flight.returncode == 0 and out.decode().strip() == "tiny 1.0"

    assert new_venv != old_venv and manager.venv_dir == new_venv
    assert manager.generation > old_generation
    assert old_venv.exists(), "the previous venv is kept for runs that still hold its path"
    assert run_in_venv(manager, "import tinywheel; print(tinywheel.__file__)").startswith(str(new_venv))
    assert manager.marker()["requested"] == ["tinywheel"]

    third = await manager.rebuild()
    assert not old_venv.exists(), "venvs older than the previous one are deleted"
    assert sorted(p.name for p in manager.root.glob("gen-*")) == sorted([new_venv.name, third.name])


async def test_an_old_venv_is_rebuilt_in_the_background(offline_settings) -> None:
    now = [1_700_000_000.0]
    manager = PackageManager(offline_settings.replace(venv_max_age_days=7), base_packages=(), clock=lambda: now[0])
    first = await manager.ensure_venv()
    now[0] += 6 * 86400
    assert await manager.ensure_venv() == first
    await manager.wait_for_rebuild()
    assert manager.venv_dir == first, "not stale yet"

    now[0] += 2 * 86400
    assert await manager.ensure_venv() == first, "callers keep the old venv while the new one builds"
    await manager.wait_for_rebuild()
    assert manager.venv_dir != first and manager.generation == 2
    status = await manager.status()
    assert status["venv_age_hours"] == 0 and status["generation"] == 2


async def test_a_failed_background_rebuild_keeps_the_old_venv_and_backs_off(offline_settings) -> None:
    now = [1_700_000_000.0]
    await PackageManager(offline_settings, base_packages=(), clock=lambda: now[0]).ensure_venv()
    # This manager's base set cannot be installed (no such version), so its rebuilds fail.
    manager = PackageManager(offline_settings.replace(venv_max_age_days=1), base_packages=("tinywheel==9.9",),
                             clock=lambda: now[0])
    first = manager.venv_dir
    now[0] += 2 * 86400
    assert await manager.ensure_venv() == first
    await manager.wait_for_rebuild()
    assert manager.venv_dir == first and manager.generation == 1
    assert manager.pip_calls == 1
    assert [p.name for p in manager.root.glob("gen-*")] == [first.name], "the failed build is cleaned up"

    await manager.ensure_venv()
    await manager.wait_for_rebuild()
    assert manager.pip_calls == 1, "no retry on every run"
    now[0] += 3601
    await manager.ensure_venv()
    await manager.wait_for_rebuild()
    assert manager.pip_calls == 2, "retried after an hour"


async def test_a_venv_rebuilt_by_another_process_is_not_rebuilt_again(offline_settings) -> None:
    now = [1_700_000_000.0]
    stale_settings = offline_settings.replace(venv_max_age_days=1)
    bot = PackageManager(stale_settings, base_packages=(), clock=lambda: now[0])
    cli = PackageManager(stale_settings, base_packages=(), clock=lambda: now[0])
    await bot.ensure_venv()
    now[0] += 2 * 86400
    await cli.rebuild()
    assert cli.generation == 2
    await bot.rebuild(only_if_stale=True)  # what the bot's background rebuild does after waiting for the lock
    assert bot.generation == 2 and bot.venv_dir == cli.venv_dir


async def test_a_venv_of_an_older_build_recipe_is_rebuilt_once(offline_settings) -> None:
    """A new build step (e.g. the offline example datasets) reaches venvs built before it existed."""
    from interpreter.packages import VENV_RECIPE

    manager = PackageManager(offline_settings.replace(venv_max_age_days=0), base_packages=())
    first = await manager.ensure_venv()
    marker = manager.marker()
    manager._write_marker(first, {**marker, "recipe": VENV_RECIPE - 1})
    assert await manager.ensure_venv() == first, "runs keep the old venv while the new one builds"
    await manager.wait_for_rebuild()
    assert manager.venv_dir != first and manager.marker()["recipe"] == VENV_RECIPE
    rebuilt = manager.venv_dir
    await manager.ensure_venv()
    await manager.wait_for_rebuild()
    assert manager.venv_dir == rebuilt, "once"


async def test_max_age_zero_never_rebuilds(offline_settings) -> None:
    now = [1_700_000_000.0]
    manager = PackageManager(offline_settings.replace(venv_max_age_days=0), base_packages=(), clock=lambda: now[0])
    first = await manager.ensure_venv()
    now[0] += 365 * 86400
    assert await manager.ensure_venv() == first
    await manager.wait_for_rebuild()
    assert manager.venv_dir == first


async def test_a_second_manager_sees_the_first_ones_venv(offline_settings) -> None:
    """The bot and the admin CLI are separate processes sharing one venv directory."""
    bot = PackageManager(offline_settings, base_packages=())
    await bot.ensure_packages(["tinywheel"])
    cli = PackageManager(offline_settings, base_packages=())
    assert cli.venv_dir == bot.venv_dir and cli.generation == bot.generation
    report = await cli.ensure_packages(["tinywheel"])
    assert report.installed == ["tinywheel"] and cli.pip_calls == 0
    await cli.rebuild()
    assert bot.venv_dir == cli.venv_dir, "a swap by one process is seen by the other"


async def test_everything_in_the_venv_is_readable_by_others(manager: PackageManager) -> None:
    old_umask = os.umask(0o077)  # a bot started with a strict umask must still produce a usable venv
    try:
        await manager.ensure_packages(["tinywheel"])
    finally:
        os.umask(old_umask)
    for dirpath, dirnames, filenames in os.walk(manager.venv_dir):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if not os.path.islink(os.path.join(dirpath, name)):
                assert mode & 0o004, os.path.join(dirpath, name)
                assert not mode & 0o022, os.path.join(dirpath, name)
    for directory in [manager.root, *manager.root.parents]:
        assert directory.stat().st_mode & 0o001, directory


async def test_an_untraversable_parent_is_named_with_the_setting(tmp_path: Path, offline_settings) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    manager = PackageManager(offline_settings.replace(sandbox_venv_dir=str(private / "venv")), base_packages=())
    if os.geteuid() != 0:
        # Without root the sandbox runs as our own uid, which can reach its own directories.
        await manager.ensure_venv()
        return
    with pytest.raises(VenvError, match="SANDBOX_VENV_DIR") as caught:
        await manager.ensure_venv()
    assert str(private) in str(caught.value)
    report = await manager.ensure_packages(["tinywheel"])
    assert report.error_message() == "The sandbox environment is not ready; an admin can see why in the bot's log"


async def test_a_missing_base_python_is_explained(offline_settings) -> None:
    manager = PackageManager(offline_settings.replace(sandbox_base_python="/nonexistent/python3"), base_packages=())
    with pytest.raises(VenvError, match="SANDBOX_BASE_PYTHON=/nonexistent/python3"):
        await manager.ensure_venv()


async def test_status_reports_the_venv(manager: PackageManager) -> None:
    before = await manager.status()
    assert before["venv_exists"] is False and before["package_count"] == 0 and before["generation"] == 0
    await manager.ensure_packages(["tinywheel"])
    status = await manager.status()
    for key in ("venv_exists", "python_path", "installed_packages", "package_count", "venv_age_hours",
                "venv_size_mb", "generation", "approved_package_count"):
        assert key in status, key
    assert status["venv_exists"] is True
    assert status["python_path"] == str(manager.python_path)
    assert status["package_count"] == len(status["installed_packages"]) >= 1
    assert status["approved_package_count"] == len(APPROVED_FOR_TESTS)
    json.dumps(status)  # the admin CLI prints it as JSON


@pytest.mark.parametrize("files, reason", [
    ({"tinyhook.pth": "import os; os.environ['HOOKED'] = 'yes'\n"}, "tinyhook would run code in every member's runs (tinyhook.pth)"),
    ({"sitecustomize.py": "print('hooked')\n"}, "tinyhook would run code in every member's runs (sitecustomize.py)"),
    ({"tinywheel.py": "VALUE = 'shadowed'\n"}, "tinyhook would replace the module 'tinywheel' of tinywheel"),
])
async def test_an_extra_package_that_hooks_every_run_is_refused(manager: PackageManager, wheelhouse: Path, files, reason) -> None:
    """Issue 12 item 4: a new package may add modules, not change every run's start or another's module."""
    await manager.ensure_packages(["tinywheel"])
    generation = manager.generation
    site = manager.site_packages()[0]
    untouched = site.stat().st_mtime_ns
    make_wheel(wheelhouse, "tinyhook", "1.0", "", extra_files=files)
    report = await manager.ensure_packages(["tinyhook"])
    assert site.stat().st_mtime_ns == untouched, "checked before it lands: not even for a moment in the venv"
    assert report.error_message().startswith(f"Package 'tinyhook' was not added: {reason}"), report.error_message()
    assert installed_version(manager, "tinyhook") is None
    assert not any((site / path).exists() for path in files), "every file of the refused package is gone"
    assert run_in_venv(manager, "import os, tinywheel; print(os.environ.get('HOOKED'), tinywheel.VALUE)") == "None tiny 1.0"
    assert manager.marker()["requested"] == ["tinywheel"] and manager.generation == generation


@pytest.mark.parametrize("path, victim", [
    ("tinywheel/__init__.py", "tinywheel"),  # another distribution's module
    ("tinyshadow-1.0.data/scripts/python", "bin/python"),  # the venv's own interpreter, in no RECORD
])
async def test_an_extra_package_that_overwrites_a_file_of_the_venv_is_refused(
        manager: PackageManager, wheelhouse: Path, path: str, victim: str) -> None:
    await manager.ensure_packages(["tinywheel"])
    make_wheel(wheelhouse, "tinyshadow", "1.0", "", extra_files={path: "VALUE = 'owned'\n"})
    report = await manager.ensure_packages(["tinyshadow"])
    assert report.error_message() == (
        f"Package 'tinyshadow' was not added: tinyshadow would overwrite files of {victim}, which everyone uses")
    assert installed_version(manager, "tinyshadow") is None
    assert run_in_venv(manager, "import tinywheel; print(tinywheel.VALUE)") == "tiny 1.0"


async def test_installed_modules_are_byte_compiled_at_their_final_path(manager: PackageManager) -> None:
    """Installs are staged beside the venv; the bytecode (which records its source path and is
    what runs, since the sandbox cannot write a cache) must name the venv, not the staging dir."""
    import marshal

    await manager.ensure_packages(["tinywheel"])
    package = manager.site_packages()[0] / "tinywheel"
    compiled = list((package / "__pycache__").glob("__init__.*.pyc"))
    assert compiled, "no bytecode: every run would compile the package again"
    code = marshal.loads(compiled[0].read_bytes()[16:])
    assert code.co_filename == str(package / "__init__.py")
    assert not list(manager.root.glob(".staging-*")) and not list(manager.root.glob(".constraints-*"))
