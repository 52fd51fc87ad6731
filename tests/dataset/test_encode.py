"""Token ids equal apply_chat_template; labels cover exactly the assistant turns."""

import copy

import pytest
from transformers import AutoTokenizer

from xtune.dataset.encode import IGNORE_INDEX, EncodeOptions, encode_conversations, encode_texts
from xtune.testing.tiny_models import tiny_tokenizer_dir

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 degrees."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You are welcome."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir())


def _trained_text(tokenizer, result) -> list[str]:
    """Decode each maximal run of trained tokens."""
    runs, run = [], []
    for token, label in zip(result["input_ids"], result["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    if run:
        runs.append(tokenizer.decode(run))
    return runs


def test_ids_equal_apply_chat_template_with_tools(tokenizer):
    (result,) = encode_conversations(tokenizer, [{"messages": CONVERSATION, "tools": TOOLS}], EncodeOptions())
    expected = tokenizer.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=True, return_dict=False)
    assert result["input_ids"] == list(expected)


def test_exactly_the_assistant_turns_are_trained(tokenizer):
    (result,) = encode_conversations(tokenizer, [{"messages": CONVERSATION, "tools": TOOLS}], EncodeOptions())
    runs = _trained_text(tokenizer, result)
    assert len(runs) == 3
    assert runs[0].startswith("<tool_call>") and '"Paris"' in runs[0] and runs[0].endswith("<|im_end|>")
    assert runs[1] == "It is 21 degrees.<|im_end|>"
    assert runs[2] == "You are welcome.<|im_end|>"
    text = tokenizer.decode([t for t, lab in zip(result["input_ids"], result["labels"]) if lab != IGNORE_INDEX])
    for untrained in ("You are terse.", "Paris?", '{"temp": 21}', "Thanks!", "assistant\n"):
        assert untrained not in text


def test_mask_history_trains_only_the_last_turn(tokenizer):
    sample = {"messages": CONVERSATION, "tools": TOOLS}
    (result,) = encode_conversations(tokenizer, [sample], EncodeOptions(mask_history=True))
    assert _trained_text(tokenizer, result) == ["You are welcome.<|im_end|>"]


def test_train_on_prompt_trains_everything_but_the_first_token(tokenizer):
    sample = {"messages": CONVERSATION[:3] + CONVERSATION[3:5], "tools": None}
    (result,) = encode_conversations(tokenizer, [sample], EncodeOptions(train_on_prompt=True))
    assert result["labels"][0] == IGNORE_INDEX
    assert result["labels"][1:] == result["input_ids"][1:]


def test_truncation_is_counted_and_drop_drops(tokenizer):
    sample = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 200}]}
    (cut,) = encode_conversations(tokenizer, [sample], EncodeOptions(max_length=32))
    assert cut["status"] == "truncated" and len(cut["input_ids"]) == 32
    (dropped,) = encode_conversations(tokenizer, [sample], EncodeOptions(max_length=32, truncation="drop"))
    assert dropped["status"].startswith("dropped") and dropped["input_ids"] == []


def test_sample_without_trained_tokens_after_truncation_is_dropped(tokenizer):
    sample = {"messages": [{"role": "user", "content": "long " * 100}, {"role": "assistant", "content": "ok"}]}
    (result,) = encode_conversations(tokenizer, [sample], EncodeOptions(max_length=16))
    assert result["status"] == "dropped: no trained tokens (after truncation)"


def test_pretraining_text_trains_every_token_and_ends_with_eos(tokenizer):
    (result,) = encode_texts(tokenizer, [{"text": "Plain text for pretraining."}], EncodeOptions())
    assert result["input_ids"][-1] == tokenizer.eos_token_id
    assert result["labels"][1:] == result["input_ids"][1:]
    assert result["labels"][0] == IGNORE_INDEX


