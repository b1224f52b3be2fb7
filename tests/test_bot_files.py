"""Uploads (slash, message menu, files dropped in chat) and the member's file list."""

from __future__ import annotations

import discord.ext.test as dpytest
import discord.ext.test.backend as dpytest_backend
import pytest

import interpreter
from tests.discord_harness import attachment_payload

SALES_CSV = "region,units,price\nnorth,10,2.5\nsouth,7,3.0\neast,12,2.0\n"


@pytest.fixture
def sales_csv(tmp_path):
    path = tmp_path / "sales.csv"
    path.write_text(SALES_CSV)
    return path


def drop(world, path, *, size=None, content=""):
    """A member posts a message with `path` attached (dpytest's gateway + the real listener)."""
    import discord

    attachment = discord.Attachment(data=attachment_payload(path, size=size), state=dpytest_backend.get_state())
    return dpytest_backend.make_message(content, world.alice, world.channel, attachments=[attachment])


async def test_upload_stores_and_previews_a_table(discord_world, sales_csv):
    w = discord_world
    reply = await w.harness.slash("upload", w.alice, attachments={"file": attachment_payload(sales_csv)})
    text = reply.content
    assert "Stored **sales.csv**" in text and "csv" in text
    assert "<t:" in text and ":R>" in text  # expiry as a Discord relative timestamp
    assert "3 rows × 3 columns" in text
    assert "region (object)" in text or "region (str" in text
    assert "units (int64)" in text
    assert "north" in text  # first rows
    files = await interpreter.list_user_files(w.alice.id)
    assert [f["filename"] for f in files] == ["sales.csv"]
    assert files[0]["file_id"] in text


async def test_preview_runs_in_the_sandbox_not_in_the_bot(discord_world, tmp_path):
    """The bot process has no pandas at all: previews can only come from the sandbox.
    A table pandas cannot parse gives a polite note; the upload itself is kept."""
    import importlib.util

    assert importlib.util.find_spec("pandas") is None, "pandas must not be installed next to the bot"
    w = discord_world
    bad = tmp_path / "broken.csv"
    bad.write_text("a,b\n1,2\n1,2,3,4,5\n")
    reply = await w.harness.slash("upload", w.alice, attachments={"file": attachment_payload(bad)})
    assert "no preview" in reply.content, reply.content
    assert "Stored **broken.csv**" in reply.content
    assert reply.content.count("```") % 2 == 0


async def test_upload_menu_stores_attachments_of_any_message(discord_world, sales_csv):
    w = discord_world
    target = w.harness.message_payload(w.bob, "here's the data", attachments=[attachment_payload(sales_csv)])
    reply = await w.harness.message_menu("Upload to interpreter", w.alice, target)
    assert "Stored **sales.csv**" in reply.content
    # stored as the member who asked, not the poster
    assert len(await interpreter.list_user_files(w.alice.id)) == 1
    assert await interpreter.list_user_files(w.bob.id) == []

    empty = await w.harness.message_menu("Upload to interpreter", w.alice, w.harness.message_payload(w.bob, "no files"))
    assert empty.ephemeral and "no attachments" in empty.callback.content


async def test_too_large_upload_is_refused_before_downloading(discord_world, sales_csv):
    w = discord_world
    huge = attachment_payload(sales_csv, size=60 * 1024 * 1024)
    reply = await w.harness.slash("upload", w.alice, attachments={"file": huge})
    assert "60.0 MB" in reply.content and "largest file" in reply.content
    assert await interpreter.list_user_files(w.alice.id) == []


async def test_files_list_paginates_and_deletes_with_buttons(discord_world):
    w = discord_world
    ids = []
    for i in range(7):
        stored = await interpreter.upload_file(w.alice.id, f"n\n{i}\n".encode(), f"part{i}.csv")
        ids.append(stored["file_id"])

    listing = await w.harness.slash("files", w.alice, subcommand="list")
    assert listing.ephemeral
    embed = listing.message["embeds"][0]
    assert "Page 1 of 2" in embed["footer"]["text"] and "7 files" in embed["footer"]["text"]
    assert {"Delete 1", "Next", "Previous"} <= set(listing.buttons())

    page_two = await w.harness.click(listing, "Next", w.alice)
    assert page_two.callback.payload["type"] == 6  # acknowledged first (the database may be slow), then redrawn
    assert "Page 2 of 2" in listing.message["embeds"][0]["footer"]["text"]

    first_on_page = listing.message["embeds"][0]["description"].split("`")[1]
    await w.harness.click(listing, "Delete 6", w.alice)
    remaining = {f["file_id"] for f in await interpreter.list_user_files(w.alice.id)}
    assert first_on_page not in remaining and len(remaining) == 6

    stranger = await w.harness.click(listing, "Delete 6", w.bob)
    assert stranger.callback.ephemeral and "someone else's" in stranger.callback.content
    assert len(await interpreter.list_user_files(w.alice.id)) == 6


