"""Build the tiny demo tokenizer and model shipped in ``data/models/tiny_llama``.

The tokenizer is a byte-level BPE trained on the demo datasets in ``data/`` so that English and
Chinese both encode in few tokens; the model is a randomly initialised four-layer Llama that the
demos and tests fine-tune in seconds on a CPU. Both are deterministic: re-running this script
rewrites byte-identical files (for a given tokenizers/torch version).

Usage::

    python tools/make_tiny_model.py            # writes data/models/tiny_llama
    python tools/make_tiny_model.py --out /tmp/tiny_llama
"""

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
DEFAULT_OUT = DATA_DIR / "models" / "tiny_llama"

# Special tokens come first so their ids (0, 1, 2) never move when the data changes.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Tool markup is matched as whole tokens but stays visible in decoded text (special=False), so a
# generated tool call survives ``decode(skip_special_tokens=True)`` and can be parsed.
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
# Trained BPE size (specials included). ~3k merges is enough for every character of the demo data
# to be one token and for common English words to be whole tokens.
BPE_VOCAB_SIZE = 2944
# Split like modern LLM tokenizers: words with their leading space, one token per digit (so a tiny
# model can learn arithmetic digit by digit), punctuation runs, newlines and other whitespace.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Sample values for the {{name}} / {{author}} placeholders of identity.json, so that whatever the
# user fills in later is made of pieces the tokenizer has seen.
IDENTITY_SAMPLES = [("xtune", "the xtune team"), ("TinyBot", "Acme AI"), ("小助手", "开源社区")]

TOOLS_PREAMBLE = (
    "# Tools\n\nYou can call the functions below to help with the user's request. "
    "Their signatures are listed inside <tools></tools> tags:\n<tools>"
)
TOOLS_INSTRUCTIONS = (
    "\n</tools>\n\nTo call a function, reply with a JSON object holding its name and arguments "
    "inside <tool_call></tool_call> tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <arguments-object>}\n</tool_call>'
)

# ChatML with tools. No system prompt is injected unless tools are given (then the tool list is the
# system turn, after the user's system text if any). Assistant turns, including their <|im_end|>,
# sit in {% generation %} blocks so ``return_assistant_tokens_mask=True`` marks the trainable tokens.
# Consecutive tool results are grouped into one user turn, each inside <tool_response> tags.
CHAT_TEMPLATE = (
    r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages and messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
    {{- TOOLS_PREAMBLE }}
    {%- for tool in tools %}{{- '\n' }}{{- tool | tojson }}{%- endfor %}
    {{- TOOLS_INSTRUCTIONS }}
    {{- '<|im_end|>\n' }}
{%- elif messages and messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- if not loop.first %}{{- '<|im_start|>system\n' + message.content + '<|im_end|>\n' }}{%- endif %}
    {%- elif message.role == 'user' %}
        {{- '<|im_start|>user\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- generation %}
            {%- if message.content is string %}{{- message.content }}{%- endif %}
            {%- if message.tool_calls %}
                {%- for tool_call in message.tool_calls %}
                    {%- set call = tool_call.function if tool_call.function is defined else tool_call %}
                    {%- if not loop.first or (message.content is string and message.content) %}
                        {{- '\n' }}
                    {%- endif %}
                    {{- '<tool_call>\n{"name": ' + call.name | tojson + ', "arguments": ' }}
                    {%- if call.arguments is string %}
                        {{- call.arguments }}
                    {%- else %}
                        {{- call.arguments | tojson }}
                    {%- endif %}
                    {{- '}\n</tool_call>' }}
                {%- endfor %}
            {%- endif %}
            {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
""".strip()
    .replace("TOOLS_PREAMBLE", json.dumps(TOOLS_PREAMBLE))
    .replace("TOOLS_INSTRUCTIONS", json.dumps(TOOLS_INSTRUCTIONS))
)


def _read_json(name: str) -> list[dict]:
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))


def iter_corpus() -> Iterator[str]:
    """Yield every text field of the demo datasets, plus the chat template's fixed text."""
    for row in _read_json("identity.json"):
        for name, author in IDENTITY_SAMPLES:
            for text in (row["instruction"], row["output"]):
                yield text.replace("{{name}}", name).replace("{{author}}", author)
    for row in _read_json("alpaca_demo.json"):
        yield from (row["instruction"], row["input"], row["output"])
    for row in _read_json("sharegpt_demo.json"):
        yield from (turn["value"] for turn in row["conversations"])
        yield from (row.get("system", ""), row.get("tools", ""))
    for line in (DATA_DIR / "openai_demo.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for message in row["messages"]:
            yield message.get("content") or ""
            for call in message.get("tool_calls", []):
                yield json.dumps(call["function"], ensure_ascii=False)
        for tool in row.get("tools", []):
            yield json.dumps(tool, ensure_ascii=False)
    yield from (DATA_DIR / "pretrain_demo.txt").read_text(encoding="utf-8").splitlines()
    for _ in range(8):  # weight the template's fixed text so its words become single tokens
        yield from (TOOLS_PREAMBLE, TOOLS_INSTRUCTIONS, "system\n", "user\n", "assistant\n")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train the byte-level BPE and wrap it as a transformers fast tokenizer."""
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(iter_corpus(), trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",  # generation stops at the end of the assistant turn
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=2048,
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised ~1M-parameter Llama whose vocabulary covers ``tokenizer``."""
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        # A multiple of 64 keeps the embedding matmul aligned; the spare rows are never produced.
        vocab_size=math.ceil(len(tokenizer) / 64) * 64,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in the real models it stands in for
        intermediate_size=384,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=pad_id,  # no BOS is prepended; Qwen-style models point bos at <|endoftext|>
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
    return model


def _pin_tokenizer_class(path: Path) -> None:
    # transformers 5 writes its internal "TokenizersBackend"; the public alias also loads in 4.x.
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.out)
    _pin_tokenizer_class(args.out / "tokenizer_config.json")
    model.save_pretrained(args.out)  # transformers >= 5 always writes model.safetensors
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: vocab {len(tokenizer)} (model {model.config.vocab_size}), {n_params:,} parameters")


if __name__ == "__main__":
    main()
