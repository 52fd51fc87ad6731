"""Built-in chat templates render exactly what each family's official template renders.

The expected strings are written out literally; they are the official templates' output (for mistral
and gemma the documented deviations are marked). Rendering goes through a real
``PreTrainedTokenizerFast`` built from a tiny word-level vocabulary, as training does.
"""

import jinja2
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

import xtune.dataset.templates as templates_module
from xtune.dataset.templates import TEMPLATES, ChatTemplate, get_template, set_chat_template, stop_words_for
from xtune.errors import ConfigError

# The BOS and EOS tokens of a real tokenizer of each family (None: the family's tokenizer has no BOS).
SPECIAL_TOKENS = {
    "default": ("<s>", "</s>"),
    "chatml": (None, "<|im_end|>"),
    "qwen2_5": (None, "<|im_end|>"),
    "qwen3": (None, "<|im_end|>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama2": ("<s>", "</s>"),
    "mistral": ("<s>", "</s>"),
    "internlm2": ("<s>", "</s>"),
    "gemma": ("<bos>", "<eos>"),
    "phi3": ("<s>", "<|endoftext|>"),
    "glm4": (None, "<|endoftext|>"),
    "deepseek": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "yi": ("<|startoftext|>", "<|im_end|>"),
    "llava": ("<s>", "</s>"),
}


def make_tokenizer(bos: str | None, eos: str | None, extra: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0}
    for token in (bos, eos, *extra):
        if token:
            vocab[token] = len(vocab)
    specials = {"unk_token": "<unk>", "bos_token": bos, "eos_token": eos}
    model = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=model, **{k: v for k, v in specials.items() if v})


def render(name: str, messages: list[dict], **kwargs) -> str:
    tokenizer = make_tokenizer(*SPECIAL_TOKENS[name])
    assert set_chat_template(tokenizer, name) is TEMPLATES[name]
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
]

CHATML = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
)
LLAMA3_HEAD = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
)
LLAMA3 = (
    LLAMA3_HEAD + "You are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
)
LLAMA2 = "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] What is 2+2? [/INST]"
GEMMA = (
    "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
)
PHI3 = (
    "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
    "<|user|>\nWhat is 2+2?<|end|>\n"
)
DEEPSEEK = (
    "<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜>"
    "<｜User｜>What is 2+2?<｜Assistant｜>"
)
YI = (
    "You are terse.<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
)
# LLaVA-1.5 (vicuna v1); "USER: ... ASSISTANT:" as llava-hf's template writes a prompt.
LLAVA = "<s>You are terse. USER: Hi ASSISTANT: Hello!</s>USER: What is 2+2?"

# The whole conversation (system, user, assistant, user, assistant), as training renders it.
EXPECTED_CONVERSATION = {
    "default": "<s>You are terse.\n\nUser: Hi\nAssistant: Hello!</s>\nUser: What is 2+2?\nAssistant: 4</s>\n",
    "chatml": CHATML + "<|im_start|>assistant\n4<|im_end|>\n",
    "qwen2_5": CHATML + "<|im_start|>assistant\n4<|im_end|>\n",
    # The official Qwen3 template writes an empty think block into the turn after the last query.
    "qwen3": CHATML + "<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n",
    "llama3": LLAMA3 + "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>",
    "llama2": LLAMA2 + " 4 </s>",
    # Deviation (see the module docstring): the HF Jinja drops the system prompt here; mistral_common
    # puts it before the last user message.
    "mistral": "<s>[INST] Hi[/INST] Hello!</s>[INST] You are terse.\n\nWhat is 2+2?[/INST] 4</s>",
    "internlm2": "<s>" + CHATML + "<|im_start|>assistant\n4<|im_end|>\n",
    # Deviation: official Gemma/Gemma 2 raise on a system message; it is folded as Gemma 3 does.
    "gemma": GEMMA + "<start_of_turn>model\n4<end_of_turn>\n",
    "phi3": PHI3 + "<|assistant|>\n4<|end|>\n<|endoftext|>",
    "glm4": "[gMASK]<sop><|system|>\nYou are terse.<|user|>\nHi<|assistant|>\nHello!<|user|>\nWhat is 2+2?"
    "<|assistant|>\n4",
    "deepseek": DEEPSEEK + "4<｜end▁of▁sentence｜>",
    "yi": YI + "4<|im_end|>\n",
    "llava": LLAVA + " ASSISTANT: 4</s>",
}

