"""What runs inside the sandbox, before and after the member's code.

Standard library only: this file is copied into every sandbox (read-only) and run by
the sandbox venv's Python as `python -I -B bootstrap.py CONTROL_FD JOB_FD`. It trusts
nothing it finds in the sandbox and the host trusts nothing it sends back: the host
re-checks every name, size and count.

Two processes, so that the member's code has no handle on the channels to the host:

  supervisor  (this process, bwrap's child) holds CONTROL_FD and JOB_FD, is made
              non-dumpable (its /proc/PID/fd and memory are out of reach of the
              sandbox uid), writes input files, hands each job's code to the member
              process, stops every process of the run when a job ends (they continue
              with the next job of a session), collects the job's files and writes
              every control frame. It imports nothing heavy.
  member      forked before any import; preloads the data libraries, runs job after
              job in one __main__ (a session keeps its globals), saves figures and
              reports each job's end to the supervisor over a pipe of its own, which
              the supervisor reads with fixed bounds. Forging that report only
              changes the member's own result.

If the member process dies during a job (os._exit, a signal, the CPU limit), the
supervisor exits the same way, so the host reads the cause from bwrap's exit status.

Protocol (see interpreter/sandbox/protocol.py for the host side):
  JOB_FD  one JSON line (the job: code, input files, limits, last) followed by the raw
          bytes of each input file, in order; then the next job, or EOF.
  stdin   /dev/null (input() fails at once instead of hanging).
  fd 1+2  the member's output (stdout and stderr share one pipe, so order is kept).
  CONTROL frames: a JSON line of strings and integers, then `size` raw bytes:
          {"kind": "ready"}                       imports done (pooled sandboxes)
          {"kind": "finished", "status": ..., "exit_code": n, "size": n} + error text (UTF-8)
          {"kind": "file", "name": "...", "size": n} + bytes
          {"kind": "skipped", "name": "...", "reason": "..."}   (at most MAX_SKIPPED_SENT)
          {"kind": "skipped_more", "count": n}   files skipped beyond those
          {"kind": "end"}
"""

from __future__ import annotations

# Every import here is paid by every sandbox's start, a print's included: C modules and
# small ones only. Not json, linecache, contextlib or signal.py: they import re, enum,
# functools and collections (~8 ms); the wire module, _signal and a lazy linecache do.
import _ast  # not `ast`: the parser's node classes are all a run needs, without ast.py's imports
import _signal as signal  # the C module: signal.py wraps its constants in enums
import builtins
import os
import select
import stat
import sys
import time

# The companion modules are bound beside this file (-I leaves the script's folder off sys.path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import display  # noqa: E402 - what members see of their results
import errors  # noqa: E402 - how their exceptions are told
import offline  # noqa: E402 - no internet, no keyboard: said plainly
import wire  # noqa: E402 - JSON lines on the pipes, without the json package

WORK_DIR = "/work"
DATA_DIR = "/data"
CODE_FILENAME = errors.CODE_FILENAME
MAX_WALK_ENTRIES = 5000  # a run that makes 10,000 files must not stall collection
MAX_WALK_DEPTH = 8
MAX_SKIPPED_SENT = 50  # skipped files named one by one (the host lists as many)
MAX_NAME_CHARS = 512
MAX_ERROR_BYTES = 80 * 1024  # the host's limit for a traceback
MAX_REPORT_HEADER = 4096
PAUSE_PASSES = 200
PR_SET_DUMPABLE = 4

_control = None


# ----------------------------------------------------------------------- control channel (supervisor)


def send(kind: str, payload: bytes = b"", **fields) -> None:
    header = dict(fields, kind=kind, size=len(payload))
    _control.write(wire.dumps(header).encode() + b"\n")
    if payload:
        _control.write(payload)
    _control.flush()


