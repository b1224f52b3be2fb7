"""/run, its modal, the "Run code" menu and result buttons, through real interactions.

Real bot, real cogs, real engine and sandbox; only Discord's network is recorded.
"""

from __future__ import annotations


from interpreter.engine import default_engine
from tests.discord_harness import admin_permissions
from tests.waiting import until

CHART_CODE = """
import seaborn as sns, pandas as pd, matplotlib.pyplot as plt
df = pd.DataFrame({"x": [1, 2, 3, 4], "y": [3, 1, 4, 1]})
sns.lineplot(data=df, x="x", y="y")
print("plotted", len(df))
"""


def no_pings(sent) -> None:
    mentions = sent.allowed_mentions
    assert mentions is not None, f"no allowed_mentions in {sent.kind}"
    assert mentions.get("parse") == [] and not mentions.get("users") and not mentions.get("roles"), mentions


async def test_run_prints_output_with_status_and_time(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="```py\nprint(6 * 7)\n```")
    assert reply.callback.payload["type"] == 5  # deferred at once ("thinking")
    assert not reply.ephemeral
    assert reply.content.startswith("✅ Finished in ")
    assert "```\n42\n```" in reply.content
    no_pings(reply.final)
    assert set(reply.buttons()) == {"Run again", "Edit & run", "Show code", "Delete"}


async def test_chart_arrives_as_png_attachment(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code=CHART_CODE)
    assert "plotted 4" in reply.content, reply.content
    pngs = {name: data for name, data in reply.final.files.items() if name.endswith(".png")}
    assert pngs, f"no PNG attached: {list(reply.final.files)}"
    assert all(data.startswith(b"\x89PNG") for data in pngs.values())
    assert [a["filename"] for a in reply.message["attachments"]] == list(reply.final.files)


async def test_long_output_becomes_output_txt(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="for i in range(3000): print('row', i)")
    assert len(reply.content) <= 2000
    assert "full output in output.txt" in reply.content
    text = reply.final.files["output.txt"].decode()
    assert text.startswith("row 0\n") and "row 2999" in text


async def test_everyone_in_output_does_not_ping(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="print('@everyone @here <@&123> ``` escaped?')")
    assert "@everyone" in reply.content
    assert reply.content.count("```") == 4  # the code preview's block and the output's: none escaped
    for sent in reply.sent:
        if sent.kind != "callback":
            no_pings(sent)


async def test_user_error_is_shown_briefly(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="1/0")
    assert reply.content.startswith("❌")
    assert "ZeroDivisionError" in reply.content


async def test_run_without_code_opens_the_modal_and_runs_it(discord_world):
    w = discord_world
    opened = await w.harness.slash("run", w.alice, timeout=30)
    assert opened.callback.payload["type"] == 9
    submitted = await w.harness.submit_modal(opened, w.alice, {"Code": "```python\nprint('from the modal')\n```"})
    assert "from the modal" in submitted.content
    assert submitted.content.startswith("✅")


async def test_timeout_option_is_bounded_by_the_configured_maximum(discord_world):
    w = discord_world
    run = w.bot.tree.get_command("run")
    assert run.get_parameter("timeout").max_value == w.bot.settings.max_run_timeout


async def test_run_code_message_menu_names_whose_code_ran(discord_world):
    w = discord_world
    target = w.harness.message_payload(w.bob, "try this:\n```py\nprint('bob says hi')\n```")
    reply = await w.harness.message_menu("Run code", w.alice, target)
    assert "bob says hi" in reply.content
    assert f"<@{w.bob.id}>" in reply.content and f"<@{w.alice.id}>" in reply.content
    no_pings(reply.final)


async def test_buttons_show_code_rerun_and_delete(discord_world):
    w = discord_world
    reply = await w.harness.slash("run", w.alice, code="print('again')")

    shown = await w.harness.click(reply, "Show code", w.bob)
    assert shown.callback.ephemeral and "print('again')" in shown.callback.content

    refused = await w.harness.click(reply, "Run again", w.bob)
    assert refused.callback.ephemeral and "Only the member who ran this" in refused.callback.content

    rerun = await w.harness.click(reply, "Run again", w.alice)
    assert "again" in rerun.content and rerun.message_id != reply.message_id

    denied = await w.harness.click(reply, "Delete", w.bob)
    assert denied.callback.ephemeral and reply.message_id not in w.harness.recorder.deleted

    await w.harness.click(reply, "Delete", w.alice)
    assert reply.message_id in w.harness.recorder.deleted

    by_admin = await w.harness.click(rerun, "Delete", w.carol, permissions=admin_permissions())
    assert rerun.message_id in w.harness.recorder.deleted and by_admin.callback.payload["type"] == 6