# The conversation up to the last user message, with add_generation_prompt=True, as chat renders it.
EXPECTED_GENERATION_PROMPT = {
    "default": "<s>You are terse.\n\nUser: Hi\nAssistant: Hello!</s>\nUser: What is 2+2?\nAssistant:",
    "chatml": CHATML + "<|im_start|>assistant\n",
    "qwen2_5": CHATML + "<|im_start|>assistant\n",
    "qwen3": CHATML + "<|im_start|>assistant\n",
    "llama3": LLAMA3 + "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama2": LLAMA2,
    "mistral": "<s>[INST] Hi[/INST] Hello!</s>[INST] You are terse.\n\nWhat is 2+2?[/INST]",
    "internlm2": "<s>" + CHATML + "<|im_start|>assistant\n",
    "gemma": GEMMA + "<start_of_turn>model\n",
    "phi3": PHI3 + "<|assistant|>\n",
    "glm4": "[gMASK]<sop><|system|>\nYou are terse.<|user|>\nHi<|assistant|>\nHello!<|user|>\nWhat is 2+2?"
    "<|assistant|>",
    "deepseek": DEEPSEEK + "<think>\n",
    "yi": YI,
    "llava": LLAVA + " ASSISTANT:",
}


def test_every_template_is_covered():
    assert set(EXPECTED_CONVERSATION) == set(TEMPLATES) == set(EXPECTED_GENERATION_PROMPT)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_renders_official_conversation(name):
    assert render(name, CONVERSATION) == EXPECTED_CONVERSATION[name]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_renders_official_generation_prompt(name):
    assert render(name, CONVERSATION[:4], add_generation_prompt=True) == EXPECTED_GENERATION_PROMPT[name]


def test_qwen2_5_adds_default_system_prompt():
    expected = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render("qwen2_5", [{"role": "user", "content": "Hi"}], add_generation_prompt=True) == expected


THINKING = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nAdd.\n</think>\n\n4"},
]


def test_qwen3_keeps_reasoning_only_after_the_last_query():
    expected = (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nAdd.\n</think>\n\n4<|im_end|>\n"
    )
    assert render("qwen3", THINKING) == expected
    # The reasoning may also come as a separate field.
    split = THINKING[:3] + [{"role": "assistant", "content": "4", "reasoning_content": "Add."}]
    assert render("qwen3", split) == expected


def test_qwen3_enable_thinking_false_prefills_an_empty_think_block():
    prompt = render("qwen3", THINKING[:3], add_generation_prompt=True, enable_thinking=False)
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_deepseek_keeps_reasoning_only_in_the_reply_after_the_last_query():
    expected = (
        "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>\n\nHello!<｜end▁of▁sentence｜>"
        "<｜User｜>What is 2+2?<｜Assistant｜><think>\nAdd.\n</think>\n\n4<｜end▁of▁sentence｜>"
    )
    assert render("deepseek", THINKING) == expected
    # The trained reply continues the generation prompt, as the model writes it after "<think>\n".
    prompt = render("deepseek", THINKING[:3], add_generation_prompt=True)
    assert expected.startswith(prompt) and prompt.endswith("<｜Assistant｜><think>\n")
    # Reasoning traces often omit the opening tag (the generation prompt holds it).
    bare = THINKING[:3] + [{"role": "assistant", "content": "Add.\n</think>\n\n4"}]
    assert render("deepseek", bare) == expected


def test_keep_history_reasoning_keeps_earlier_turns_reasoning():
    deepseek = render("deepseek", THINKING, keep_history_reasoning=True)
    assert "<｜Assistant｜><think>\nGreet back.\n</think>\n\nHello!<｜end▁of▁sentence｜>" in deepseek
    qwen3 = render("qwen3", THINKING, keep_history_reasoning=True)
    assert "<|im_start|>assistant\n<think>\nGreet back.\n</think>\n\nHello!<|im_end|>" in qwen3


def test_gemma_without_system_matches_official_and_trims():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello! "}]
    expected = "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    assert render("gemma", messages) == expected


def test_llama3_date_string_overrides_the_default_date():
    text = render("llama3", CONVERSATION[:2], date_string="01 Jan 2025")
    assert "Today Date: 01 Jan 2025\n\n" in text and "26 Jul 2024" not in text


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 degrees."},
]
QWEN_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call><|im_end|>\n"
)
QWEN_TOOL_TURNS = (
    "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    "</tool_call><|im_end|>\n"
    '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n'
)


def test_qwen2_5_renders_tools():
    expected = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n"
        + QWEN_TOOLS
        + QWEN_TOOL_TURNS
        + "<|im_start|>assistant\nIt is 21 degrees.<|im_end|>\n"
    )
    assert render("qwen2_5", TOOL_CONVERSATION, tools=TOOLS) == expected


def test_qwen3_renders_tools():
    expected = (
        "<|im_start|>system\n"
        + QWEN_TOOLS
        + QWEN_TOOL_TURNS
        + "<|im_start|>assistant\n<think>\n\n</think>\n\nIt is 21 degrees.<|im_end|>\n"
    )
    assert render("qwen3", TOOL_CONVERSATION, tools=TOOLS) == expected


