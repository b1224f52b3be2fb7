"""A member's walk through the file commands while the database is down, and with odd
attachments: every reply is acknowledged within Discord's deadline, says what happened in
the project's words (not "something went wrong"), and nothing is dropped without a word.

Real bot, cogs, engine and sandbox; a file-backed MongoDB wire server killed with SIGKILL
(as a crash would); only Discord's network is recorded.
"""

from __future__ import annotations

import time

import discord.ext.test as dpytest
import pytest

import interpreter
from cogs._format import code_block
from config.settings import Secret
from interpreter.store import UNAVAILABLE_MESSAGE
from tests.discord_harness import attachment_payload
from tests.test_bot_store_outage import acknowledged_after, bot_on_mongo, kill, stamped  # noqa: F401 (fixture)

# Under Discord's 3 s deadline so the test stays short; before the fix the acknowledgement
# waited for it (and with the default 5 s, missed the deadline).
SERVER_SELECTION_MS = 2000
ACKNOWLEDGED_WITHIN = 1.0


@pytest.fixture
async def world_on_mongo(bot_settings, monkeypatch, tmp_path):
    async with bot_on_mongo(bot_settings, monkeypatch, tmp_path, "walk", SERVER_SELECTION_MS) as world:
        yield world


def said(reply) -> str:
    """Everything the member read in answer (the response and its follow-ups)."""
    return "\n".join(s.content for s in reply.sent)


async def test_file_commands_answer_in_time_and_say_the_database_is_down(world_on_mongo, stamped):
    w = world_on_mongo
    stamps = stamped(w)
    h = w.harness
    ids = [(await interpreter.upload_file(w.alice.id, f"n\n{i}\n".encode(), f"part{i}.csv"))["file_id"]
           for i in range(6)]
    listing = await h.slash("files", w.alice, subcommand="list")
    assert "Page 1 of 2" in listing.message["embeds"][0]["footer"]["text"]
    kill(w.mongo)

    steps = {
        "/files list": lambda: h.start_slash("files", w.alice, subcommand="list"),
        "/files delete": lambda: h.start_slash("files", w.alice, subcommand="delete", file=ids[0]),
        "Next": lambda: h.start_click(listing, "Next", w.alice),
        "Delete 1": lambda: h.start_click(listing, "Delete 1", w.alice),
    }
    for step, start in steps.items():
        dispatched = time.monotonic()
        reply = await start().wait()
        acknowledged = acknowledged_after(reply, dispatched, stamps)
        assert acknowledged < ACKNOWLEDGED_WITHIN, f"{step}: acknowledged after {acknowledged:.1f} s"
        assert UNAVAILABLE_MESSAGE in said(reply), f"{step}: {said(reply)!r}"
        assert "Something went wrong" not in said(reply)
        assert all(s.ephemeral for s in reply.sent if s.kind in ("callback", "followup") and s.content)

    w.mongo.start()  # back: nothing was lost
    assert len(await interpreter.list_user_files(w.alice.id)) == 6


def seven_csvs(tmp_path):
    paths = []
    for i in range(7):
        path = tmp_path / f"part{i}.csv"
        columns = [f"a_rather_long_column_name_{j}" for j in range(8)]  # five previews overflow one message
        path.write_text(",".join(columns) + "\n" + ",".join(str(i) for _ in columns) + "\n")
        paths.append(path)
    return paths


async def test_upload_menu_names_the_attachments_past_its_limit_and_keeps_every_id(discord_world, tmp_path):
    w = discord_world
    target = w.harness.message_payload(w.bob, "all parts", attachments=[
        attachment_payload(path) for path in seven_csvs(tmp_path)])
    reply = await w.harness.message_menu("Upload to interpreter", w.alice, target)
    stored = await interpreter.list_user_files(w.alice.id)
    assert len(stored) == 5
    for meta in stored:  # five previews do not fit in one message: each id is still given
        assert meta["file_id"] in reply.content, reply.content
    assert "part5.csv" in reply.content and "part6.csv" in reply.content  # not dropped without a word
    assert "Not stored" in reply.content and len(reply.content) <= 2000