def _utf8(text: str) -> str:
    """File names from os.scandir carry undecodable bytes as surrogates: make them printable."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read_job(channel) -> dict | None:
    """The next job, its input files written under /data; None when the host closed the pipe."""
    line = channel.readline()
    if not line:
        return None
    job = wire.loads(line)
    for entry in job.get("files", []):
        folder = os.path.join(DATA_DIR, entry["file_id"])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, entry["filename"])
        remaining = int(entry["size"])
        with open(path, "wb") as out:
            while remaining:
                chunk = channel.read(min(remaining, 1 << 20))
                if not chunk:
                    raise EOFError("input file truncated")
                out.write(chunk)
                remaining -= len(chunk)
        os.chmod(path, 0o444)
        entry["path"] = path
    return job


# ----------------------------------------------------------------------- helpers given to the code


_READERS = {
    "csv": ("read_csv", {}),
    "tsv": ("read_csv", {"sep": "\t"}),
    "xlsx": ("read_excel", {}),
    "xls": ("read_excel", {}),
    "xlsm": ("read_excel", {}),
    "json": ("read_json", {}),
    "jsonl": ("read_json", {"lines": True}),
    "ndjson": ("read_json", {"lines": True}),
    "parquet": ("read_parquet", {}),
    "feather": ("read_feather", {}),
}
_TEXT = {"txt", "md", "log", "rst", "py", "html", "htm", "xml", "yaml", "yml", "ini", "cfg", "toml"}
_DIALECT_SAMPLE_BYTES = 64 * 1024
_DECIMAL_COMMA = r"(?:^|;)\s*-?\d+,\d+\s*(?:;|$)"  # a field that is a number with a decimal comma


def _csv_dialect(path: str, options: dict) -> dict:
    """What pandas' defaults get wrong about a member's CSV, read from its first 64 KB:
    UTF-16 with a byte-order mark (Excel's "Unicode text"), and the semicolon-separated,
    decimal-comma CSV that Excel writes in most of Europe (a header with semicolons and no
    comma). Anything else is left to pandas' defaults, as before."""
    with open(path, "rb") as fh:
        head = fh.read(_DIALECT_SAMPLE_BYTES)
    dialect: dict = {}
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        dialect["encoding"] = "utf-16"
        text = head.decode("utf-16", "replace")
    else:
        text = head.decode("utf-8", "replace")
    header = text.lstrip("\ufeff").split("\n", 1)[0]
    if "sep" not in options and ";" in header and "," not in header:
        dialect["sep"] = ";"
        import re  # here, not at the top: pandas has imported it already, a print never needs it

        if re.search(_DECIMAL_COMMA, text, re.MULTILINE):
            dialect["decimal"] = ","
    return dialect


_NOT_TABLES = {"binary", "image", "pdf", "zip", "gzip", "sqlite", "npy", "npz", "hdf5", "pickle"}
_IMAGES = {"png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff"}


class FileRegistry:
    """The member's input files: FILES (id -> path) and load_file(). Grows as a session
    receives more files; one-shot runs fill it once."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self._entries: dict[str, dict] = {}

    def add(self, entries: list[dict]) -> None:
        for entry in entries:
            self._entries[entry["file_id"]] = entry
            self.files[entry["file_id"]] = entry["path"]

    def _find(self, file_id: str) -> dict | None:
        entry = self._entries.get(file_id)
        if entry is None:
            entry = next((e for e in self._entries.values() if e["filename"] == file_id), None)
        return entry

    def load_file(self, file_id: str):
        """Load an uploaded file by id (or filename): tables as a pandas DataFrame,
        text as str, images as a PIL image (or the path), anything else as bytes."""
        entry = self._find(file_id)
        if entry is None:
            known = ", ".join(f"{e['file_id']} ({e['filename']})" for e in self._entries.values()) or "none"
            raise FileNotFoundError(f"No file {file_id!r} in this run: it is not one of your live files (they expire; "
                                    f"/files list shows yours). Files available: {known}")
        path = entry["path"]
        ext = entry["filename"].rpartition(".")[2].lower() if "." in entry["filename"] else ""
        kind = entry.get("file_type") or ext
        # The stored type comes from the content: a binary file renamed .csv is not a table.
        reader = None if kind in _NOT_TABLES else (_READERS.get(ext) or _READERS.get(kind))
        if reader is not None:
            import pandas

            method, options = reader
            if method == "read_csv":
                options = {**_csv_dialect(path, options), **options}
                try:
                    return pandas.read_csv(path, **options)
                except UnicodeDecodeError:  # stored byte for byte: old Excel exports are cp1252
                    return pandas.read_csv(path, **{**options, "encoding": "cp1252", "encoding_errors": "replace"})
            if method == "read_excel":
                return pandas.read_excel(path, sheet_name=0, **options)
            return getattr(pandas, method)(path, **options)
        if ext in _TEXT or kind in {"text", "txt", "md"}:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        if ext in _IMAGES or kind == "image":
            try:
                from PIL import Image

                return Image.open(path)
            except ImportError:
                return path
        with open(path, "rb") as fh:
            return fh.read()


# ----------------------------------------------------------------------- library patches


def after_import(module_name: str, patch) -> None:
    """Call patch(module) right after `module_name` is first imported (by anyone)."""

    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name != module_name:
                return None
            sys.meta_path.remove(self)
            import importlib.util

            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            original_exec = spec.loader.exec_module

            def exec_module(module):
                original_exec(module)
                patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())


def prepare_matplotlib_cache() -> None:
    """Copy the font cache built with the venv into a writable config dir (saves ~60 ms a run)."""
    target = os.environ.get("MPLCONFIGDIR")
    source = os.path.join(sys.prefix, "mplconfig")
    if not target or not os.path.isdir(source):
        return
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        if name.startswith("fontlist") and name.endswith(".json"):
            with open(os.path.join(source, name), "rb") as src, open(os.path.join(target, name), "wb") as dst:
                dst.write(src.read())


# ----------------------------------------------------------------------- running the code


_source: tuple | None = None  # the running job's code, as a linecache entry


def remember_source(code: str) -> None:
    """Tracebacks show the member's lines: linecache serves them for CODE_FILENAME. linecache
    is imported when something first needs it (it imports tokenize and re): prepare() has
    _add_source run then, and from then on it is updated here."""
    global _source
    _source = (len(code), None, code.splitlines(True), CODE_FILENAME)
    if "linecache" in sys.modules:
        _add_source(sys.modules["linecache"])


def _add_source(linecache) -> None:
    if _source is not None:
        linecache.cache[CODE_FILENAME] = _source


def run_code(code: str, namespace: dict) -> tuple[str, int, str]:
    """Execute the member's code. Returns (status, exit_code, error_text)."""
    remember_source(code)
    try:
        tree = compile(code, CODE_FILENAME, "exec", _ast.PyCF_ONLY_AST)  # what ast.parse does
        last_expr = None
        # The last line's value is shown, as in a notebook (a trailing ';' hides it there too).
        if tree.body and isinstance(tree.body[-1], _ast.Expr) and not code.rstrip().endswith(";"):
            last_expr = _ast.Expression(tree.body.pop().value)
        exec(compile(tree, CODE_FILENAME, "exec"), namespace)
        if last_expr is not None:
            display.show(eval(compile(last_expr, CODE_FILENAME, "eval"), namespace))
        return "ok", 0, ""
    except SystemExit as exc:
        code_value = exc.code
        if code_value is None or code_value == 0:
            return "ok", 0, ""
        if isinstance(code_value, int):
            return "exit", code_value, f"Exited with status {code_value}"
        return "exit", 1, str(code_value)
    except MemoryError:
        # Only reachable without cgroups (RLIMIT_AS fallback): same cause as a cgroup OOM kill.
        return "memory", 1, "MemoryError"
    except BaseException as exc:  # noqa: BLE001 - everything the member raises is reported
        try:
            return "exception", 1, errors.format_member_exception(exc)
        except Exception:  # noqa: BLE001 - never lose the error over the way it is told
            import traceback

            return "exception", 1, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


# ----------------------------------------------------------------------- collecting files


def snapshot(root: str) -> dict[str, tuple[int, int]]:
    found = {}
    unsearched: list = []
    for rel, st in walk(root, unsearched):
        found[rel] = (st.st_size, st.st_mtime_ns)
    for rel, st, _ in unsearched:  # so a folder already too deep before the job is not announced again
        if st is not None:
            found[rel] = (st.st_size, st.st_mtime_ns)
    return found


def walk(root: str, unsearched: list | None = None):
    """Yield (relative path, stat) of regular files under root, never following links.

    What the bounds leave out is appended to `unsearched` as (path, stat or None, reason):
    a folder deeper than MAX_WALK_DEPTH, the rest of a tree past MAX_WALK_ENTRIES. Files
    in them are never collected, and the member is told so rather than left to wonder."""
    seen = 0
    stack = [(root, "", 0)]
    while stack:
        folder, prefix, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            seen += 1
            if seen > MAX_WALK_ENTRIES:
                if unsearched is not None:
                    unsearched.append((prefix or "./", None, f"more than {MAX_WALK_ENTRIES:,} files and folders: "
                                                            "the rest was not searched"))
                return
            rel = prefix + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if depth < MAX_WALK_DEPTH:
                    stack.append((entry.path, rel + "/", depth + 1))
                elif unsearched is not None:
                    unsearched.append((rel + "/", st, f"more than {MAX_WALK_DEPTH} folders deep: not searched"))
            elif stat.S_ISREG(st.st_mode):
                yield rel, st


class _Skips:
    """Skipped files: the first MAX_SKIPPED_SENT are named, the rest counted in one frame."""

    def __init__(self) -> None:
        self.named = 0
        self.more = 0

    def add(self, rel: str, reason: str) -> None:
        if self.named < MAX_SKIPPED_SENT:
            send("skipped", name=_utf8(rel)[:MAX_NAME_CHARS], reason=reason)
            self.named += 1
        else:
            self.more += 1

    def close(self) -> None:
        if self.more:
            send("skipped_more", count=self.more)


_IMAGE_SUFFIXES = tuple(f".{ext}" for ext in _IMAGES)


def _is_chart(rel: str) -> bool:
    """Images, and plotly figures queued for a PNG (the host turns them into images)."""
    return rel.lower().endswith(_IMAGE_SUFFIXES) or rel.startswith(display.PNG_QUEUE_DIR + "/")


def collect(before: dict, limits: dict) -> None:
    """Send the files this job made or changed: charts first, each kind in creation order
    (so with more charts than fit, the first ones are sent); what is left is announced."""
    max_files = int(limits.get("max_files", 20))
    max_size = int(limits.get("max_file_size", 50 << 20))
    max_total = int(limits.get("max_total", 200 << 20))
    sent = total = 0
    skips = _Skips()
    unsearched: list = []
    changed = [(rel, st) for rel, st in walk(WORK_DIR, unsearched) if before.get(rel) != (st.st_size, st.st_mtime_ns)]
    for rel, st, reason in unsearched:
        if st is None or before.get(rel) != (st.st_size, st.st_mtime_ns):
            skips.add(rel, reason)
    changed.sort(key=lambda item: (not _is_chart(item[0]), item[1].st_mtime_ns, item[0]))
    for rel, st in changed:
        if sent >= max_files:
            skips.add(rel, "too many files")
            continue
        if st.st_size > max_size:
            skips.add(rel, "too large")
            continue
        try:
            fd = os.open(os.path.join(WORK_DIR, rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                with os.fdopen(fd, "rb", closefd=False) as fh:
                    data = fh.read(max_size + 1)
            finally:
                os.close(fd)
        except OSError:
            continue
        if len(data) > max_size:
            skips.add(rel, "too large")
            continue
        if total + len(data) > max_total:
            skips.add(rel, "total size limit")
            continue
        send("file", data, name=_utf8(rel)[:MAX_NAME_CHARS])
        sent += 1
        total += len(data)
    skips.close()


# ----------------------------------------------------------------------- the member process


def _preloads_scipy(preload: list[str]) -> bool:
    """An admin who preloads scipy (or a part of it) gets it imported eagerly, as before."""
    return any(name == "scipy" or name.startswith("scipy.") for name in preload)


def prepare() -> str | None:
    """Everything before a job: import hooks, the font cache, the preloaded libraries.

    A launched sandbox's member process calls it itself; a fork-server template calls
    it once and every run forked from it inherits the result (runtime/forkserver.py).
    Returns a notice for the host's log, or None (a fork-server template sends it).
    """
    prepare_matplotlib_cache()
    offline.install()
    # The friendlier network errors are patched into socket when something first imports
    # it (a `print` never does: importing socket costs every run ~2 ms).
    if "socket" in sys.modules:
        offline.install_network_guard(sys.modules["socket"])
    else:
        after_import("socket", offline.install_network_guard)
    after_import("matplotlib.pyplot", display.patch_pyplot)
    after_import("matplotlib.figure", display.patch_figure)
    after_import("plotly.basedatatypes", display.patch_plotly)
    after_import("plotly.io._kaleido", display.patch_plotly_images)
    after_import("seaborn.utils", offline.patch_seaborn_utils)
    if "linecache" in sys.modules:
        _add_source(sys.modules["linecache"])
    else:
        after_import("linecache", _add_source)
    notice = None
    preload = [name for name in os.environ.get("SANDBOX_PRELOAD", "").split(",") if name]
    for name in preload:
        # Warm sandboxes import the heavy libraries before the job arrives; seaborn without
        # the scipy it imports for three names (~37 MB a template), unless scipy is preloaded.
        if name == "seaborn" and "scipy" not in sys.modules and not _preloads_scipy(preload):
            import deferred  # only here: a light sandbox never reads it

            notice = deferred.import_seaborn()
        else:
            __import__(name)
    warm_up()
    return notice


def warm_up() -> None:
    """Draw and throw away one chart like a member's, with the preloaded libraries only.

    The first chart of a process pays for loading fonts, the PNG writer, text layout and
    legend caches, and the first pandas operations; a warm sandbox pays that before the
    member's job. Called by prepare() (a fork-server template passes the warm caches to
    every run; in a plain process the next seaborn chart took ~5-10 ms less than after a
    bare line chart, in forked runs the difference is within the noise) and by a spare
    forked ahead, in its own process (member_main's `warm`), so the pages of those caches
    are its own before its job: that is what pays (~40 ms of the job, ~4,800 fewer page
    faults; docs/performance.md).

    Nothing of it is visible to the member's code: the figure is closed (the next one is
    figure 1 again), rcParams are restored, warnings it raises are neither shown nor
    remembered (the filters change back, which clears every module's warning registry),
    the PNG goes to memory, and it never imports a library that was not preloaded.
    """
    if "matplotlib" not in sys.modules:
        return
    import io
    import warnings

    import matplotlib
    import matplotlib.pyplot as pyplot

    pandas, seaborn = sys.modules.get("pandas"), sys.modules.get("seaborn")
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")
        figure = pyplot.figure()
        try:
            axes = figure.add_subplot()
            if pandas is not None and seaborn is not None:
                table = pandas.DataFrame({"month": ["Jan", "Feb", "Mar"] * 2, "region": ["N"] * 3 + ["S"] * 3,
                                          "value": [1.0, 2.5, 2.0, 1.5, 3.0, 0.5]})
                table.groupby("region").value.sum().to_dict()
                table.to_string()  # what a notebook-style last line shows
                seaborn.barplot(data=table, x="month", y="value", hue="region", ax=axes)
            else:
                axes.plot([0, 1], [0, 1], label="line")
                axes.legend()
            axes.set_title("warm-up")
            figure.savefig(io.BytesIO(), format="png")  # the member's savefig, patched as theirs is
        finally:
            pyplot.close(figure)


def member_main(orders_fd: int, reports_fd: int, *, prepared: bool = False, warm: bool = False) -> None:
    """Runs in the forked member process: preload (unless `prepared`), then job after job. Never returns.

    `warm` (a fork-server spare, forked before its job is known): draw warm_up()'s chart in
    this process too before saying ready. A forked process starts with the template's caches
    but not their pages: its first chart copies thousands of them (page faults) and fills
    the caches no fork keeps; paid here, at the spare's low CPU weight, the member's job
    does not wait for them."""
    reports = os.fdopen(reports_fd, "wb", buffering=0)
    orders = os.fdopen(orders_fd, "rb")

    def report(kind: str, payload: bytes = b"", **fields) -> None:
        reports.write(wire.dumps(dict(fields, kind=kind, size=len(payload))).encode() + b"\n" + payload)

    if prepared:
        prepare_matplotlib_cache()  # into this run's own, fresh /tmp (matplotlib may be imported later)
        if warm:
            try:
                warm_up()
            except Exception:  # noqa: BLE001 - an optimisation: the job runs all the same
                pass
    else:
        prepare()
    report("ready")
    registry = FileRegistry()
    # The code runs as the real __main__ module, so pickle (and so multiprocessing)
    # can find the functions it defines. Its globals live as long as this sandbox:
    # one job for a one-shot run, many for a session.
    main_module = type(sys)("__main__")  # a module object (types.ModuleType, without importing types)
    main_module.__dict__.update({"__builtins__": builtins, "load_file": registry.load_file, "FILES": registry.files})
    sys.modules["__main__"] = main_module
    os.chdir(WORK_DIR)
    sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")
    sys.stderr.reconfigure(line_buffering=True, errors="backslashreplace")

    while line := orders.readline():
        order = wire.loads(line)
        registry.add(order["files"])
        display.start_job()
        status, exit_code, error = run_code(order["code"], main_module.__dict__)
        try:
            display.save_open_figures()
        except Exception as exc:  # noqa: BLE001
            print(f"[could not save figures: {exc}]", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        report("done", error.encode("utf-8", "replace")[:MAX_ERROR_BYTES], status=status,
               exit_code=exit_code if isinstance(exit_code, int) and -(2**31) <= exit_code < 2**31 else 1)
    os._exit(0)


# ----------------------------------------------------------------------- the supervisor


class MemberLink:
    """The supervisor's ends of the pipes to the member process, and its exit.

    Everything the member sends is read with fixed bounds: a report is one JSON line
    of at most MAX_REPORT_HEADER bytes and at most MAX_ERROR_BYTES of error text.
    """

    def __init__(self, pid: int, orders_fd: int, reports_fd: int) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.orders = os.fdopen(orders_fd, "wb")
        self.reports_fd = reports_fd
        self.buffer = bytearray()
        self.reports_open = True

    def order(self, order: dict) -> bool:
        try:
            self.orders.write(wire.dumps(order).encode() + b"\n")
            self.orders.flush()
        except BrokenPipeError:
            return False
        return True

    def next_report(self) -> dict | None:
        """The member's next report; None once the member has exited without one."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        if self.reports_open:
            poller.register(self.reports_fd, select.POLLIN)
        while True:
            report = self._parse()
            if report is not None:
                return report
            events = dict(poller.poll())
            if self.reports_fd in events and self.reports_open:
                chunk = os.read(self.reports_fd, 1 << 16)
                if chunk:
                    self.buffer += chunk
                else:  # every writer is gone; the member's exit (next poll) says how it ended
                    self.reports_open = False
                    poller.unregister(self.reports_fd)
            elif self.pidfd in events:
                return None

    def _parse(self) -> dict | None:
        end = self.buffer.find(b"\n", 0, MAX_REPORT_HEADER + 1)
        if end < 0:
            if len(self.buffer) > MAX_REPORT_HEADER:
                return self._malformed()
            return None
        try:
            header = wire.loads(bytes(self.buffer[:end]))
            size = header["size"]
            if not isinstance(header, dict) or not isinstance(size, int) or not 0 <= size <= MAX_ERROR_BYTES:
                return self._malformed()
        except (ValueError, KeyError, TypeError, RecursionError):
            return self._malformed()
        if len(self.buffer) < end + 1 + size:
            return None
        header["error"] = bytes(self.buffer[end + 1:end + 1 + size]).decode("utf-8", "replace")
        del self.buffer[:end + 1 + size]
        return header

    def _malformed(self) -> dict:
        self.buffer.clear()
        return {"kind": "done", "status": "exception", "exit_code": 1,
                "error": "The run's report of how it ended was malformed"}

    def exit_like_member(self) -> None:
        """Exit the way the member process did, so bwrap's exit status tells the host why."""
        _, status = os.waitpid(self.pid, 0)
        _control.flush()
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
                os.kill(os.getpid(), sig)
            except (OSError, ValueError, RuntimeError):
                pass
            os._exit(128 + sig)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def reap_orphans_of(member: int) -> None:
    """As the run's pid 1: reap every ended child but the member (whose status
    `exit_like_member` reads), so that orphans do not hold the run's pids as zombies."""
    while True:
        try:
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if ended is None or ended.si_pid == member:
            return  # nothing more, or the member ended: the run ends now anyway
        try:
            os.waitpid(ended.si_pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _processes():
    """(pid, state letter) of every process in the sandbox's pid namespace."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    yield int(entry), fh.read().rpartition(b")")[2].split()[0]
            except (OSError, IndexError):
                continue  # gone meanwhile


def pause_run(keep: set[int], *, settle: bool = True) -> None:
    """SIGSTOP every process of the run (the member's Python included) but bwrap's pid 1 and us.

    Between the runs of a session nothing of the member runs: whatever a run left going
    in the background (a process, a pool's workers, a thread) waits, stopped, for the
    next run and then counts against that run's time-out and CPU. Nothing inside can
    continue it: every other process is stopped too. Stopped rather than killed, so a
    multiprocessing pool kept in a session survives (a worker killed holding the pool's
    queue lock would hang it). Files are collected after this, so nothing changes them
    meanwhile.

    Without `settle` (the last job of a one-shot run, whose sandbox the host kills right
    after "end") one pass of signals, without waiting for the stops to take effect.
    """
    for _ in range(PAUSE_PASSES if settle else 1):  # pids.max bounds how many can appear meanwhile
        running = [pid for pid, state in _processes() if pid not in keep and state not in b"TtZX"]
        if not running:
            return
        for pid in running:
            try:
                os.kill(pid, signal.SIGSTOP)
            except OSError:
                pass
        time.sleep(0.001)  # a stop takes effect when the process next leaves the kernel


def resume_run(keep: set[int]) -> None:
    for pid, _ in list(_processes()):
        if pid not in keep:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass


def make_undumpable() -> None:
    """PR_SET_DUMPABLE 0: /proc/PID/fd, mem and environ of this process become unreachable to
    processes of the same uid without CAP_SYS_PTRACE, i.e. to every process of the run."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def supervise(member: MemberLink, jobs) -> None:
    make_undumpable()
    if member.next_report() is None:  # died while importing
        member.exit_like_member()
    send("ready")
    keep = {1, os.getpid()}
    exit_code = 0
    jobs_done = 0
    while (job := read_job(jobs)) is not None:
        before = snapshot(WORK_DIR)  # only files new or changed by this job come back
        if jobs_done:
            resume_run(keep)
        if not member.order({"code": job["code"], "files": job.get("files", [])}):
            member.exit_like_member()
        report = member.next_report()
        if report is None:
            member.exit_like_member()
        pause_run(keep, settle=not job.get("last"))
        jobs_done += 1
        status = report.get("status") if report.get("status") in ("ok", "exception", "exit", "memory") else "exception"
        exit_code = report.get("exit_code") if isinstance(report.get("exit_code"), int) else 1
        if not -(2**31) <= exit_code < 2**31:
            exit_code = 1
        error = str(report.get("error", "")).encode("utf-8", "replace")[:MAX_ERROR_BYTES]
        send("finished", error, status=status, exit_code=exit_code)
        collect(before, job.get("limits", {}))
        send("end")
    member.orders.close()  # the member's loop ends; so does the sandbox
    _control.flush()
    os._exit(exit_code if 0 <= exit_code < 256 else 1)


# ----------------------------------------------------------------------- main


def main() -> None:
    run_supervised(int(sys.argv[1]), int(sys.argv[2]))


def run_supervised(control_fd: int, job_fd: int, *, prepared: bool = False, warm: bool = False,
                   reap_orphans: bool = False) -> None:
    """Become the supervisor of a member process forked here (`prepared`: the libraries are
    already imported, as in a run forked from the fork-server template; `warm`: see
    member_main; `reap_orphans`: we are the run's pid 1, as there, so the member's orphans
    are ours to reap). Never returns."""
    global _control
    orders_r, orders_w = os.pipe()  # supervisor -> member: each job's code and files
    reports_r, reports_w = os.pipe()  # member -> supervisor: ready, and how each job ended
    pid = os.fork()
    if pid == 0:  # the member process: no handle on the host's channels from here on
        for fd in (control_fd, job_fd, orders_w, reports_r):
            os.close(fd)
        try:
            member_main(orders_r, reports_w, prepared=prepared, warm=warm)
        except BaseException:  # noqa: BLE001 - e.g. a preload that fails to import: say why, then go
            import traceback

            traceback.print_exc()
        os._exit(1)
    os.close(orders_r)
    os.close(reports_w)
    if reap_orphans:
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: reap_orphans_of(pid))
    _control = os.fdopen(control_fd, "wb", buffering=1 << 16)
    supervise(MemberLink(pid, orders_w, reports_r), os.fdopen(job_fd, "rb"))


if __name__ == "__main__":
    main()
