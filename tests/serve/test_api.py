"""``xtune serve`` over the tiny model plus a trained LoRA adapter, through the real ``openai`` client.

Answers are checked against ``xtune chat`` (the same model and question at temperature 0) and against
plain transformers + peft for what ``xtune chat`` cannot ask (multi-turn histories, tools, raw prompts).
"""

import threading
import time

import pytest
import torch

from tests.serve.conftest import MODEL, WEATHER_TOOL, http
from xtune.cli import main

QUESTION = "Who are you?"
TOKENS = 12


@pytest.fixture(scope="module")
def reference(chat_models):
    """Greedy answers from plain transformers + peft: (messages, max_new_tokens, tools) -> (text, prompt ids)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_models.adapter)
    base = AutoModelForCausalLM.from_pretrained(chat_models.run.base, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, chat_models.adapter).eval()
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]

    def answer(messages: list[dict], max_new_tokens: int = TOKENS, tools=None) -> tuple[str, list[int]]:
        ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        tensor = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(
                tensor,
                attention_mask=torch.ones_like(tensor),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).strip(), ids

    return answer


def _ask(client, content: str = QUESTION, **kwargs):
    kwargs = {"temperature": 0, "max_tokens": TOKENS, **kwargs}
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kwargs)


def test_models_and_health(client, server):
    assert [model.id for model in client.models.list().data] == [MODEL]
    status, body = http("GET", f"{server.root}/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == MODEL


def test_greedy_answer_equals_xtune_chat_token_for_token(client, chat_models, capsys, reference):
    response = _ask(client)
    args = [chat_models.run.base, "--adapter", chat_models.adapter, "--prompt", QUESTION, "--temperature", "0"]
    assert main(["chat", *map(str, args), "--max-new-tokens", str(TOKENS)]) == 0
    chat_answer = capsys.readouterr().out.strip()
    message = response.choices[0].message
    assert message.role == "assistant" and message.content == chat_answer and chat_answer
    expected, prompt_ids = reference([{"role": "user", "content": QUESTION}])
    assert message.content == expected
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert 1 <= response.usage.completion_tokens <= TOKENS
    assert response.model == MODEL and response.object == "chat.completion"


def test_stream_adds_up_to_the_answer_and_ends_with_usage(client):
    whole = _ask(client)
    chunks = list(_ask(client, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert len({c.id for c in chunks}) == 1


def test_raw_stream_ends_with_done(server):
    import urllib.request

    body = b'{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": true}'
    request = urllib.request.Request(
        f"{server.url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events) and events[-1] == "data: [DONE]"


def test_multi_turn_conversation_is_rendered_whole(client, reference):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there."},
        {"role": "user", "content": QUESTION},
    ]
    response = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=TOKENS)
    expected, prompt_ids = reference(messages)
    assert response.choices[0].message.content == expected
    assert response.usage.prompt_tokens == len(prompt_ids) > len(reference(messages[-1:])[1]) + 10


def test_max_tokens_ends_with_length(client):
    for key in ("max_tokens", "max_completion_tokens"):
        response = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            temperature=0,
            extra_body={"ignore_eos": True},
            **{key: 3},
        )
        assert response.usage.completion_tokens == 3
        assert response.choices[0].finish_reason == "length"


def test_stop_cuts_the_answer(client):
    full = _ask(client, max_tokens=24, extra_body={"ignore_eos": True}).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), full
    response = _ask(client, max_tokens=24, stop=[stop], extra_body={"ignore_eos": True})
    assert response.choices[0].message.content == full[: full.index(stop)].strip()
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens < 24


def test_tools_reach_the_chat_template(client, reference):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    with_tools = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], temperature=0, max_tokens=TOKENS
    )
    expected, prompt_ids = reference(messages, tools=[WEATHER_TOOL])
    assert with_tools.usage.prompt_tokens == len(prompt_ids) > len(reference(messages)[1]) + 20
    message = with_tools.choices[0].message
    assert (message.content or "") == expected or message.tool_calls  # a tool call is parsed out of the text


def test_tool_calls_and_results_in_the_history_are_rendered(client, reference):
    messages = [
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
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    response = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], temperature=0, max_tokens=TOKENS
    )
    as_trained = [messages[0], {**messages[1], "tool_calls": [{"type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris"}}}]}, messages[2]]  # fmt: skip
    expected, prompt_ids = reference(as_trained, tools=[WEATHER_TOOL])
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert (response.choices[0].message.content or "") == expected or response.choices[0].message.tool_calls


def test_seed_makes_sampling_repeatable(client):
    def sample(seed: int) -> str:
        return _ask(client, temperature=1.0, seed=seed, max_tokens=16).choices[0].message.content

    assert sample(3) == sample(3)
    assert len({sample(seed) for seed in (3, 4, 5)}) > 1


def test_raw_completion(client, chat_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_models.adapter)
    response = client.completions.create(model=MODEL, prompt="I am", max_tokens=6, temperature=0)
    streamed = client.completions.create(model=MODEL, prompt="I am", max_tokens=6, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == response.choices[0].text
    assert response.usage.prompt_tokens == len(tokenizer("I am")["input_ids"])
    assert response.object == "text_completion" and response.choices[0].finish_reason in ("stop", "length")


def _stream_text(client, prompt: str, results: dict, max_tokens: int = TOKENS, **kwargs) -> None:
    chunks = _ask(client, prompt, stream=True, max_tokens=max_tokens, **kwargs)
    results[prompt] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_five_concurrent_streams_all_answer_correctly_while_health_answers(client, server):
    prompts = [f"Question {i}: who are you?" for i in range(5)]
    sequential = {prompt: _ask(client, prompt).choices[0].message.content for prompt in prompts}
    results: dict[str, str] = {}
    threads = [threading.Thread(target=_stream_text, args=(client, p, results)) for p in prompts]
    for thread in threads:
        thread.start()
    health = []
    while any(thread.is_alive() for thread in threads):
        started = time.monotonic()
        status, body = http("GET", f"{server.root}/health", timeout=10)
        health.append((status, body["running"] + body["waiting"], time.monotonic() - started))
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert results == sequential
    assert all(status == 200 for status, _, _ in health)
    assert max(busy for _, busy, _ in health) >= 2  # generations overlapped, and /health answered meanwhile


def test_a_client_that_disconnects_stops_its_generation(client, server):
    before = http("GET", f"{server.root}/health")[1]
    stream = _ask(client, stream=True, max_tokens=1500, extra_body={"ignore_eos": True})
    for index, _ in enumerate(stream):
        if index == 3:
            break
    stream.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = http("GET", f"{server.root}/health")[1]
        if now["cancelled"] > before["cancelled"] and now["running"] == 0:
            break
        time.sleep(0.1)
    assert now["cancelled"] == before["cancelled"] + 1 and now["running"] == 0
    assert now["completed"] == before["completed"]


def test_a_non_streamed_request_is_cancelled_when_its_client_leaves(server):
    import json
    from http.client import HTTPConnection
    from urllib.parse import urlsplit

    before = http("GET", f"{server.root}/health")[1]
    address = urlsplit(server.url)
    connection = HTTPConnection(address.hostname, address.port, timeout=30)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1500, "ignore_eos": True}
    connection.request(
        "POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    deadline = time.monotonic() + 60
    while http("GET", f"{server.root}/health")[1]["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    connection.close()  # leave without reading the answer
    while time.monotonic() < deadline:
        now = http("GET", f"{server.root}/health")[1]
        if now["cancelled"] > before["cancelled"] and now["running"] == 0:
            break
        time.sleep(0.1)
    assert now["cancelled"] == before["cancelled"] + 1 and now["completed"] == before["completed"]


def test_null_fields_mean_the_defaults(server):
    """Front ends send every field of their form, null when unset."""
    body = {"model": None, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "ignore_eos": True}
    body.update(dict.fromkeys(["temperature", "top_p", "n", "stream", "presence_penalty", "stop", "seed"]))
    status, answer = http("POST", f"{server.url}/chat/completions", body)
    assert status == 200 and answer["usage"]["completion_tokens"] == 3, answer
