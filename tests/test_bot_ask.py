"""/ask through discord.py's real dispatch, with the real engine and sandbox, against a
scripted OpenAI-compatible server on loopback (tests/openai_script.py): only Discord's
network and the model's words are scripted; the `openai` SDK, the queue, the sandbox
and the store are real.
"""

from __future__ import annotations

import asyncio
import logging

import sys

import discord
import pytest

from config.settings import Secret
from tests.discord_harness import admin_permissions, attachment_payload
from tests.fixtures_discord import start_bot
from tests.test_bot_help import fields_of
from tests.openai_script import answer, garbage, refusal, status, tool_call
from interpreter.engine import default_engine
from tests.test_bot_run import no_pings, occupy_every_slot

API_KEY = "sk-test-0123456789-very-secret-key"

SALES_CSV = "region,year,sales\nNorth,2023,100\nNorth,2024,180\nSouth,2023,120\nSouth,2024,130\n"

FAILING_CODE = """
df = load_file(FILE_ID)
growth = df.pivot(index="region", columns="year", values="Sales")  # wrong column name
print(growth)
"""

WORKING_CODE = """
import matplotlib.pyplot as plt
df = load_file(FILE_ID)
growth = df.pivot(index="region", columns="year", values="sales")
growth["growth"] = growth[2024] / growth[2023] - 1
print(growth["growth"].idxmax(), round(growth["growth"].max(), 2))
growth["growth"].plot.bar(title="Growth 2023-2024")
plt.savefig("growth.png")
"""


@pytest.fixture
async def ask_world(bot_settings, model, monkeypatch, tmp_path):
    import interpreter

    # The key is in the bot's environment too, as a real deployment has it: the sandbox must not see it.
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    settings = bot_settings.replace(openai_base_url=model.url, openai_api_key=Secret(API_KEY), ask_max_steps=4,
                                    ask_questions_per_day=5)
    world = await start_bot(settings, monkeypatch, tmp_path)
    yield world
    world.bot.expiry_sweep.cancel()
    await (await interpreter.get_engine()).close()


