"""Every data format into the one conversation schema; every malformed row names its file and row."""

import json

import pytest

from xtune.dataset.dataset_info import DatasetSpec
from xtune.dataset.formats import convert_row, convert_rows, fill_placeholders
from xtune.errors import DataError

SOURCE = "/data/train.json"

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {"name": "get_time", "description": "Local time.", "parameters": {"type": "object", "properties": {}}}


def spec(data_format: str, columns: dict | None = None, tags: dict | None = None) -> DatasetSpec:
    return DatasetSpec("test", SOURCE, data_format, columns or {}, tags or {})


def row(n: int = 7, source: str = SOURCE, **columns) -> dict:
    return {**columns, "_source": source, "_row": n}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str, calls: list | None = None) -> dict:
    message = {"role": "assistant", "content": text}
    if calls is not None:
        message["tool_calls"] = [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]
    return message


def human(text: str) -> dict:
    return {"from": "human", "value": text}


def gpt(text: str) -> dict:
    return {"from": "gpt", "value": text}


def call(name: str, **arguments) -> dict:
    return {"from": "function_call", "value": json.dumps({"name": name, "arguments": arguments})}


def observation(text: str) -> dict:
    return {"from": "observation", "value": text}


def expect_error(raw: dict, data_format: str, *fragments: str, **spec_kwargs) -> str:
    with pytest.raises(DataError) as info:
        convert_row(raw, spec(data_format, **spec_kwargs))
    message = str(info.value)
    where = f"{raw['_source']}, {'line' if raw['_source'].endswith('.jsonl') else 'row'} {raw['_row']}: "
    assert message.startswith(where), message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------- alpaca


def test_alpaca_joins_instruction_and_input():
    raw = row(instruction="Translate to French.", input="Good morning", output="Bonjour")
    assert convert_row(raw, spec("alpaca")) == {
        "messages": [user("Translate to French.\nGood morning"), assistant("Bonjour")],
        "tools": None,
    }


def test_alpaca_without_input_uses_instruction_alone():
    raw = row(instruction="Name a prime.", input="", output="7")
    assert convert_row(raw, spec("alpaca"))["messages"] == [user("Name a prime."), assistant("7")]


def test_alpaca_system_and_history_come_first():
    raw = row(
        instruction="And times three?",
        input="",
        output="6",
        system="You are a calculator.",
        history=[["One plus one?", "2"]],
    )
    assert convert_row(raw, spec("alpaca"))["messages"] == [
        {"role": "system", "content": "You are a calculator."},
        user("One plus one?"),
        assistant("2"),
        user("And times three?"),
        assistant("6"),
    ]


def test_alpaca_column_mapping():
    raw = row(prompt="Say hi.", response="Hi!")
    sample = convert_row(raw, spec("alpaca", columns={"instruction": "prompt", "output": "response"}))
    assert sample["messages"] == [user("Say hi."), assistant("Hi!")]


# ----------------------------------------------------------------------------- sharegpt


def test_sharegpt_function_call_observation_and_tools():
    raw = row(
        conversations=[
            human("Weather in Paris?"),
            call("get_weather", city="Paris"),
            observation('{"temp": 21}'),
            gpt("It is 21 degrees."),
        ],
        system="Use tools when needed.",
        tools=json.dumps([WEATHER]),
    )
    assert convert_row(raw, spec("sharegpt")) == {
        "messages": [
            {"role": "system", "content": "Use tools when needed."},
            user("Weather in Paris?"),
            assistant("", [("get_weather", {"city": "Paris"})]),
            {"role": "tool", "content": '{"temp": 21}'},
            assistant("It is 21 degrees."),
        ],
        "tools": [{"type": "function", "function": WEATHER}],
    }


