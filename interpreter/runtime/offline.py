"""Inside the sandbox: a run has no internet and no keyboard; say so in one clear line.

- Name lookups and connections to anything but this sandbox's own loopback raise
  `NoInternet` ("this sandbox has no internet: upload the file instead"), instead of a
  30-line urllib traceback ending in "Temporary failure in name resolution". The
  sandbox's network namespace is what enforces it; this only changes the message.
- seaborn's `load_dataset` reads the example datasets copied into the venv when it was
  built (interpreter/offline_datasets.py; SEABORN_DATA points there); any other name
  gets the list of what is available offline.
- `input()` explains that runs have no keyboard (it still raises EOFError, so code that
  catches EOFError keeps working).
"""

from __future__ import annotations

import builtins
import errno
import os
import sys

from errors import NoInternet

UPLOAD_INSTEAD = ("Upload the file instead (drop it in the chat or use /upload), "
                  "then read it with load_file('<file id>').")
_REFUSED = {errno.EAFNOSUPPORT, errno.EPERM, errno.EACCES}
_LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0"}


def seaborn_data_dir() -> str:
    return os.path.join(sys.prefix, "share", "seaborn-data")


def no_internet(target: object = None) -> NoInternet:
    shown = f" (could not reach {str(target)[:80]})" if target not in _LOCAL_HOSTS else ""
    return NoInternet(f"This sandbox has no internet{shown}. {UPLOAD_INSTEAD}")


def _host_of(address) -> object:
    if isinstance(address, tuple) and address:
        return address[0]
    return address


def install_network_guard(socket) -> None:
    """Patch the `socket` module: called by the bootstrap when it is first imported."""
    original_init = socket.socket.__init__
    original_getaddrinfo = socket.getaddrinfo
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        try:
            original_init(self, family, type, proto, fileno)
        except OSError as exc:  # the syscall filter refuses internet sockets outright
            if fileno is None and family in (-1, socket.AF_INET, socket.AF_INET6) and exc.errno in _REFUSED:
                raise no_internet() from None
            raise

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if host not in _LOCAL_HOSTS:
            raise no_internet(host)
        return original_getaddrinfo(host, *args, **kwargs)

    def gethostbyname(host):
        if host not in _LOCAL_HOSTS:
            raise no_internet(host)
        return "127.0.0.1"

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and _host_of(address) not in _LOCAL_HOSTS:
            raise no_internet(_host_of(address))
        return original_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and _host_of(address) not in _LOCAL_HOSTS:
            raise no_internet(_host_of(address))
        return original_connect_ex(self, address)

    socket.socket.__init__ = __init__
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex


def offline_dataset_names() -> list[str]:
    try:
        return sorted(name[:-4] for name in os.listdir(seaborn_data_dir()) if name.endswith(".csv"))
    except OSError:
        return []


def patch_seaborn_utils(utils) -> None:
    """load_dataset: the local copy, or a clear word on what is available offline."""
    original = utils.load_dataset

    def load_dataset(name, cache=True, data_home=None, **kws):
        if isinstance(name, str) and data_home is None:
            if not os.path.exists(os.path.join(seaborn_data_dir(), f"{name}.csv")):
                available = ", ".join(offline_dataset_names()) or "none"
                raise NoInternet(
                    f"seaborn's example dataset {name!r} is downloaded from the internet, and this sandbox has "
                    f"no internet. Available offline: {available} (and plotly.express.data: gapminder, stocks, "
                    f"wind, election...). Otherwise: {UPLOAD_INSTEAD}")
            return original(name, cache=True, data_home=seaborn_data_dir(), **kws)
        return original(name, cache=cache, data_home=data_home, **kws)

    load_dataset.__doc__ = original.__doc__
    utils.load_dataset = load_dataset
    utils.get_dataset_names = offline_dataset_names


def _no_keyboard(prompt: object = "") -> str:
    if prompt:
        print(prompt, end="", flush=True)
    raise EOFError(
        "input() cannot read anything: runs have no keyboard. Put the value in your code instead "
        "(name = 'Ada'), or upload a file and read it with load_file('<file id>').")


def install() -> None:
    """Called once by the bootstrap, before any member code."""
    os.environ.setdefault("SEABORN_DATA", seaborn_data_dir())
    # Browsers and the like keep settings under XDG_CONFIG_HOME, by default in HOME (the work
    # dir): keep them out of it, or they come back as the run's files.
    os.environ.setdefault("XDG_CONFIG_HOME", "/tmp/.config")
    builtins.input = _no_keyboard