async def eventually(condition, seconds: float = 60.0) -> None:
    """Wait for `condition()` (the model answers over real loopback HTTP, so event-loop turns
    alone are not enough); fails after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


def privately_refused(reply, reason: str) -> bool:
    """Refused as /run refuses: at once and ephemeral when no database is needed to tell,
    else after the (public) deferral, with the reason to the member alone and the public
    "thinking" message removed."""
    if reply.callback.payload["type"] == 4:
        assert reply.ephemeral and reason in reply.callback.content, reply.callback.content
        return True
    [followup] = reply.followups
    assert followup.ephemeral and reason in followup.content, followup.content
    assert reply.message_id in reply.recorder.deleted
    return True


def everything_sent(world) -> str:
    """Every byte the bot sent to Discord: payloads and attached files."""
    parts = []
    for sent in world.harness.recorder.sent:
        parts.append(repr(sent.payload))
        parts.extend(data.decode("utf-8", "replace") for data in sent.files.values())
    return "\n".join(parts)


async def test_failed_run_is_fixed_and_the_answer_comes_with_chart_and_code(ask_world, model, tmp_path, monkeypatch):
    w = ask_world
    # Every progress step shows (the throttling is tested below). The bot's extension
    # loader made its own module object, so patch that one.
    monkeypatch.setattr(sys.modules["cogs.ask"], "EDIT_INTERVAL_SECONDS", 0.0)
    csv = tmp_path / "sales.csv"
    csv.write_text(SALES_CSV)
    upload = attachment_payload(csv)

    reply_to = {}

    def first(body):  # the file id is only known once the bot stored the attachment
        file_id = next(line.split("`")[1] for line in body["messages"][0]["content"].splitlines() if "sales.csv" in line)
        reply_to["file_id"] = file_id
        from aiohttp import web
        return web.json_response(tool_call(FAILING_CODE.replace("FILE_ID", repr(file_id))))

    def second(body):
        from aiohttp import web
        return web.json_response(tool_call(WORKING_CODE.replace("FILE_ID", repr(reply_to["file_id"]))))

    model.script = [first, second, answer("**North** grew fastest: sales rose 80% from 2023 to 2024.")]
    reply = await w.harness.slash("ask", w.alice, question="Which region grew fastest? Chart it @everyone",
                                  attachments={"file": upload})

    assert reply.callback.payload["type"] == 5 and not reply.ephemeral
    assert "**North** grew fastest" in reply.content, reply.content
    assert "2 runs (1 failed and fixed)" in reply.content
    pngs = [name for name, data in reply.final.files.items() if data.startswith(b"\x89PNG")]
    assert pngs == ["growth.png"], list(reply.final.files)
    for sent in reply.sent:
        if sent.kind != "callback":
            no_pings(sent)
    progress = [s.content.split("\n", 1)[1] for s in reply.sent if s.kind == "edit_original"][:-1]
    assert progress == ["🤔 Looking at your files…", "🤔 Thinking about your question…", "▶️ Running code (run 1)…",
                        "🔁 Run 1 failed; the model is fixing the code…", "🤔 Reading the result (step 2 of 4)…",
                        "▶️ Running code (run 2)…", "🤔 Reading the result (step 3 of 4)…"]

    # What the model saw: the file by name and shape, then the first run's error, then the second's output.
    system = model.received[0].messages[0]["content"]
    assert "sales.csv" in system and "4 rows × 3 columns" in system and "load_file" in system
    after_failure = model.received[1].last_tool_result
    assert "failed" in after_failure and "KeyError" in after_failure and "Sales" in after_failure
    after_success = model.received[2].last_tool_result
    assert "succeeded" in after_success and "North 0.8" in after_success and "growth.png" in after_success

    shown = await w.harness.click(reply, "Show code", w.bob)
    assert shown.callback.ephemeral
    assert "values=\"sales\"" in shown.callback.content and "plt.savefig" in shown.callback.content
    every_run = shown.callback.files["code.py"].decode()
    assert "run 1: failed" in every_run and 'values="Sales"' in every_run and "run 2: worked" in every_run


async def test_the_key_reaches_no_message_no_tool_result_and_no_run(ask_world, model, caplog):
    w = ask_world
    caplog.set_level(logging.DEBUG)
    probe = ("import os\nprint(sorted(os.environ.items()))\n"
             "print(open('/proc/self/environ','rb').read())\nprint(open('/proc/1/environ','rb').read())")
    model.script = [tool_call(probe), answer(f"Here is something odd: {API_KEY}")]
    reply = await w.harness.slash("ask", w.alice, question="what is in the environment?")

    assert model.received[0].headers.get("Authorization") == f"Bearer {API_KEY}"  # the key is used...
    tool_result = model.received[1].last_tool_result
    assert "succeeded" in tool_result
    for request in model.received:  # ...but never shown to the model
        assert API_KEY not in repr(request.body)
    assert API_KEY not in everything_sent(w)  # nor to Discord, even when the model repeats it
    assert "[hidden]" in reply.content
    assert API_KEY not in caplog.text


async def test_step_limit_stops_a_model_that_keeps_running_code(ask_world, model):
    w = ask_world
    model.then = tool_call("print('again')")  # never answers
    reply = await w.harness.slash("ask", w.alice, question="loop forever")

    steps = w.bot.settings.ask_max_steps
    assert len(model.received) == steps
    assert model.received[-1].body["tool_choice"] == "none"  # the last step asks for words
    assert all(r.body["tool_choice"] == "auto" for r in model.received[:-1])
    assert f"used all {steps} of its steps" in reply.content
    assert "3 runs" in reply.content  # one run per step before the last
    runs = await (await __import__("interpreter").get_engine()).recent_runs(20, user_id=w.alice.id)
    assert len(runs) == steps - 1


async def test_daily_budget_holds_and_is_counted_in_the_store(ask_world, model):
    import interpreter

    w = ask_world
    model.then = answer("42")
    for _ in range(w.bot.settings.ask_questions_per_day):
        reply = await w.harness.slash("ask", w.alice, question="the answer?")
        assert "42" in reply.content
    refused = await w.harness.slash("ask", w.alice, question="one more?")
    assert privately_refused(refused, "You've asked your 5 questions for today")
    assert len(model.received) == 5
    # Another member's budget is their own.
    assert "42" in (await w.harness.slash("ask", w.bob, question="mine?")).content

    # The count is in the store: a second engine on the same database (another process) sees it.
    from interpreter.budget import DailyBudget
    from interpreter.store.sqlite import SQLiteStore

    other = DailyBudget(SQLiteStore(w.bot.settings.sqlite_path), "ask", 5)
    assert not (await other.take(w.alice.id)).granted
    assert (await other.take(w.bob.id)).used == 2
    await (await interpreter.get_engine()).close()


async def test_endpoint_down_says_so_and_costs_nothing(ask_world, model):
    w = ask_world
    await model.close()  # nothing listens on the port any more
    reply = await w.harness.slash("ask", w.alice, question="anyone there?")
    assert "can't be reached" in reply.content
    # The question was given back, and /run still works.
    engine = await __import__("interpreter").get_engine()
    assert (await engine.ask_budget.take(w.alice.id)).used == 1
    assert "hello" in (await w.harness.slash("run", w.alice, code="print('hello')")).content


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (status(429, "rate_limit_exceeded"), "rate-limiting this bot right now (HTTP 429)"),
        (status(401, "invalid_api_key", f"Incorrect API key provided: {API_KEY}"), "refused the bot's credentials"),
        (status(404, "model_not_found"), "answered with an error (HTTP 404: the model name (OPENAI_MODEL)"),
        (status(400, "invalid_request_error"), "the model may not support tool calls"),
        (status(503), "answered with an error (HTTP 503)"),
        (garbage(), "a reply I can't use"),
        (refusal("I can't help with that."), "declined to answer"),
    ],
)
async def test_endpoint_errors_become_clear_messages(ask_world, model, reply, expected):
    w = ask_world
    model.script = [reply]
    answer_ = await w.harness.slash("ask", w.alice, question="hello?")
    assert expected in answer_.content, answer_.content
    assert API_KEY not in everything_sent(w)
    assert "Follow up" in answer_.buttons()
    # The session opened for the question ran nothing: no sandbox is kept for it.
    import interpreter
    assert await (await interpreter.get_executor()).list_sessions(w.alice.id) == []


async def test_follow_up_continues_the_conversation_in_a_session(ask_world, model):
    w = ask_world
    model.script = [tool_call("numbers = [3, 1, 4, 1, 5]\nprint(sum(numbers))"), answer("The sum is 14.")]
    first = await w.harness.slash("ask", w.alice, question="sum of 3 1 4 1 5?")
    assert "The sum is 14." in first.content and "🧠 session" in first.content

    refused = await w.harness.click(first, "Follow up", w.bob)
    assert refused.callback.ephemeral and "Only the member who asked" in refused.callback.content

    model.script = [tool_call("print(max(numbers))"), answer("The largest is 5.")]
    opened = await w.harness.click(first, "Follow up", w.alice)
    followed = await w.harness.submit_modal(opened, w.alice, {"Your question": "and the largest?"})
    assert "The largest is 5." in followed.content
    # The model saw the whole conversation, and the session kept `numbers` between runs.
    request = model.received[2]
    assert [m["role"] for m in request.messages][:5] == ["system", "user", "assistant", "tool", "assistant"]
    assert "succeeded" in model.received[3].last_tool_result and "5" in model.received[3].last_tool_result


async def test_off_without_key_or_url(discord_world):
    w = discord_world
    reply = await w.harness.slash("ask", w.alice, question="hello?")
    assert reply.ephemeral and "`/ask` is off on this bot" in reply.callback.content
    status = await w.harness.slash("status", w.alice, permissions=admin_permissions())
    assert fields_of(status)["/ask"].startswith("off (set OPENAI_API_KEY")


async def test_help_and_status_say_it_is_on_and_where_questions_go(ask_world, model):
    w = ask_world
    help_text = fields_of(await w.harness.slash("help", w.alice))["💬 Ask in words"]
    assert "`/ask question:" in help_text and "5 questions a day" in help_text and "up to 4 steps" in help_text
    status = fields_of(await w.harness.slash("status", w.alice, permissions=admin_permissions()))["/ask"]
    assert "**enabled:** yes" in status and "127.0.0.1:" in status and "**model:** gpt-4o-mini" in status
    assert API_KEY not in everything_sent(w)


class FakeInteraction:
    def __init__(self) -> None:
        self.edits: list[str] = []

    async def edit_original_response(self, *, content, allowed_mentions):
        assert allowed_mentions.to_dict() == discord.AllowedMentions.none().to_dict()
        self.edits.append(content)


async def test_progress_edits_are_throttled_and_the_latest_wins():
    from cogs.ask import ProgressEditor

    now = [100.0]
    interaction = FakeInteraction()
    editor = ProgressEditor(interaction, "❓ q", interval=0.05, clock=lambda: now[0])
    await editor.show("one")
    await editor.show("two")  # too soon: waits for the interval...
    await editor.show("three")  # ...and is replaced by a newer line before it is shown
    assert interaction.edits == ["❓ q\none"]
    now[0] += 0.05
    await editor._timer
    assert interaction.edits == ["❓ q\none", "❓ q\nthree"]

    await editor.show("four")  # too soon again; the answer arrives first
    editor.stop()
    assert editor._timer is None and interaction.edits[-1] == "❓ q\nthree"


async def test_the_models_runs_wait_their_turn_in_the_fair_queue(ask_world, model):
    w = ask_world
    gate = default_engine().runner._admission()
    holders = await occupy_every_slot(gate.capacity)  # other members' runs hold the engine's queue
    model.script = [tool_call("print('my turn')"), answer("Done: my turn came.")]
    asked = w.harness.start_slash("ask", w.alice, question="run something")
    # The session's sandbox waits its turn first (sessions are on in these tests).
    await eventually(lambda: "number 1 in line" in asked.content if asked.message_id else False)
    assert len(model.received) == 0
    for holder in holders:
        gate.release(holder)
    await asked.wait()
    assert "Done: my turn came." in asked.content
    assert "my turn" in model.received[1].last_tool_result


async def test_without_sessions_each_of_the_models_runs_waits_in_the_queue(bot_settings, model, monkeypatch, tmp_path):
    import interpreter

    settings = bot_settings.replace(openai_base_url=model.url, openai_api_key=Secret(API_KEY), max_sessions=0)
    w = await start_bot(settings, monkeypatch, tmp_path)
    try:
        gate = default_engine().runner._admission()
        holders = await occupy_every_slot(gate.capacity)
        model.script = [tool_call("x = 41\nprint('my turn')"), tool_call("print(x + 1)"), answer("It was not kept.")]
        asked = w.harness.start_slash("ask", w.alice, question="run something")
        await eventually(lambda: "number 1 in line" in asked.content if asked.message_id else False)
        assert len(model.received) == 1  # the model asked for a run, which waits in line
        for holder in holders:
            gate.release(holder)
        await asked.wait()
        assert "It was not kept." in asked.content and "session" not in asked.content
        assert "Each run starts fresh" in model.received[0].messages[0]["content"]
        assert "NameError" in model.received[2].last_tool_result  # no session: nothing persists
    finally:
        w.bot.expiry_sweep.cancel()
        await (await interpreter.get_engine()).close()


async def test_the_hourly_run_limit_stops_the_question_between_runs(bot_settings, model, monkeypatch, tmp_path):
    import interpreter

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    settings = bot_settings.replace(openai_base_url=model.url, openai_api_key=Secret(API_KEY),
                                    runs_per_member_per_hour=1)
    w = await start_bot(settings, monkeypatch, tmp_path)
    try:
        model.script = [tool_call("print(1)"), tool_call("print(2)")]
        reply = await w.harness.slash("ask", w.alice, question="two runs please")
        assert "⛔ The code could not run: ⏳ You've used your 1 run for this hour" in reply.content, reply.content
        assert len(model.received) == 2  # not asked again after the refusal
        assert len(await interpreter.recent_runs(10, user_id=w.alice.id)) == 1
        refused = await w.harness.slash("ask", w.alice, question="and now?")
        assert privately_refused(refused, "1 run for this hour")  # checked before any model call
        assert len(model.received) == 2
    finally:
        w.bot.expiry_sweep.cancel()
        await (await interpreter.get_engine()).close()


async def test_the_answer_is_posted_cleaned_and_without_pings(ask_world, model):
    w = ask_world
    model.script = [answer("@everyone <@&123> look\u202e: ``` not a fence")]
    reply = await w.harness.slash("ask", w.alice, question="ping them")
    assert "@everyone <@&123> look:" in reply.content and "\u202e" not in reply.content
    for sent in reply.sent:
        if sent.kind != "callback":
            no_pings(sent)


async def test_a_long_answer_is_cut_to_one_message_and_attached_whole(ask_world, model):
    w = ask_world
    words = "".join(f"Paragraph {n}: the numbers say something.\n" for n in range(200))
    model.script = [answer(words)]
    reply = await w.harness.slash("ask", w.alice, question="tell me everything")
    assert len(reply.content) <= 2000 and "the whole answer is in answer.md" in reply.content
    assert reply.final.files["answer.md"].decode() == words.strip()


async def test_the_cooldown_applies_to_a_question_not_to_each_of_its_runs(bot_settings, model, monkeypatch, tmp_path):
    import interpreter

    settings = bot_settings.replace(openai_base_url=model.url, openai_api_key=Secret(API_KEY),
                                    run_cooldown_seconds=3600.0)
    w = await start_bot(settings, monkeypatch, tmp_path)
    try:
        model.script = [tool_call("print(1)"), tool_call("print(2)"), tool_call("print(3)"), answer("three runs")]
        reply = await w.harness.slash("ask", w.alice, question="run three times")
        assert "three runs" in reply.content and "3 runs" in reply.content, reply.content
        model.script = [tool_call("print(4)")]
        again = await w.harness.slash("ask", w.alice, question="and again, at once")
        assert "could not run" in again.content and "Slow down" in again.content, again.content
    finally:
        w.bot.expiry_sweep.cancel()
        await (await interpreter.get_engine()).close()
