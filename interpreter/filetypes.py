"""File names and file kinds: one place decides what a name may look like and what a file is.

Used for uploads (files.py), for files a run produced (sandbox collection) and by the
Discord side when it attaches files.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import re
import unicodedata

from interpreter.invisible import strip_invisible

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

    NFKC-normalised, no path separators, no characters that draw nothing (control,
    format, zero-width, fillers: interpreter/invisible.py), no shell-special characters, no leading dots, at most MAX_FILENAME_LENGTH
    characters with the extension kept.
    """
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    name = unicodedata.normalize("NFKC", str(name))
    name = strip_invisible(name).replace("\n", "").replace("\t", " ")
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


# --- content sniffing: what a file *is*, from its bytes first and its name second
#
# `file_type` values (stored in metadata, handed to the runtime's load_file):
#   csv tsv xlsx xls json jsonl parquet feather xml yaml html text   (data and text)
#   image pdf zip gzip sqlite npy npz hdf5 pickle binary             (other content)

TEXT_TYPES = frozenset({"csv", "tsv", "json", "jsonl", "xml", "yaml", "html", "text"})
# Names that promise a binary format load_file parses: content that is no such thing
# (and no other recognisable format) is refused at upload rather than failing later.
STRICT_BINARY_TYPES = frozenset({"xlsx", "xls", "parquet", "feather"})
KNOWN_TYPES = TEXT_TYPES | STRICT_BINARY_TYPES | {"image", "pdf", "zip", "gzip", "sqlite", "npy", "npz", "hdf5", "pickle", "binary"}

_TYPE_BY_EXTENSION = {
    "csv": "csv", "tsv": "tsv", "tab": "tsv", "xlsx": "xlsx", "xlsm": "xlsx", "xls": "xls",
    "json": "json", "geojson": "json", "jsonl": "jsonl", "ndjson": "jsonl", "parquet": "parquet", "pq": "parquet",
    "feather": "feather", "arrow": "feather", "xml": "xml", "yaml": "yaml", "yml": "yaml", "html": "html",
    "htm": "html", "txt": "text", "md": "text", "log": "text", "py": "text", "rst": "text", "ini": "text",
    "cfg": "text", "toml": "text", "tex": "text", "sql": "text", "pdf": "pdf", "zip": "zip", "gz": "gzip",
    "tgz": "gzip", "sqlite": "sqlite", "sqlite3": "sqlite", "db": "sqlite", "npy": "npy", "npz": "npz",
    "h5": "hdf5", "hdf5": "hdf5", "pkl": "pickle", "pickle": "pickle",
    **{ext: "image" for ext in _KIND_BY_EXTENSION["image"]},
}

_DESCRIPTION = {
    "csv": "CSV", "tsv": "TSV", "xlsx": "an Excel workbook", "xls": "an old-style Excel workbook",
    "json": "JSON", "jsonl": "JSON lines", "parquet": "Parquet", "feather": "Feather/Arrow", "xml": "XML",
    "yaml": "YAML", "html": "HTML", "text": "plain text", "image": "an image", "pdf": "a PDF", "zip": "a zip archive",
    "gzip": "gzip data", "sqlite": "an SQLite database", "npy": "a NumPy array", "npz": "NumPy arrays",
    "hdf5": "HDF5", "pickle": "a pickle", "binary": "binary data",
}

# (magic prefix, type): checked in order, on the first bytes
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image"), (b"\xff\xd8\xff", "image"), (b"GIF87a", "image"), (b"GIF89a", "image"),
    (b"II*\x00", "image"), (b"MM\x00*", "image"), (b"%PDF-", "pdf"), (b"PAR1", "parquet"), (b"ARROW1", "feather"),
    (b"SQLite format 3\x00", "sqlite"), (b"\x93NUMPY", "npy"), (b"\x89HDF\r\n\x1a\n", "hdf5"), (b"\x1f\x8b", "gzip"),
)
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # old Office files (xls, doc, ppt)
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_CENTRAL_DIRECTORY_SIGNATURE = b"PK\x01\x02"

# Archive limits: Python's zipfile stops a member at its declared size, so checking the
# declared sizes bounds what openpyxl/pandas will inflate later.
ARCHIVE_MAX_MEMBERS = 10_000
ARCHIVE_MAX_EXPANDED_BYTES = 1024 * 1024 * 1024
ARCHIVE_MAX_RATIO = 200
_DECODE_CHUNK_BYTES = 1024 * 1024  # real spreadsheets compress 5-20x; repetitive CSV inside a zip maybe 100x


class UnsupportedContent(ValueError):
    """The content cannot be stored as what it claims to be. The message is for the member."""


@dataclasses.dataclass(frozen=True)
class Detection:
    file_type: str
    encoding: str | None = None  # text only: utf-8, utf-8-sig, utf-16, cp1252, latin-1
    note: str | None = None  # set when content and name disagree, or the text is not UTF-8


def type_from_name(filename: str) -> str | None:
    """The file_type a name promises (None when the extension says nothing)."""
    return _TYPE_BY_EXTENSION.get(extension(filename or ""))


def describe(file_type: str) -> str:
    return _DESCRIPTION.get(file_type, file_type)


