"""The shipped tiny tokenizer/model and the tiny-architecture test helper."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from xtune.errors import ConfigError
from xtune.paths import DATA_DIR, REPO_ROOT
from xtune.testing import TINY_ARCHS, make_tiny_model, tiny_tokenizer_dir

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "北京天气怎么样？"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}],
    },
    {"role": "tool", "content": '{"temperature": 21}'},
    {"role": "assistant", "content": "北京现在 21°C。"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir())


def _ids(encoded) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list.
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def test_shipped_tiny_llama_loads_and_matches_tokenizer(tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_tokenizer_dir())
    config = model.config
    assert isinstance(config, LlamaConfig)
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (128, 4, 2)
    assert config.vocab_size % 64 == 0 and len(tokenizer) <= config.vocab_size < len(tokenizer) + 64
    assert config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert config.pad_token_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied


def test_tokenizer_is_compact_and_round_trips(tokenizer):
    for text in ["Who are you?", "你是谁？请介绍一下你自己。", "What is 17 + 25?"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
        assert len(ids) <= len(text) // 2 + 4  # demo text is well covered by merges
    # One token per digit, so a tiny model can learn arithmetic digit by digit.
    assert tokenizer.tokenize("2025") == ["2", "0", "2", "5"]
    assert len(tokenizer.encode("<|im_start|><tool_call></tool_call>", add_special_tokens=False)) == 3
    # Tool markup is not special: it survives skip_special_tokens, so tool calls can be parsed.
    ids = tokenizer.encode("<tool_call>x</tool_call><|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<tool_call>x</tool_call>"


def test_chat_template_renders_tool_calls_and_ids_are_stable(tokenizer):
    text = tokenizer.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n")
    assert json.dumps(TOOLS[0], ensure_ascii=False) in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n'
        "</tool_call><|im_end|>\n"
    ) in text
    assert '<|im_start|>user\n<tool_response>\n{"temperature": 21}\n</tool_response><|im_end|>\n' in text
    assert text.endswith("<|im_start|>assistant\n北京现在 21°C。<|im_end|>\n")

    ids = _ids(tokenizer.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=True))
    assert ids == tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    # Arguments given as a JSON string (OpenAI style) render exactly like a dict.
    as_string = json.loads(json.dumps(TOOL_CONVERSATION))
    as_string[2]["tool_calls"][0]["function"]["arguments"] = '{"city": "北京"}'
    assert tokenizer.apply_chat_template(as_string, tools=TOOLS, tokenize=False) == text


def test_chat_template_without_tools_injects_no_system_prompt(tokenizer):
    messages = [{"role": "user", "content": "Who are you?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"


def test_assistant_mask_covers_replies_and_end_of_turn(tokenizer):
    encoded = tokenizer.apply_chat_template(
        TOOL_CONVERSATION, tools=TOOLS, return_dict=True, return_assistant_tokens_mask=True
    )
    trained = [i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert tokenizer.decode(trained) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call><|im_end|>'
        "北京现在 21°C。<|im_end|>"
    )


def test_every_openai_demo_row_renders(tokenizer):
    lines = (DATA_DIR / "openai_demo.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 30
    for line in lines:
        row = json.loads(line)
        text = tokenizer.apply_chat_template(row["messages"], tools=row.get("tools"), tokenize=False)
        assert text.endswith(row["messages"][-1]["content"] + "<|im_end|>\n")
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_shipped_tokenizer_is_what_the_script_builds(tokenizer):
    # Editing the demo data without re-running tools/make_tiny_model.py makes the shipped assets stale.
    spec = importlib.util.spec_from_file_location("make_tiny_model", REPO_ROOT / "tools" / "make_tiny_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rebuilt = script.build_tokenizer()
    assert rebuilt.get_vocab() == tokenizer.get_vocab(), "run `python tools/make_tiny_model.py` and commit"
    assert rebuilt.chat_template == tokenizer.chat_template


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_arch_builds_loads_and_trains(arch: str, tmp_path: Path):
    path = make_tiny_model(arch, tmp_path / arch)
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == arch
    assert config.num_hidden_layers == 2 and config.hidden_size == 64
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.get_input_embeddings().num_embeddings == config.vocab_size >= len(tokenizer)

    ids = torch.tensor([tokenizer.encode("Who are you? 你是谁？", add_special_tokens=False)])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and 6.0 < loss.item() < 10.0  # near ln(vocab) for random weights
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_same_seed_same_weights_and_rng_untouched(tmp_path: Path):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first = load_file(make_tiny_model("qwen2", tmp_path / "a", seed=7) / "model.safetensors")
    assert torch.equal(torch.rand(3), before)  # the caller's RNG stream is not consumed
    second = load_file(make_tiny_model("qwen2", tmp_path / "b", seed=7) / "model.safetensors")
    other = load_file(make_tiny_model("qwen2", tmp_path / "c", seed=8) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_unknown_arch_and_missing_tokenizer_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown arch 'gpt5'.*llama"):
        make_tiny_model("gpt5", tmp_path / "x")
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        make_tiny_model("llama", tmp_path / "x", tokenizer_dir=tmp_path)