async def test_a_drop_of_more_files_than_taken_names_the_rest(discord_world, tmp_path):
    import discord
    import discord.ext.test.backend as dpytest_backend

    w = discord_world
    state = dpytest_backend.get_state()
    attachments = [discord.Attachment(data=attachment_payload(path), state=state) for path in seven_csvs(tmp_path)]
    dpytest_backend.make_message("", w.alice, w.channel, attachments=attachments)
    await dpytest.run_all_events()
    replies = []
    while not dpytest.sent_queue.empty():
        replies.append(await dpytest.sent_queue.get())
    assert len(await interpreter.list_user_files(w.alice.id)) == 5
    told = "\n".join(message.content for message in replies)
    assert "part5.csv" in told and "part6.csv" in told and "Not stored" in told, told


@pytest.mark.parametrize("name, options", [
    ("run", {"code": "print('ran')", "timeout": "ten"}),  # a string where an integer is declared
    ("run", {"code": "print('ran')", "files": 5}),
    ("run", {"code": "print('ran')", "timeout": True}),
    ("run", {"code": ["print('ran')"]}),
    ("upload", {}),  # a required option missing
    ("files", {"subcommand": "delete"}),
    ("analyse", {"code": "print('ran')"}),  # a command this bot does not have (any more)
])
async def test_options_from_an_older_command_definition_get_a_clear_answer(discord_world, name, options):
    """Discord checks options against the definition the member's app holds; one loaded before
    an update can send a missing option, another type, or a removed command. discord.py passes
    them on as they came: the member is told to reload, privately, and nothing runs."""
    from bot.client import STALE_COMMAND

    w = discord_world
    subcommand = options.pop("subcommand", None)
    reply = await w.harness.slash(name, w.alice, subcommand=subcommand, **options)
    assert reply.callback.ephemeral and reply.callback.content == STALE_COMMAND
    assert not any("ran" in s.content for s in reply.sent)
    assert await (await interpreter.get_engine()).recent_runs(10) == []


async def test_code_that_prints_backtick_fences_runs_whole(discord_world):
    """Only text that is not Python as it stands is searched for a ``` block: a fence inside
    a string literal is part of the code (before, /run ran the piece between the fences)."""
    w = discord_world
    code = "print('```' + 'py'); print('fenced ```')"
    reply = await w.harness.slash("run", w.alice, code=code)
    assert "✅" in reply.content, reply.content
    assert "```\u200bpy\nfenced ```" not in reply.content  # our escaping shows the output, not a new block
    assert "py\nfenced" in reply.content.replace("`\u200b", "`")

    target = w.harness.message_payload(w.bob, 'banner = "```"\nprint(banner * 2)')
    menu = await w.harness.message_menu("Run code", w.alice, target)
    assert "``````" in menu.content.replace("`\u200b", "`") and "✅" in menu.content, menu.content


async def test_files_past_the_collection_bounds_are_named_not_dropped(discord_world):
    """A file written deeper than the collector searches, or past its entry bound, is not
    returned; the reply says where it stopped (before: nothing at all was said)."""
    w = discord_world
    deep = ("import os\npath = os.path.join(*['level'] * 12)\nos.makedirs(path)\n"
            "open(os.path.join(path, 'result.csv'), 'w').write('a')\nopen('top.csv', 'w').write('b')")
    reply = await w.harness.slash("run", w.alice, code=deep)
    assert "top.csv" in reply.final.files
    assert "Not attached" in reply.content and "folders deep: not searched" in reply.content, reply.content

    again = await w.harness.slash("run", w.alice, code="import os\nfor i in range(6000): open(f'{i}.txt', 'w').close()")
    assert "the rest was not searched" in again.content, again.content


async def test_a_code_py_written_by_the_run_does_not_stand_in_for_the_code(discord_world):
    """Long code comes whole as code.py, which the buttons read after a restart; a run that
    writes its own code.py got that name first, so Show code and Run again used the file
    the program wrote."""
    w = discord_world
    code = "\n".join(f"x{i} = {i}" for i in range(10)) + "\nopen('code.py', 'w').write('print(\"not what ran\")')"
    reply = await w.harness.slash("run", w.alice, code=code)
    files = reply.final.files
    assert files["code.py"].decode() == code and files["code_2.py"] == b'print("not what ran")'

    w.bot.get_cog("Run").recent.clear()  # as after a restart: the code is read back from the message
    shown = await w.harness.click(reply, "Show code", w.alice)
    assert shown.callback.content == code_block(code, "py")