async def test_files_option_autocompletes_own_files_only(discord_world):
    import interpreter

    w = discord_world
    mine = await interpreter.upload_file(w.alice.id, b"a,b\n1,2\n", "mine.csv")
    await interpreter.upload_file(w.bob.id, b"a,b\n1,2\n", "bobs.csv")
    choices = await w.harness.autocomplete("run", w.alice, "files", files="mi")
    assert [c["value"] for c in choices] == [mine["file_id"]]
    # completes the last item of a comma list
    second = await interpreter.upload_file(w.alice.id, b"x\n1\n", "second.csv")
    choices = await w.harness.autocomplete("run", w.alice, "files", files=f"{mine['file_id']},sec")
    assert [c["value"] for c in choices] == [f"{mine['file_id']},{second['file_id']}"]

    reply = await w.harness.slash("run", w.alice, files=mine["file_id"],
                                  code=f"df = load_file('{mine['file_id']}'); print(df.shape)")
    assert "(1, 2)" in reply.content, reply.content


async def test_packages_option_autocompletes_the_approved_list(discord_world):
    w = discord_world
    choices = await w.harness.autocomplete("run", w.alice, "packages", packages="stat")
    assert [c["value"] for c in choices] == ["statsmodels"]
    assert choices[0]["name"] == "statsmodels · data science"
    # the last item of a comma list; what is installed says so; unapproved names never appear
    choices = await w.harness.autocomplete("run", w.alice, "packages", packages="statsmodels, sea")
    assert [(c["name"], c["value"]) for c in choices] == [("seaborn · visualization · installed", "statsmodels,seaborn")]
    assert await w.harness.autocomplete("run", w.alice, "packages", packages="requests") == []


async def occupy_every_slot(capacity: int) -> list:
    """Other members' runs holding every slot of the engine's queue (the one queue)."""
    gate = default_engine().runner._admission()
    return [await gate.acquire(light=True, member=10_000 + i) for i in range(capacity)]


async def test_queue_position_is_told_and_the_run_starts_later(discord_world):
    w = discord_world
    gate = default_engine().runner._admission()
    holders = await occupy_every_slot(gate.capacity)
    queued = w.harness.start_slash("run", w.alice, code="print('my turn')")
    await until(lambda: any(s.kind == "edit_original" for s in queued.sent), "the queue position is told")
    assert "number 1 in line" in queued.content and not queued.ephemeral
    for holder in holders:
        gate.release(holder)
    await queued.wait()
    contents = [s.content for s in queued.sent if s.kind == "edit_original"]
    assert any("has started" in c for c in contents)
    assert "my turn" in queued.content


async def test_refusals_under_load_are_ephemeral(discord_world):
    w = discord_world
    gate = default_engine().runner._admission()
    w.bot.scheduler.per_member_queued = 1
    running = w.bot.scheduler.submit(w.alice.id)  # alice already has a run going
    holders = await occupy_every_slot(gate.capacity)
    waiting = w.harness.start_slash("run", w.alice, code="print(1)")
    await until(lambda: any(s.kind == "edit_original" for s in waiting.sent), "the waiting run is told its place")

    refused = await w.harness.slash("run", w.alice, code="print(2)")
    assert refused.callback.payload["type"] == 4 and refused.ephemeral
    assert "limit is 2" in refused.callback.content

    w.bot.scheduler.max_waiting = 0
    busy = await w.harness.slash("run", w.bob, code="print(3)")
    assert busy.ephemeral and "busy" in busy.callback.content
    running.release()
    for holder in holders:
        gate.release(holder)
    await waiting.wait()
    assert waiting.content.startswith("✅")


async def test_cooldown_refuses_quick_repeats(discord_world):
    w = discord_world
    w.bot.scheduler.cooldown_seconds = 3600
    first = await w.harness.slash("run", w.alice, code="print('first')")
    assert "first" in first.content
    second = await w.harness.slash("run", w.alice, code="print('second')")
    assert second.ephemeral and "Slow down" in second.callback.content


async def test_invisible_characters_never_reach_discord(discord_world):
    """Issue 12: fillers, blank braille, the grapheme joiner and the other characters that draw
    nothing, printed by a run and put in a generated file's name, are gone from what is sent."""
    w = discord_world
    invisible = "\u3164\u115f\u2800\u034f\u200b\ufe0f\U000e0041\u2066\u00ad"
    code = (f"s = {invisible!r}\nprint('a' + s + 'b')\nopen('re' + s + 'port.csv', 'w').write('x,y\\n1,2\\n')\n"
            "raise ValueError('bad' + s + 'value')")
    reply = await w.harness.slash("run", w.alice, code=code)
    names = list(reply.final.files) + [a["filename"] for a in reply.message["attachments"]]
    assert any(name.startswith("re") and name.endswith("port.csv") for name in names), names
    for ch in invisible:
        assert ch not in reply.content, (hex(ord(ch)), reply.content)
        assert not any(ch in name for name in names), (hex(ord(ch)), names)
    assert "ValueError: bad" in reply.content and "value" in reply.content, reply.content