def _text_encoding(data: bytes) -> str | None:
    """The encoding a text file uses, or None when the bytes are not text."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    head = data[:65536]
    if b"\x00" in head:
        return None
    if _decodes(data, "utf-8"):
        return "utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8"
    controls = sum(1 for byte in head if byte < 0x20 and byte not in b"\t\n\r\f\v")
    if controls > len(head) // 100:
        return None
    return "cp1252" if _decodes(data, "cp1252") else "latin-1"


def _decodes(data: bytes, encoding: str) -> bool:
    """True when all of `data` decodes, checked a chunk at a time: a 50 MB upload never
    becomes a whole-file string (up to four times its size) just to be classified."""
    decoder = codecs.getincrementaldecoder(encoding)()
    view = memoryview(data)
    try:
        for start in range(0, len(view), _DECODE_CHUNK_BYTES):
            decoder.decode(view[start:start + _DECODE_CHUNK_BYTES])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _guess_text_type(text: str) -> str:
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith(("{", "[")):
        return "json"
    lowered = stripped[:512].lower()
    if lowered.startswith("<?xml"):
        return "xml"
    if lowered.startswith(("<!doctype html", "<html")):
        return "html"
    lines = [line for line in stripped.splitlines()[:6] if line.strip()]
    for separator, kind in (("\t", "tsv"), (",", "csv"), (";", "csv")):
        counts = {line.count(separator) for line in lines}
        if len(lines) >= 2 and len(counts) == 1 and counts.pop() > 0:
            return kind
    return "text"


def inspect_zip(data: bytes) -> str:
    """'xlsx' or 'zip' for a sound archive; raises UnsupportedContent for damaged ones and zip bombs."""
    import io
    import zipfile

    # zipfile builds an object per central-directory entry before we could count them (1M
    # entries in a 44 MB upload: seconds of CPU and +300 MB). Every entry it reads starts with
    # the central-directory signature, so counting signatures first (one pass in C, no
    # allocation) bounds its work by ARCHIVE_MAX_MEMBERS whatever the archive claims.
    if data.count(_CENTRAL_DIRECTORY_SIGNATURE) > ARCHIVE_MAX_MEMBERS:
        raise UnsupportedContent(f"the archive holds more than {ARCHIVE_MAX_MEMBERS:,} entries")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        raise UnsupportedContent("it is a damaged zip archive") from None
    expanded = sum(member.file_size for member in members)
    if expanded > ARCHIVE_MAX_EXPANDED_BYTES:
        raise UnsupportedContent(f"the archive would expand to {expanded / 2**20:,.0f} MB "
                                 f"(at most {ARCHIVE_MAX_EXPANDED_BYTES // 2**20:,} MB)")
    for member in members:
        if member.file_size > 1024 * 1024 and member.file_size > ARCHIVE_MAX_RATIO * max(member.compress_size, 1):
            raise UnsupportedContent("the archive is compressed suspiciously well (it looks like a zip bomb)")
    names = {member.filename for member in members}
    return "xlsx" if "xl/workbook.xml" in names or "xl/workbook.bin" in names else "zip"


def _content_type(data: bytes, named: str | None) -> tuple[str, str | None]:
    """(type, encoding) from the bytes; `named` only breaks ties the bytes cannot."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind, None
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image", None
    if data.startswith(_ZIP_MAGICS):
        kind = inspect_zip(data)
        return ("npz" if kind == "zip" and named == "npz" else kind), None
    if data.startswith(_OLE2_MAGIC):
        # an old workbook renamed .xlsx is still a workbook; other OLE2 files (doc, msg) are not data
        return ("xls" if named in {"xls", "xlsx"} else "binary"), None
    if named == "image" and data.startswith((b"BM", b"\x00\x00\x01\x00")):  # BMP, ICO: magic too short to trust alone
        return "image", None
    if named == "image" and data.lstrip()[:5].lower() in (b"<svg ", b"<?xml"):
        return "image", None
    if named == "pickle" and data[:1] == b"\x80":
        return "pickle", None
    encoding = _text_encoding(data)
    if encoding is None:
        return "binary", None
    if named in TEXT_TYPES:
        return named, encoding
    return _guess_text_type(data[:65536].decode(encoding, "replace")), encoding


def detect_type(data: bytes, filename: str = "", declared: str | None = None) -> Detection:
    """What `data` is. The content decides; the name (or `declared`) only fills gaps.

    A name that disagrees with the content gets a note and the content's type, e.g. a
    PNG called data.csv is stored as an image. Content that cannot be what a strict
    binary name promises (an .xlsx that is not a workbook) and is nothing else we know
    raises UnsupportedContent, as do zip bombs and damaged archives.
    """
    named = declared if declared in KNOWN_TYPES else type_from_name(filename)
    try:
        kind, encoding = _content_type(data, named)
    except UnsupportedContent as exc:
        claimed = describe(named) if named else "a file"
        raise UnsupportedContent(f"This is not a usable {claimed.removeprefix('an ').removeprefix('a ')}: {exc}") from None
    if named in STRICT_BINARY_TYPES and kind in {"binary", "zip"}:
        raise UnsupportedContent(f"This file is not {describe(named)}: its content is {describe(kind)}")
    note = None
    if named and kind != named and not (named in TEXT_TYPES and kind in TEXT_TYPES):
        note = f"The content is {describe(kind)}, not {describe(named)} as the name says; stored as {kind}."
    if encoding in {"cp1252", "latin-1"}:
        note = ((note + " ") if note else "") + (
            f"The text is not UTF-8; it was kept as is (read it with encoding='{encoding}').")
    return Detection(kind, encoding, note)
