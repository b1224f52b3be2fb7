"""The /ask model loop without Discord (interpreter/assistant.py): the real `openai` SDK
against the scripted OpenAI-compatible server on loopback, runs in the real sandbox
through the engine (`interpreter.run_code`), as the bot's cog would run them."""

from __future__ import annotations

import pytest

from config.settings import Secret
from interpreter.assistant import (
    Assistant,
    AskOutcome,
    Conversation,
    RunNotStarted,
    tool_result_text,
    CodeRun,
)
from tests.openai_script import answer, completion, garbage, hang, tool_call

MEMBER = 424242424242424242


@pytest.fixture
def assistant(engine, model):
    settings = engine.settings.replace(openai_base_url=model.url, openai_api_key=Secret("sk-unit-test-key-0000"),
                                       ask_max_steps=3)
    made = Assistant(settings)
    yield made


async def run_in_sandbox(code: str, packages: tuple[str, ...]):
    import interpreter

    return await interpreter.run_code(code, user_id=MEMBER, install_packages=list(packages) or None)


async def ask(assistant, question="q?", conversation=None, run_code=run_in_sandbox):
    conversation = conversation or Conversation(MEMBER)
    return await assistant.ask(conversation, question, system="You are a test.", run_code=run_code), conversation


async def test_a_stalled_endpoint_ends_at_the_question_time_limit(engine, model):
    settings = engine.settings.replace(openai_base_url=model.url, ask_timeout_seconds=1)  # below the setting's floor: a test
    model.script = [hang()]
    reply, conversation = await ask(Assistant(settings))
    assert reply.outcome is AskOutcome.TIMEOUT and reply.steps == 1
    # The history stays valid for a follow-up: ends with a note, no tool call left open.
    assert conversation.messages[-1] == {"role": "assistant", "content": "(No answer: timeout.)"}


async def test_several_calls_in_one_reply_each_run_and_bad_arguments_are_explained(assistant, model):
    call_one, call_two = tool_call("print(1)"), tool_call("print(2)")
    both = completion({"content": None, "tool_calls": call_one["choices"][0]["message"]["tool_calls"]
                       + call_two["choices"][0]["message"]["tool_calls"]}, "tool_calls")
    model.script = [both, tool_call("", raw_arguments="{not json"), answer("done")]
    reply, conversation = await ask(assistant)
    assert reply.outcome is AskOutcome.ANSWERED and reply.text == "done"
    assert [run.output for run in reply.runs] == ["1\n", "2\n"]
    tools = [m["content"] for m in model.received[1].messages if m["role"] == "tool"]
    assert len(tools) == 2 and "1\n" in tools[0] and "2\n" in tools[1]
    assert "not valid JSON" in model.received[2].last_tool_result


async def test_a_run_that_may_not_start_stops_the_question_and_leaves_a_valid_history(assistant, model):
    async def refuse(code, packages):
        raise RunNotStarted("You've used your 3 runs for this hour")

    model.script = [tool_call("print(1)")]
    reply, conversation = await ask(assistant, run_code=refuse)
    assert reply.outcome is AskOutcome.RUN_REFUSED and "3 runs for this hour" in reply.detail
    call_ids = [c["id"] for m in conversation.messages if m.get("tool_calls") for c in m["tool_calls"]]
    answered = [m["tool_call_id"] for m in conversation.messages if m["role"] == "tool"]
    assert call_ids == answered

    model.script = [answer("follow-up works")]
    reply, _ = await ask(assistant, "again?", conversation)
    assert reply.text == "follow-up works"


@pytest.mark.parametrize("body", [
    {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []},
    completion({"content": ""}),
    completion({"content": "   "}),
])
async def test_empty_or_choiceless_replies_are_garbage(assistant, model, body):
    model.script = [body]
    reply, _ = await ask(assistant)
    assert reply.outcome is AskOutcome.GARBAGE and reply.steps == 1


async def test_huge_output_reaches_the_model_bounded_with_its_start_and_end(assistant, model):
    model.script = [tool_call("for i in range(8000): print('row', i)"), answer("ok")]
    await ask(assistant)
    seen = model.received[1].last_tool_result
    assert len(seen) < 5000
    assert "row 0\n" in seen and "row 7999" in seen and "characters cut" in seen


def test_errors_keep_their_end():
    run = CodeRun(step=1, code="", success=False, output="", error="x" * 10_000 + "\nKeyError: 'Sales'",
                  exit_cause="exception")
    text = tool_result_text(run)
    assert text.endswith("KeyError: 'Sales'") and len(text) < 3000


def test_history_drops_the_oldest_turns_first_and_keeps_the_latest():
    conversation = Conversation(MEMBER)
    for turn in range(10):
        conversation.messages += [{"role": "user", "content": f"question {turn}"},
                                  {"role": "assistant", "content": "x" * 10_000}]
    conversation.trim(30_000)
    questions = [m["content"] for m in conversation.messages if m["role"] == "user"]
    assert questions == ["question 8", "question 9"]
    conversation.messages.append({"role": "user", "content": "y" * 50_000})
    conversation.trim(30_000)
    assert [m["content"][:1] for m in conversation.messages] == ["y"]


async def test_a_flood_of_tool_calls_runs_only_within_the_limits(assistant, model):
    calls = [tool_call(f"print({n})")["choices"][0]["message"]["tool_calls"][0] for n in range(50)]
    model.script = [completion({"content": None, "tool_calls": calls}, "tool_calls"), answer("x" * 100_000)]
    reply, conversation = await ask(assistant)
    assert len(reply.runs) <= assistant.settings.ask_max_steps
    assert len(reply.text) == 20_000  # an endpoint ignoring max_tokens cannot flood the reply
    stored_calls = [c for m in conversation.messages if m.get("tool_calls") for c in m["tool_calls"]]
    answered = [m for m in conversation.messages if m["role"] == "tool"]
    assert len(stored_calls) == len(answered) == 5


@pytest.mark.parametrize("reply", [
    garbage("<html>502 Bad Gateway</html>", content_type="text/html"),
    garbage("{\"choices\": \"not a list\"}"),
    garbage("not json at all"),
])
async def test_replies_that_are_not_chat_completions_end_clearly(assistant, model, reply):
    model.script = [reply]
    answered, _ = await ask(assistant)
    assert answered.outcome in (AskOutcome.GARBAGE, AskOutcome.ENDPOINT_ERROR) and answered.steps == 1


async def test_tool_arguments_sent_as_an_object_still_run(assistant, model):
    call = tool_call("")
    call["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = {"code": "print('object args')"}
    model.script = [call, answer("ok")]
    reply, _ = await ask(assistant)
    assert [run.output for run in reply.runs] == ["object args\n"]