def test_sharegpt_parallel_calls_merge_and_string_arguments_parse():
    parallel = {"name": "get_time", "arguments": json.dumps({"city": "Oslo"})}  # arguments as JSON text
    raw = row(
        conversations=[
            {"from": "system", "value": "Be brief."},
            {"from": "user", "value": "Weather and time in Oslo?"},  # user/assistant work as well
            call("get_weather", city="Oslo"),
            {"from": "function_call", "value": json.dumps(parallel)},
            observation("cold"),
            observation("9:00"),
            {"from": "assistant", "value": "Cold, and it is nine."},
        ],
        tools=[{"type": "function", "function": WEATHER}, TIME],  # a list, wrapped or bare
    )
    sample = convert_row(raw, spec("sharegpt"))
    assert sample["messages"] == [
        {"role": "system", "content": "Be brief."},
        user("Weather and time in Oslo?"),
        assistant("", [("get_weather", {"city": "Oslo"}), ("get_time", {"city": "Oslo"})]),
        {"role": "tool", "content": "cold"},
        {"role": "tool", "content": "9:00"},
        assistant("Cold, and it is nine."),
    ]
    assert sample["tools"] == [
        {"type": "function", "function": WEATHER},
        {"type": "function", "function": TIME},
    ]


def test_sharegpt_function_call_list_and_reply_then_call():
    calls = [{"name": "get_weather", "arguments": {"city": "Rome"}}, {"name": "get_time", "arguments": {}}]
    raw = row(
        conversations=[
            human("Rome?"),
            gpt("Let me check."),
            {"from": "function_call", "value": json.dumps(calls)},
            observation("sunny"),
            observation("noon"),
            gpt("Sunny at noon."),
        ]
    )
    messages = convert_row(raw, spec("sharegpt"))["messages"]
    assert messages[1] == assistant("Let me check.", [("get_weather", {"city": "Rome"}), ("get_time", {})])
    assert len(messages) == 5


def test_sharegpt_tags():
    tags = {"role_tag": "role", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}
    raw = row(dialog=[{"role": "me", "text": "Hi"}, {"role": "bot", "text": "Hello"}])
    sample = convert_row(raw, spec("sharegpt", columns={"messages": "dialog"}, tags=tags))
    assert sample["messages"] == [user("Hi"), assistant("Hello")]
    # A tag that is set replaces the default names of its role.
    expect_error(
        row(dialog=[{"role": "human", "text": "Hi"}]),
        "sharegpt",
        "unknown role 'human'",
        columns={"messages": "dialog"},
        tags=tags,
    )


def test_sharegpt_system_column_and_turn_must_agree():
    raw = row(conversations=[{"from": "system", "value": "A"}, human("q"), gpt("a")], system="B")
    expect_error(raw, "sharegpt", "column 'system' and a system turn")
    same = row(conversations=[{"from": "system", "value": "A"}, human("q"), gpt("a")], system="A")
    assert convert_row(same, spec("sharegpt"))["messages"][0] == {"role": "system", "content": "A"}


# ----------------------------------------------------------------------------- openai


def test_openai_tool_calls_tool_role_and_tools():
    raw = row(
        messages=[
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
            {"role": "assistant", "content": "It is 21C."},
        ],
        tools=[{"type": "function", "function": WEATHER}],
    )
    assert convert_row(raw, spec("openai")) == {
        "messages": [
            {"role": "system", "content": "Use tools."},
            user("Weather in Paris?"),
            assistant("", [("get_weather", {"city": "Paris"})]),
            {"role": "tool", "content": "21C"},
            assistant("It is 21C."),
        ],
        "tools": [{"type": "function", "function": WEATHER}],
    }


# ----------------------------------------------------------------------------- text, preference


def test_text_and_column_mapping():
    assert convert_row(row(text="Once upon a time."), spec("text")) == {"text": "Once upon a time."}
    assert convert_row(row(body="Hi."), spec("text", columns={"text": "body"})) == {"text": "Hi."}


def test_preference_alpaca_style():
    raw = row(instruction="2+2?", input="", chosen="4", rejected="5", system="Be exact.")
    assert convert_row(raw, spec("preference")) == {
        "messages": [{"role": "system", "content": "Be exact."}, user("2+2?")],
        "chosen": assistant("4"),
        "rejected": assistant("5"),
        "tools": None,
    }


def test_preference_sharegpt_style():
    raw = row(
        conversations=[human("Hi"), gpt("Hello"), human("Weather?")],
        chosen=call("get_weather", city="Paris") | {"from": "function_call"},
        rejected=gpt("No idea."),
        tools=json.dumps([WEATHER]),
    )
    assert convert_row(raw, spec("preference")) == {
        "messages": [user("Hi"), assistant("Hello"), user("Weather?")],
        "chosen": assistant("", [("get_weather", {"city": "Paris"})]),
        "rejected": assistant("No idea."),
        "tools": [{"type": "function", "function": WEATHER}],
    }