def test_llama3_renders_tools_in_the_first_user_message():
    expected = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with "
        "a JSON for a function call with its proper arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
        'value}.Do not use variables.\n\n{\n    "type": "function",\n    "function": {\n'
        '        "name": "get_weather",\n        "description": "Weather in a city",\n'
        '        "parameters": {\n            "type": "object",\n            "properties": {\n'
        '                "city": {\n                    "type": "string"\n                }\n'
        '            },\n            "required": [\n                "city"\n            ]\n        }\n'
        "    }\n}\n\nWeather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        # The official template JSON-quotes the tool result string.
        '<|start_header_id|>ipython<|end_header_id|>\n\n"{\\"temp\\": 21}"<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 21 degrees.<|eot_id|>"
    )
    assert render("llama3", TOOL_CONVERSATION, tools=TOOLS) == expected


@pytest.mark.parametrize("name", ["llama2", "mistral", "gemma", "deepseek", "default", "llava"])
def test_templates_without_tools_refuse_tool_messages(name):
    with pytest.raises(jinja2.exceptions.TemplateError, match="tool"):
        render(name, TOOL_CONVERSATION)


@pytest.mark.parametrize("name", ["llama2", "mistral", "gemma", "llava"])
def test_strict_templates_refuse_non_alternating_roles(name):
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(jinja2.exceptions.TemplateError, match="alternate"):
        render(name, messages)


def test_supports_tools_flags():
    assert {name for name, t in TEMPLATES.items() if t.supports_tools} == {"qwen2_5", "qwen3", "llama3"}


def test_legend_table_matches_the_templates():
    """The table at the top of the module names every template with its stop words and tools flag."""
    rows = {line.split()[0]: line for line in templates_module.__doc__.splitlines() if line.split()}
    for name, template in TEMPLATES.items():
        assert isinstance(template, ChatTemplate) and template.name == name
        assert template.legend and "\n" not in template.legend
        row = rows[name]
        for word in template.stop_words:
            assert word.replace("\n", "\\n") in row, (name, word)
        assert row.rstrip().endswith("yes" if template.supports_tools else "no"), name


def test_get_template_unknown_name_lists_closest_and_all_names():
    with pytest.raises(ConfigError) as error:
        get_template("qwen25")
    message = str(error.value)
    assert "Did you mean 'qwen2_5'" in message
    assert all(name in message for name in TEMPLATES)
    with pytest.raises(ConfigError, match="'llama3' or 'llama2'|'llama2' or 'llama3'"):
        get_template("llama")
    with pytest.raises(ConfigError, match="keeps the tokenizer's own chat_template"):
        get_template("auto")


def test_set_chat_template_auto_keeps_the_tokenizers_template():
    tokenizer = make_tokenizer("<s>", "</s>")
    own = "{% for m in messages %}{{ m.content }}{% endfor %}"
    tokenizer.chat_template = own
    assert set_chat_template(tokenizer, "auto") is None
    assert tokenizer.chat_template == own


def test_set_chat_template_auto_without_a_template_asks_for_a_builtin():
    with pytest.raises(ConfigError, match="Set prompt_template to one of the built-in templates: default, chatml"):
        set_chat_template(make_tokenizer("<s>", "</s>"), "auto")


def test_set_chat_template_installs_the_builtin_and_checks_special_tokens():
    tokenizer = make_tokenizer(None, "<|im_end|>")
    assert set_chat_template(tokenizer, "chatml") is TEMPLATES["chatml"]
    assert tokenizer.chat_template == TEMPLATES["chatml"].jinja
    with pytest.raises(ConfigError, match="writes bos_token"):
        set_chat_template(make_tokenizer(None, "</s>"), "llama3")
    with pytest.raises(ConfigError, match="Unknown prompt_template"):
        set_chat_template(tokenizer, "chatml2")


def test_stop_words_builtin_adds_eos():
    assert stop_words_for(make_tokenizer(None, "<|im_end|>"), "qwen2_5") == ["<|im_end|>", "<|endoftext|>"]
    assert stop_words_for(make_tokenizer("<s>", "</s>"), "default") == ["\nUser:", "</s>"]


def test_stop_words_auto_finds_end_of_turn_tokens_in_the_vocab():
    tokenizer = make_tokenizer("<|begin_of_text|>", "<|end_of_text|>", extra=("<|eot_id|>", "<|eom_id|>"))
    assert stop_words_for(tokenizer, "auto") == ["<|end_of_text|>", "<|eot_id|>", "<|eom_id|>"]
    assert stop_words_for(make_tokenizer("<s>", "</s>"), "auto") == ["</s>"]