async def test_files_list_buttons_work_after_a_restart(discord_world):
    """The buttons carry the owner, page and file in their ids: no per-message state to lose."""
    w = discord_world
    for i in range(7):
        await interpreter.upload_file(w.alice.id, f"n\n{i}\n".encode(), f"part{i}.csv")
    listing = await w.harness.slash("files", w.alice, subcommand="list")
    assert listing.message_id not in w.bot._connection._view_store._views, "nothing held in memory per message"
    await w.harness.click(listing, "Next", w.alice)
    assert "Page 2 of 2" in listing.message["embeds"][0]["footer"]["text"]
    await w.harness.click(listing, "Delete 7", w.alice)
    assert len(await interpreter.list_user_files(w.alice.id)) == 6
    assert "Page 2 of 2" in listing.message["embeds"][0]["footer"]["text"]


async def test_files_delete_with_autocomplete(discord_world):
    w = discord_world
    stored = await interpreter.upload_file(w.alice.id, b"a\n1\n", "gone.csv")
    choices = await w.harness.autocomplete("files", w.alice, "file", subcommand="delete", file="gon")
    assert [c["value"] for c in choices] == [stored["file_id"]]
    assert "gone.csv" in choices[0]["name"]

    bobs_try = await w.harness.slash("files", w.bob, subcommand="delete", file=stored["file_id"])
    assert bobs_try.ephemeral and "found no file" in bobs_try.content
    done = await w.harness.slash("files", w.alice, subcommand="delete", file=stored["file_id"])
    assert done.ephemeral and "Deleted" in done.content
    assert await interpreter.list_user_files(w.alice.id) == []


async def test_empty_file_list_says_how_to_add_files(discord_world):
    w = discord_world
    listing = await w.harness.slash("files", w.carol, subcommand="list")
    assert "/upload" in listing.message["embeds"][0]["description"]


# --- files dropped in chat (dpytest: message events through the real gateway parser)


async def test_csv_dropped_in_chat_is_uploaded_and_previewed(discord_world, sales_csv):
    drop(discord_world, sales_csv, content="numbers for this week")
    await dpytest.run_all_events()
    reply = dpytest.get_message()
    assert "Stored **sales.csv**" in reply.content and "3 rows × 3 columns" in reply.content
    assert "load_file(" in reply.content  # the hint showing how to use it
    files = await interpreter.list_user_files(discord_world.alice.id)
    assert [f["filename"] for f in files] == ["sales.csv"]


async def test_executable_dropped_in_chat_is_ignored(discord_world, tmp_path):
    exe = tmp_path / "tool.exe"
    exe.write_bytes(b"MZ\x90\x00")
    drop(discord_world, exe)
    await dpytest.run_all_events()
    assert dpytest.verify().message().nothing()
    assert await interpreter.list_user_files(discord_world.alice.id) == []


async def test_60_mb_drop_is_refused_politely(discord_world, tmp_path):
    big = tmp_path / "huge.csv"
    with open(big, "wb") as handle:  # a real 60 MB file (sparse on disk)
        handle.truncate(60 * 1024 * 1024)
    drop(discord_world, big)
    await dpytest.run_all_events()
    reply = dpytest.get_message()
    assert "huge.csv" in reply.content and "60.0 MB" in reply.content and "50 MB" in reply.content
    assert await interpreter.list_user_files(discord_world.alice.id) == []


async def test_drops_only_in_configured_channels(bot_settings, monkeypatch, tmp_path, sales_csv):
    from tests.fixtures_discord import start_bot

    world = await start_bot(bot_settings.replace(upload_channel_ids=(1,)), monkeypatch, tmp_path)
    try:
        drop(world, sales_csv)
        await dpytest.run_all_events()
        assert dpytest.verify().message().nothing()
    finally:
        world.bot.expiry_sweep.cancel()
        await dpytest.empty_queue()


async def test_acceptance_drop_sales_csv_then_run_with_load_file(discord_world, sales_csv):
    """As a new member would: drop sales.csv, copy the id from the reply, /run with load_file."""
    import re

    w = discord_world
    drop(w, sales_csv)
    await dpytest.run_all_events()
    file_id = re.search(r"File id: `([^`]+)`", dpytest.get_message().content).group(1)
    reply = await w.harness.slash("run", w.alice, files=file_id,
                                  code=f"df = load_file('{file_id}')\nprint(df.groupby('region').units.sum().to_dict())")
    assert "{'east': 12, 'north': 10, 'south': 7}" in reply.content, reply.content


async def test_hostile_filename_is_sanitised_and_never_pings(discord_world, sales_csv):
    w = discord_world
    evil_name = "@everyone ```\u202e<@&1>.csv"
    reply = await w.harness.slash("upload", w.alice,
                                  attachments={"file": attachment_payload(sales_csv, filename=evil_name)})
    assert reply.content.count("```") % 2 == 0
    assert "\u202e" not in reply.content
    assert "Stored" in reply.content
    for sent in reply.sent:
        if sent.kind == "edit_original":
            assert sent.allowed_mentions["parse"] == []