@pytest.mark.parametrize(
    "name",
    ["chatml", "qwen2_5", "llama3", "llama2", "mistral", "phi3", "gemma", "yi", "internlm2", "deepseek", "default"],
)
def test_every_assistant_turn_ends_with_its_end_of_turn_token(tokenizer, name):
    from xtune.dataset.templates import get_template

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = get_template(name).jinja
    tok.add_special_tokens({"bos_token": "<s>"}) if tok.bos_token is None else None
    messages = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "second answer"},
    ]
    (result,) = encode_conversations(tok, [{"messages": messages}], EncodeOptions())
    runs = _trained_text(tok, result)
    assert len(runs) == 2
    assert runs[0].strip().startswith("first answer") and runs[1].strip().startswith("second answer")
    stops = [w for w in (*get_template(name).stop_words, tok.eos_token) if w.strip()]
    if stops:  # both turns, not only the last, teach the model to stop
        assert any(runs[0].rstrip().endswith(w) for w in stops), runs[0]
        assert any(w in runs[1] for w in stops), runs[1]


def test_turns_without_an_end_token_get_a_trained_eos(tokenizer):
    from xtune.dataset.templates import get_template

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = get_template("glm4").jinja
    messages = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "second answer"},
    ]
    (result,) = encode_conversations(tok, [{"messages": messages}], EncodeOptions())
    runs = _trained_text(tok, result)
    # (the tiny tokenizer merges the header's ">" with the content's leading newline into one token)
    assert len(runs) == 2
    assert runs[0].endswith("first answer" + tok.eos_token) and runs[1].endswith("second answer" + tok.eos_token)
    plain = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert [t for t in result["input_ids"] if t != tok.eos_token_id] == [t for t in plain if t != tok.eos_token_id]


def test_qwen3_multi_turn_with_tools_trains_every_assistant_turn(tokenizer):
    from xtune.dataset.templates import get_template

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = get_template("qwen3").jinja
    (result,) = encode_conversations(tok, [{"messages": CONVERSATION, "tools": TOOLS}], EncodeOptions())
    expected = tok.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=True, return_dict=False)
    assert result["input_ids"] == list(expected)
    runs = _trained_text(tok, result)
    assert len(runs) == 3
    assert "<tool_call>" in runs[0] and runs[0].endswith("<|im_end|>")
    assert runs[1].strip() == "It is 21 degrees.<|im_end|>"
    assert runs[2].strip().endswith("You are welcome.<|im_end|>")


def test_token_ranges_agree_for_fast_encodings_and_slow_tokenizer_offsets(tokenizer):
    from xtune.dataset.encode import _token_ranges, assistant_spans

    text, spans = assistant_spans(tokenizer, CONVERSATION, TOOLS)
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    ranges = _token_ranges(encoding, spans)
    assert len(ranges) == 3
    assert _token_ranges(list(encoding.offsets), spans) == ranges


THINKING = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nAdd.\n</think>\n\n4"},
]


@pytest.mark.parametrize("name,end", [("qwen3", "<|im_end|>"), ("deepseek", "<｜end▁of▁sentence｜>")])
@pytest.mark.parametrize("keep_history", [False, True])
def test_reasoning_of_the_trained_reply_is_kept_and_trained(tokenizer, name, end, keep_history):
    from xtune.dataset.templates import get_template

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = get_template(name).jinja
    tok.add_special_tokens({"bos_token": "<s>"}) if tok.bos_token is None else None
    options = EncodeOptions(keep_history_reasoning=keep_history)
    (result,) = encode_conversations(tok, [{"messages": THINKING}], options)
    kwargs = {"keep_history_reasoning": True} if keep_history else {}
    expected = tok.apply_chat_template(THINKING, tokenize=True, return_dict=False, **kwargs)
    assert result["input_ids"] == list(expected)
    first, last = [run.strip() for run in _trained_text(tok, result)]
    # the trained reply: its reasoning, the closing tag, the answer and the end of turn
    assert last.startswith("Add.") or last.startswith("<think>\nAdd.")
    assert last.endswith("</think>\n\n4" + end)
    assert ("Greet back." in first) == keep_history and first.endswith("Hello!" + end)
