"""Bad and odd uploads: a clear error or a safely stored file, never a crash, never a path outside the data dir.

Input handling does not depend on the metadata backend, so these run on SQLite (the
contract suite covers the backends).
"""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from interpreter.files import FileManager
from interpreter.filetypes import detect_type
from interpreter.store import open_store
from tests.fixtures_mongo import TestClock, file_settings

USER = 424242
CSV = b"city,temp\nOslo,3\nLima,19\n"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def manager_for(data_dir: Path, **environ: str) -> FileManager:
    settings = file_settings(data_dir, **environ)
    return FileManager(settings, open_store(settings), clock=TestClock())


@pytest.fixture
def manager(data_dir: Path) -> FileManager:
    return manager_for(data_dir)


def everything_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*")] if root.exists() else []


def xlsx_bytes(extra: dict[str, bytes] | None = None) -> bytes:
    """A minimal workbook-shaped zip (enough for content sniffing)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


async def assert_refused(manager: FileManager, data, filename, message_part: str) -> None:
    result = await manager.upload(USER, data, filename)
    assert result["success"] is False
    assert message_part in result["error"], result["error"]
    assert await manager.list_files(USER) == []
    assert not any(path.is_file() for path in everything_under(manager.settings.files_dir))


async def test_empty_file_is_refused(manager):
    await assert_refused(manager, b"", "data.csv", "File is empty")


async def test_oversize_file_is_refused_with_the_configured_limit(data_dir):
    small = manager_for(data_dir, MAX_FILE_SIZE_MB="1")
    result = await small.upload(USER, b"a" * (1024 * 1024 + 1), "big.csv")
    assert result == {"success": False, "error": "File too large. Maximum size is 1MB"}
    assert (await small.upload(USER, b"a" * (1024 * 1024), "exact.txt"))["success"]


async def test_default_limit_is_50mb(manager):
    result = await manager.upload(USER, bytes(50 * 1024 * 1024 + 1), "huge.bin")
    assert result == {"success": False, "error": "File too large. Maximum size is 50MB"}


async def test_data_that_is_not_bytes_and_a_bad_user_id_are_refused(manager):
    assert (await manager.upload(USER, "a,b\n1,2", "x.csv"))["error"] == "File data must be bytes"
    assert (await manager.upload("123", CSV, "x.csv"))["error"] == "user_id must be an integer"
    assert (await manager.upload(USER, bytearray(CSV), "x.csv"))["success"]


@pytest.mark.parametrize("name, expected", [
    ("", "upload.csv"),
    (None, "upload.csv"),
    ("...", "upload.csv"),
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\system.ini", "system.ini"),
    ("/etc/shadow", "shadow"),
    ("re\u202eport\u200b.csv", "report.csv"),  # bidi override, zero-width space
    ("ｄａｔａ.csv", "data.csv"),  # full-width letters (NFKC)
    ("line\nbreak\x00.csv", "linebreak.csv"),  # control characters dropped
])
async def test_names_are_sanitised_and_never_become_paths(manager, name, expected):
    passwd_before = Path("/etc/passwd").stat().st_mtime
    result = await manager.upload(USER, CSV, name)
    assert result["success"], result
    assert result["filename"] == expected
    [blob] = [path for path in everything_under(manager.settings.files_dir) if path.is_file()]
    assert blob.name == result["file_id"]
    assert blob.resolve().is_relative_to(manager.settings.data_dir.resolve())
    assert Path("/etc/passwd").stat().st_mtime == passwd_before


async def test_a_500_character_name_is_shortened_keeping_the_extension(manager):
    result = await manager.upload(USER, CSV, "q" * 496 + ".csv")
    assert result["success"]
    assert len(result["filename"]) == 100 and result["filename"].endswith(".csv")
    assert result["file_type"] == "csv"


async def test_non_utf8_csv_is_kept_byte_for_byte_with_a_note(manager):
    latin = "name;city\nJosé;Málaga\nJürgen;Köln\n".encode("latin-1")
    result = await manager.upload(USER, latin, "people.csv")
    assert result["success"] and result["file_type"] == "csv"
    assert "not UTF-8" in result["note"] and "cp1252" in result["note"]
    [item] = await manager.resolve_for_run(USER, [result["file_id"]])
    assert item.host_path.read_bytes() == latin


async def test_a_real_workbook_shape_is_accepted(manager):
    result = await manager.upload(USER, xlsx_bytes(), "report.xlsx")
    assert result["success"] and result["file_type"] == "xlsx" and "note" not in result


async def test_an_xlsx_that_is_a_zip_bomb_is_refused(manager):
    bomb = xlsx_bytes({"xl/worksheets/sheet1.xml": bytes(64 * 1024 * 1024)})
    assert len(bomb) < 200 * 1024
    await assert_refused(manager, bomb, "report.xlsx", "zip bomb")


async def test_an_archive_with_too_many_entries_is_refused(manager):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(10_001):
            archive.writestr(f"f{index}", b"")
    await assert_refused(manager, buffer.getvalue(), "many.xlsx", "more than 10,000 entries")


def central_directory_only_zip(entries: int) -> bytes:
    """A zip whose central directory lists `entries` one-letter names (47 bytes each) and
    nothing else: the cheapest way to make a parser build a million objects."""
    entry = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0) + b"a"
    local = b"PK\x03\x04" + bytes(26)
    directory = entry * entries
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries & 0xFFFF, entries & 0xFFFF, len(directory), len(local), 0)
    return local + directory + end


async def test_a_huge_archive_listing_costs_bounded_memory(manager):
    """Issue 12: a 44 MB upload listing 1M entries cost 3.5 s of CPU and +300 MB before the
    entry cap was checked. 200,000 entries (9 MB) here: refused with no parse of the listing."""
    data = central_directory_only_zip(200_000)
    tracemalloc.start()
    try:
        await assert_refused(manager, data, "many.xlsx", "entries")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"refusing the listing took {peak / 2**20:.0f} MB"


async def test_classifying_a_large_text_upload_costs_bounded_memory(manager):
    """The encoding check decodes a chunk at a time: a 16 MB CSV of emoji used to become a
    whole-file string (4 bytes a character) on the way to being classified."""
    data = b"name,n\n" + "\U0001f600,1\n".encode() * (16 * 1024 * 1024 // 7)
    tracemalloc.start()
    try:
        result = await manager.upload(USER, data, "emoji.csv")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["success"] and result["file_type"] == "csv", result
    assert peak < 12 * 1024 * 1024, f"classifying a {len(data) / 2**20:.0f} MB file took {peak / 2**20:.0f} MB"


@pytest.mark.parametrize("data, message", [
    (os.urandom(4096).replace(b"PK", b"pk"), "This file is not an Excel workbook: its content is binary data"),
    (b"PK\x03\x04" + os.urandom(512), "This is not a usable Excel workbook: it is a damaged zip archive"),
])
async def test_an_xlsx_that_is_not_a_spreadsheet_is_refused(manager, data, message):
    await assert_refused(manager, data, "report.xlsx", message)


async def test_a_plain_zip_named_xlsx_is_refused(manager):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    await assert_refused(manager, buffer.getvalue(), "report.xlsx", "is not an Excel workbook: its content is a zip archive")


async def test_content_wins_over_a_misleading_name(manager):
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    result = await manager.upload(USER, png, "data.csv")
    assert result["success"] and result["file_type"] == "image"
    assert result["note"] == "The content is an image, not CSV as the name says; stored as image."

    csv_as_xlsx = await manager.upload(USER, CSV, "data.xlsx")
    assert csv_as_xlsx["file_type"] == "csv" and "not an Excel workbook" in csv_as_xlsx["note"]


async def test_declared_type_is_a_hint_not_an_order(manager):
    assert (await manager.upload(USER, CSV, "noext", file_type="csv"))["file_type"] == "csv"
    assert (await manager.upload(USER, CSV, "noext2", file_type="../../evil"))["file_type"] == "csv"
    result = await manager.upload(USER, b"%PDF-1.7 ...", "paper", file_type="csv")
    assert result["file_type"] == "pdf" and "not CSV" in result["note"]


@pytest.mark.parametrize("data, name, file_type", [
    (b'{"a": [1, 2]}', "x.json", "json"),
    (b'{"a": 1}\n{"a": 2}\n', "x.jsonl", "jsonl"),
    (b"PAR1" + bytes(20) + b"PAR1", "x.parquet", "parquet"),
    (b"a\tb\n1\t2\n", "noextension", "tsv"),
    (b"a,b\n1,2\n", "noextension", "csv"),
    (b"just words", "notes.txt", "text"),
    (b"\xff\xd8\xff\xe0" + bytes(16), "photo.jpg", "image"),
    (b"SQLite format 3\x00" + bytes(100), "x.db", "sqlite"),
    (b"\x00\x01\x02\x03", "blob", "binary"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), "renamed.xlsx", "xls"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), "letter.doc", "binary"),
    ("a,b\n1,2\n".encode("utf-16"), "wide.csv", "csv"),
])
def test_detect_type(data, name, file_type):
    assert detect_type(data, name).file_type == file_type


async def test_bad_ids_given_to_a_run_get_a_clear_message(manager):
    from interpreter.types import InterpreterError

    for bad in (None, 12345, "x" * 1000, "`@everyone`"):
        with pytest.raises(InterpreterError, match="not found, has expired, or is not yours"):
            await manager.resolve_for_run(USER, [bad])
    with pytest.raises(InterpreterError) as caught:
        await manager.resolve_for_run(USER, ["x" * 1000])
    assert len(str(caught.value)) < 120  # a long id is shown shortened
    with pytest.raises(InterpreterError, match="must be a list"):
        await manager.resolve_for_run(USER, "abc")
