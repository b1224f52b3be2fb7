"""File names and file kinds: one place decides what a name may look like and what a file is.

Used for uploads (files.py), for files a run produced (sandbox collection) and by the
Discord side when it attaches files.
"""

from __future__ import annotations

import os
import re
import unicodedata

MAX_FILENAME_LENGTH = 100

# kind used in result['generated_files'][i]['type'] and in stored metadata
_KIND_BY_EXTENSION = {
    "image": {"png", "jpg", "jpeg", "gif", "webp", "bmp", "svg", "tif", "tiff", "ico"},
    "data": {"csv", "tsv", "xlsx", "xls", "json", "jsonl", "ndjson", "parquet", "feather", "pkl", "pickle", "npy", "npz", "h5", "hdf5", "sqlite", "db", "xml", "yaml", "yml"},
    "text": {"txt", "md", "log", "py", "rst", "ini", "cfg", "toml", "tex"},
    "html": {"html", "htm"},
    "pdf": {"pdf"},
    "archive": {"zip", "tar", "gz", "tgz", "bz2", "xz", "7z"},
}

_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|`]")


def extension(filename: str) -> str:
    """Lower-case extension without the dot ('' when there is none)."""
    _, dot, ext = filename.rpartition(".")
    return ext.lower() if dot and ext and len(ext) <= 10 else ""


def classify(filename: str) -> str:
    """The kind of a file from its name: image, data, text, html, pdf, archive or file."""
    ext = extension(filename)
    for kind, extensions in _KIND_BY_EXTENSION.items():
        if ext in extensions:
            return kind
    return "file"


def sanitize_filename(name: str, default: str = "file") -> str:
    """A safe single path component for display and attachment names.

    NFKC-normalised, no path separators, control, format (zero-width, bidi) or
    shell-special characters, no leading dots, at most MAX_FILENAME_LENGTH
    characters with the extension kept.
    """
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    name = unicodedata.normalize("NFKC", str(name))
    name = "".join(ch for ch in name if unicodedata.category(ch) not in {"Cf", "Cc", "Co", "Cs", "Zl", "Zp"})
    name = os.path.basename(name.replace("\\", "/"))
    name = _UNSAFE_CHARS.sub("_", name).strip().strip(".")
    name = re.sub(r"\s+", " ", name)
    if not name:
        return default
    if len(name) > MAX_FILENAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            name = stem[: MAX_FILENAME_LENGTH - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_FILENAME_LENGTH]
    return name