def test_preference_openai_style():
    raw = row(
        messages=[{"role": "user", "content": "Hi"}],
        chosen=[{"role": "assistant", "content": "Hello!"}],
        rejected={"role": "assistant", "content": "Go away."},
    )
    sample = convert_row(raw, spec("preference"))
    assert sample["messages"] == [user("Hi")]
    assert (sample["chosen"], sample["rejected"]) == (assistant("Hello!"), assistant("Go away."))


# ----------------------------------------------------------------------------- helpers


def test_fill_placeholders_everywhere_and_leaves_unknown_names():
    sample = {
        "messages": [user("Who are you?"), assistant("I am {{name}}, made by {{ author }}; {{other}}.")],
        "tools": None,
    }
    filled = fill_placeholders(sample, {"name": "Tiny", "author": "Us"})
    assert filled["messages"][1]["content"] == "I am Tiny, made by Us; {{other}}."
    assert sample["messages"][1]["content"].startswith("I am {{name}}")  # the input is not changed
    pair = {"messages": [user("{{name}}?")], "chosen": assistant("{{name}}"), "rejected": assistant("x")}
    assert fill_placeholders(pair, {"name": "T"})["chosen"]["content"] == "T"
    assert fill_placeholders({"text": "by {{author}}"}, {"author": "Us"}) == {"text": "by Us"}


def test_convert_rows_skips_bad_rows_and_keeps_messages():
    rows = [row(1, instruction="a", output="b"), row(2, instruction="a"), row(3, instruction="c", output="d")]
    samples, skipped = convert_rows(rows, spec("alpaca"), skip_bad_rows=True)
    assert [s["messages"][0]["content"] for s in samples] == ["a", "c"]
    assert len(skipped) == 1 and skipped[0].startswith(f"{SOURCE}, row 2: missing column 'output'")
    with pytest.raises(DataError, match="row 2"):
        convert_rows(rows, spec("alpaca"), skip_bad_rows=False)


# ----------------------------------------------------------------------------- bad rows


def test_missing_required_column_suggests_the_format():
    expect_error(row(input="x", output="y"), "alpaca", "missing column 'instruction'", "columns=")
    expect_error(row(conversations=[human("q"), gpt("a")]), "alpaca", "is this sharegpt data?")
    expect_error(row(messages=[]), "sharegpt", "empty conversation")
    expect_error(row(instruction="q", output="a"), "sharegpt", "missing column 'conversations'", "alpaca")
    expect_error(row(content="x"), "text", "missing column 'text'")


def test_jsonl_rows_are_named_by_line():
    raw = row(12, source="/data/chat.jsonl", instruction="q")
    assert "/data/chat.jsonl, line 12: missing column 'output'" in expect_error(raw, "alpaca")


def test_non_string_content():
    expect_error(row(instruction="q", output=42), "alpaca", "column 'output' must be a string, got int")
    expect_error(row(conversations=[human("q"), gpt(["a"])]), "sharegpt", "turn 2 (gpt) content must be a string")
    parts = [{"type": "text", "text": "hi"}]
    expect_error(row(messages=[{"role": "user", "content": parts}]), "openai", "turn 1 (user) content must be")


def test_unknown_role():
    expect_error(row(conversations=[{"from": "bot", "value": "a"}]), "sharegpt", "turn 1 has unknown role 'bot'")
    expect_error(row(messages=[{"role": "function", "content": "a"}]), "openai", "unknown role 'function'")


def test_missing_role_key_points_to_openai_format():
    raw = row(conversations=[{"role": "user", "content": "q"}])
    expect_error(raw, "sharegpt", "turn 1 has no 'from' key", "data_format='openai'")


def test_assistant_first():
    expect_error(row(conversations=[gpt("a"), human("q"), gpt("b")]), "sharegpt", "turn 1 is an assistant turn")


def test_two_users_in_a_row():
    raw = row(conversations=[human("q1"), human("q2"), gpt("a")])
    expect_error(raw, "sharegpt", "turn 2 is a second user turn in a row")


def test_two_assistants_in_a_row():
    raw = row(messages=[user("q"), assistant("a"), assistant("b")])
    expect_error(raw, "openai", "turn 3 is a second assistant turn in a row")


