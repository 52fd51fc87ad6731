"""Tool calls parsed out of answers in the formats the built-in templates train, and end to end from a
model fitted to answer with one."""

import json

import pytest
from transformers import AutoTokenizer

from tests.serve.conftest import WEATHER_TOOL, start_server
from xtune.dataset.templates import set_chat_template
from xtune.paths import MODEL_DIR
from xtune.serve.tool_calls import parse_tool_calls, tool_call_format

QUESTION = [{"role": "user", "content": "Weather in Paris?"}]


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


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory):
    """tiny_llama fitted (plain PyTorch, full fine-tuning) to answer one question with a tool call, served."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR / "tiny_llama")
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR / "tiny_llama", dtype=torch.float32)
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    prompt = tokenizer.apply_chat_template(QUESTION, tools=[WEATHER_TOOL], add_generation_prompt=True)["input_ids"]
    full = tokenizer.apply_chat_template(
        QUESTION + [{"role": "assistant", "content": "", "tool_calls": [call]}], tools=[WEATHER_TOOL]
    )["input_ids"]
    ids = torch.tensor([full])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100  # only the answer is learned
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 1M-parameter model: more threads only wait on each other
    try:
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(60):
            model(input_ids=ids, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("tool_model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    server = start_server([folder, "--served-model-name", "tools"], folder / "logs")
    yield server
    assert server.stop() == 0


def test_a_tool_call_in_the_answer_comes_back_as_tool_calls(tool_server):
    import openai

    client = openai.OpenAI(base_url=tool_server.url, api_key="unused", max_retries=0, timeout=120)
    asked = {"model": "tools", "messages": QUESTION, "tools": [WEATHER_TOOL], "temperature": 0, "max_tokens": 40}
    reply = client.chat.completions.create(**asked)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    chunks = list(client.chat.completions.create(**asked, stream=True))
    calls = [c for chunk in chunks if chunk.choices for c in (chunk.choices[0].delta.tool_calls or [])]
    assert [(c.index, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (0, "get_weather", {"city": "Paris"})
    ]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]

    without_tools = client.chat.completions.create(**{**asked, "tools": None, "max_tokens": 8})
    assert without_tools.choices[0].message.tool_calls is None  # no tools asked: nothing is parsed