async def test_run_code_on_a_long_result_runs_the_whole_code(discord_world):
    """Right-click one of the bot's results -> Run code: its first block is a preview of the
    first lines; before, that preview (ending in a comment) is what ran."""
    w = discord_world
    code = "\n".join(f"x{i} = {i}" for i in range(10)) + "\nprint('total', sum([x0, x5, x9]))"
    result = await w.harness.slash("run", w.alice, code=code)
    assert "whole code in code.py" in result.content
    again = await w.harness.message_menu("Run code", w.bob, result.message)
    assert "total 14" in again.content, again.content


async def test_an_upload_on_a_busy_bot_says_it_is_stored_while_its_preview_waits(discord_world, tmp_path):
    """The preview is a run and waits for a slot; the member is told at once that the file is
    stored (with its id) and where the preview stands, then the preview replaces that line."""
    from interpreter.engine import default_engine
    from tests.test_bot_run import occupy_every_slot
    from tests.waiting import until

    w = discord_world
    path = tmp_path / "sales.csv"
    path.write_text("region,units\nnorth,10\n")
    gate = default_engine().runner._admission()
    holders = await occupy_every_slot(gate.capacity)
    upload = w.harness.start_slash("upload", w.alice, attachments={"file": attachment_payload(path)})
    await until(lambda: any(s.kind == "edit_original" for s in upload.sent), "the member hears the file is stored", 30)
    [stored] = await interpreter.list_user_files(w.alice.id)
    assert stored["file_id"] in upload.content and "waiting for a free run slot (number 1 in line)" in upload.content
    for holder in holders:
        gate.release(holder)
    await upload.wait()
    assert "**Shape:** 1 rows × 2 columns" in upload.content and "waiting" not in upload.content


async def test_a_drop_on_a_busy_bot_answers_at_once_and_the_answer_gets_the_preview(discord_world, tmp_path):
    import discord
    import discord.ext.test.backend as dpytest_backend
    from interpreter.engine import default_engine
    from tests.test_bot_run import occupy_every_slot
    from tests.waiting import until

    w = discord_world
    path = tmp_path / "sales.csv"
    path.write_text("region,units\nnorth,10\n")
    gate = default_engine().runner._admission()
    holders = await occupy_every_slot(gate.capacity)
    attachment = discord.Attachment(data=attachment_payload(path), state=dpytest_backend.get_state())
    dpytest_backend.make_message("", w.alice, w.channel, attachments=[attachment])
    await until(lambda: not dpytest.sent_queue.empty(), "the member hears the file is stored", 30)
    answer = await dpytest.sent_queue.get()
    assert "waiting for a free run slot" in answer.content and "File id:" in answer.content
    for holder in holders:
        gate.release(holder)
    await dpytest.run_all_events()  # the listener finishes
    edited = await w.channel.fetch_message(answer.id)
    assert "**Shape:**" in edited.content and "waiting" not in edited.content
    assert dpytest.sent_queue.empty()  # the same message, edited: no second answer


async def test_session_lookups_with_workers_and_the_database_down(
        executor_workers, bot_settings, monkeypatch, tmp_path, stamped):
    """With execution workers, where a session lives is a lease in the database: /session
    status read it before answering, so a killed MongoDB outlasted Discord's deadline; and
    /run, which needs no database, failed for everyone because it could not look the session up."""
    from tests.fixtures_executor import WORKER_TOKEN

    worker, = await executor_workers(1)
    async with bot_on_mongo(bot_settings, monkeypatch, tmp_path, "walk_sessions", SERVER_SELECTION_MS, executor_urls=(worker.url,),
                            executor_token=Secret(WORKER_TOKEN), run_timeout=30, max_run_timeout=30) as w:
        stamps = stamped(w)
        started = await w.harness.slash("session", w.alice, subcommand="start")
        assert started.content.startswith("🧠 Session started."), started.content
        kill(w.mongo)
        dispatched = time.monotonic()
        status = await w.harness.start_slash("session", w.alice, subcommand="status").wait()
        assert acknowledged_after(status, dispatched, stamps) < ACKNOWLEDGED_WITHIN
        assert status.ephemeral and UNAVAILABLE_MESSAGE in said(status), said(status)

        for member in (w.alice, w.bob):  # in a session or not: the run goes ahead, and says how
            ran = await w.harness.slash("run", member, code="print('still running')")
            assert "✅" in ran.content and "still running" in ran.content, ran.content
            assert "Ran in a fresh sandbox: your session could not be looked up" in ran.content


