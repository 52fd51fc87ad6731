"""Tool calls parsed out of answers in the formats the built-in templates train."""

import json

from transformers import AutoTokenizer

from xtune.dataset.templates import set_chat_template
from xtune.paths import MODEL_DIR
from xtune.serve.tool_calls import parse_tool_calls, tool_call_format


def _calls(parsed) -> list[tuple[str, dict]]:
    return [(call["function"]["name"], json.loads(call["function"]["arguments"])) for call in parsed.tool_calls]


def test_hermes_calls_are_parsed_and_text_is_kept():
    answer = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    parsed = parse_tool_calls(answer, "hermes")
    assert parsed.content == "Let me check."
    assert _calls(parsed) == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert all(call["type"] == "function" and call["id"].startswith("call_") for call in parsed.tool_calls)
    assert len({call["id"] for call in parsed.tool_calls}) == 2


def test_a_call_alone_has_no_content():
    parsed = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>', "hermes")
    assert parsed.content is None and _calls(parsed) == [("f", {"x": 1})]


def test_malformed_calls_stay_in_the_content():
    for answer in ('<tool_call>{"name": "f", "arguments": </tool_call>', '<tool_call>{"arguments": {}}</tool_call>'):
        parsed = parse_tool_calls(answer, "hermes")
        assert parsed.content == answer and parsed.tool_calls == []


def test_llama3_json_call():
    parsed = parse_tool_calls('{"name": "get_weather", "parameters": {"city": "Oslo"}}', "llama3")
    assert parsed.content is None and _calls(parsed) == [("get_weather", {"city": "Oslo"})]
    assert parse_tool_calls("The weather is fine.", "llama3").tool_calls == []


def test_no_format_means_no_calls():
    answer = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert parse_tool_calls(answer, None).content == answer


def test_formats_follow_the_template():
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR / "tiny_llama")
    assert tool_call_format(tokenizer, "auto") == "hermes"  # its own template writes <tool_call> tags
    for name, expected in [("qwen2_5", "hermes"), ("qwen3", "hermes"), ("llama3", "llama3"), ("chatml", None)]:
        assert tool_call_format(tokenizer, name) == expected
    set_chat_template(tokenizer, "qwen2_5")
    assert tool_call_format(tokenizer, "auto") == "hermes"  # recognised as the built-in
    set_chat_template(tokenizer, "chatml")
    assert tool_call_format(tokenizer, "auto") is None