def test_tool_result_without_tool_call():
    raw = row(conversations=[human("q"), observation("21"), gpt("a")])
    expect_error(raw, "sharegpt", "turn 2 is a tool result right after a user turn")
    too_many = row(conversations=[human("q"), call("get_time"), observation("1"), observation("2"), gpt("a")])
    expect_error(too_many, "sharegpt", "turn 4 is one tool result more than the tool calls made")


def test_role_orders_llama_factory_tolerates_are_accepted_with_its_meaning():
    # LLaMA-Factory checks only that user/observation and assistant/function turns alternate.
    # glaive_toolcall_zh_demo rows 198 and 294: an observation right after a gpt reply.
    after_reply = convert_row(row(conversations=[human("q"), gpt("a"), observation("21"), gpt("b")]), spec("sharegpt"))
    assert [m["role"] for m in after_reply["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert after_reply["messages"][2] == {"role": "tool", "content": "21"}
    user_after_call = convert_row(
        row(conversations=[human("q"), call("get_time"), human("again?"), gpt("a")]), spec("sharegpt")
    )
    assert [m["role"] for m in user_after_call["messages"]] == ["user", "assistant", "user", "assistant"]
    assert user_after_call["messages"][1]["tool_calls"][0]["function"]["name"] == "get_time"
    first = convert_row(row(conversations=[observation("ctx"), gpt("a")]), spec("sharegpt"))
    assert [m["role"] for m in first["messages"]] == ["tool", "assistant"]


def test_conversation_must_end_with_assistant():
    raw = row(conversations=[human("q"), gpt("a"), human("q2")])
    expect_error(raw, "sharegpt", "conversation ends with a user turn")
    tool_last = row(conversations=[human("q"), call("get_time"), observation("9")])
    expect_error(tool_last, "sharegpt", "conversation ends with a tool turn")


def test_empty_conversation_and_empty_turns():
    expect_error(row(conversations=[]), "sharegpt", "empty conversation")
    expect_error(row(messages=[{"role": "system", "content": "s"}]), "openai", "empty conversation (no user turn)")
    expect_error(row(conversations=[human("q"), gpt("  ")]), "sharegpt", "turn 2 (assistant) is empty")
    expect_error(row(instruction="q", output=""), "alpaca", "column 'output' is empty")


def test_system_turn_in_the_middle():
    raw = row(conversations=[human("q"), gpt("a"), {"from": "system", "value": "s"}, human("q"), gpt("a")])
    expect_error(raw, "sharegpt", "turn 3 is a system turn after the start")


def test_bad_function_call_json():
    bad = {"from": "function_call", "value": '{"name": "get_time", "arguments": '}
    expect_error(row(conversations=[human("q"), bad, gpt("a")]), "sharegpt", "turn 2 (function_call) is not valid JSON")
    bad_args = {"from": "function_call", "value": json.dumps({"name": "f", "arguments": "{city: Paris}"})}
    expect_error(row(conversations=[human("q"), bad_args]), "sharegpt", "arguments are not valid JSON")
    no_name = {"from": "function_call", "value": json.dumps({"arguments": {}})}
    expect_error(row(conversations=[human("q"), no_name]), "sharegpt", "has no function name")
    openai_bad = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"function": {"name": "f", "arguments": "["}}],
    }
    expect_error(row(messages=[user("q"), openai_bad]), "openai", "turn 2 tool call 1: arguments are not valid JSON")


def test_bad_tools_column():
    good_turns = [human("q"), gpt("a")]
    expect_error(row(conversations=good_turns, tools="[{"), "sharegpt", "column 'tools' is not valid JSON")
    expect_error(
        row(conversations=good_turns, tools=[{"description": "x"}]),
        "sharegpt",
        "tool 1 in 'tools' has no name",
    )


def test_bad_history():
    raw = row(instruction="q", output="a", history=[["only a question"]])
    expect_error(raw, "alpaca", "history item 1 is not a [query, answer] pair")


def test_preference_errors():
    ends_with_reply = row(conversations=[human("q"), gpt("a")], chosen=gpt("b"), rejected=gpt("c"))
    expect_error(ends_with_reply, "preference", "prompt ends with a assistant turn")
    expect_error(row(instruction="q", rejected="x"), "preference", "missing column 'chosen'")
    user_reply = row(conversations=[human("q")], chosen=human("b"), rejected=gpt("c"))
    expect_error(user_reply, "preference", "column 'chosen' is a user turn")