@pytest.mark.parametrize("name, data", [
    ("europe.csv", "region;units;price\nnorth;10;2,5\nsouth;7;3,25\n".encode()),  # Excel in most of Europe
    ("unicode.csv", "region,units,price\nnorth,10,2.5\nsouth,7,3.25\n".encode("utf-16")),  # Excel's "Unicode text"
])
async def test_csv_as_excel_writes_it_loads_as_a_table(discord_world, tmp_path, name, data):
    """Semicolons with decimal commas, and UTF-16 with a byte-order mark, were read with
    pandas' defaults: one column named 'region;units;price', or a first column named 'ÿþregion'."""
    w = discord_world
    path = tmp_path / name
    path.write_bytes(data)
    reply = await w.harness.slash("upload", w.alice, attachments={"file": attachment_payload(path)})
    assert "2 rows × 3 columns" in reply.content, reply.content
    assert "region (" in reply.content and "price (float64)" in reply.content
    [stored] = await interpreter.list_user_files(w.alice.id)
    ran = await w.harness.slash("run", w.alice, code=f"print(load_file('{stored['file_id']}')['price'].sum())")
    assert "```\n5.75\n```" in ran.content, ran.content


def restart_forgets_open_boxes(world) -> None:
    """What a restart does to code boxes that are open in members' apps: discord.py no longer knows them."""
    world.bot._connection._view_store._modals.clear()
    world.bot.get_cog("Run").opened_boxes.clear()


async def test_a_code_box_sent_after_a_restart_still_runs(discord_world):
    w = discord_world
    box = await w.harness.slash("run", w.alice, timeout=7)
    with_options = await w.harness.slash("run", w.bob, packages="scipy")
    restart_forgets_open_boxes(w)

    ran = await w.harness.submit_modal(box, w.alice, {"Code": "```py\nprint('typed before the restart')\n```"})
    assert ran.content.startswith("✅ Finished") and "typed before the restart" in ran.content, ran.content
    assert await (await interpreter.get_engine()).recent_runs(1)

    told = await w.harness.submit_modal(with_options, w.bob, {"Code": "print('no packages')"})
    assert "this ran without the files and packages you gave" in told.content and "no packages" in told.content

    # Before a restart, discord.py's own modal answers, once.
    fresh = await w.harness.slash("run", w.alice)
    once = await w.harness.submit_modal(fresh, w.alice, {"Code": "print('once')"})
    assert [s.kind for s in once.sent].count("callback") == 1 and "once" in once.content


def test_status_shows_the_last_cleanup_as_a_discord_time():
    """/status showed it as the engine's ISO text ('2026-12-02T19:52:48.855000+00:00')."""
    from cogs._queue import QueueStats
    from cogs.admin import status_embed

    embed = status_embed({"venv_exists": True, "last_cleanup": "2026-12-02T19:52:48.855000+00:00"},
                         queue=QueueStats(0, 0, 0, 2), bot_uptime=1.0, latency=0.1)
    packages = next(field.value for field in embed.fields if field.name == "Packages")
    assert "**last cleanup:** <t:1796241168:R>" in packages, packages


async def test_links_in_member_text_outside_code_blocks_are_not_links(discord_world, tmp_path):
    """An error's one line and a file's name are shown outside code blocks, where Discord
    links any http:// and unfurls the site's preview card under the bot's message."""
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="raise SystemExit('Free nitro: https://discord-gift.example/claim')")
    status_line = reply.content.splitlines()[0]  # the code preview below it is a code block: not linked there
    assert "discord-gift.example/claim" in status_line and "https://" not in status_line, status_line
    path = tmp_path / "data.csv"
    path.write_text("a\n1\n")
    stored = await w.harness.slash("upload", w.alice, attachments={
        "file": attachment_payload(path, filename="see http:⁄⁄evil.example and https://evil.example.csv")})
    assert "Stored" in stored.content and "://" not in stored.content, stored.content
