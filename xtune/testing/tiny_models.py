"""Tiny random-init models of real architectures, for fast offline tests.

Each model uses the architecture's own transformers classes (``LlamaConfig``/``LlamaForCausalLM``,
``Qwen2Config``/``Qwen2ForCausalLM``, ...) at toy size, with the vocabulary of the tiny tokenizer
shipped in ``data/models/tiny_llama``, so code that handles a family (LoRA target modules,
checkpoint conversion, chat templates) can be exercised on it in well under a second::

    from xtune.testing import make_tiny_model

    path = make_tiny_model("qwen2", tmp_path / "qwen2")
    model = AutoModelForCausalLM.from_pretrained(path)
"""

import math
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    GemmaConfig,
    GenerationConfig,
    Glm4Config,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
)

from xtune.errors import ConfigError
from xtune.paths import MODEL_DIR

# Shapes shared by every tiny model: 4 query heads over 2 KV heads exercise grouped-query attention.
_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
}
# Per-architecture settings on top of _COMMON. Several configs default head_dim to the full-size
# model's value (128 or 256) instead of hidden_size // num_attention_heads, so it is pinned here.
_ARCHS: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    "llama": (LlamaConfig, {}),
    "qwen2": (Qwen2Config, {}),
    "qwen3": (Qwen3Config, {"head_dim": 16}),
    "mistral": (MistralConfig, {"head_dim": 16}),
    "mixtral": (MixtralConfig, {"num_local_experts": 4, "num_experts_per_tok": 2}),
    # a dense first layer (mlp_only_layers) and a shared expert beside the routed ones, as Qwen1.5-MoE has
    "qwen2_moe": (
        Qwen2MoeConfig,
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 64,
            "mlp_only_layers": [0],
        },
    ),
    "gemma": (GemmaConfig, {"head_dim": 16}),
    # Gemma 2 alternates sliding-window and global layers; a short window keeps both paths distinct.
    "gemma2": (Gemma2Config, {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 256}),
    "phi3": (Phi3Config, {}),
    "glm4": (Glm4Config, {"head_dim": 16}),
}
TINY_ARCHS: tuple[str, ...] = tuple(_ARCHS)
"""Architectures :func:`make_tiny_model` can build; each name is the config's ``model_type``."""

# The tokenizer files make_tiny_model copies; chat_template.jinja is where transformers 5 keeps it.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


def tiny_tokenizer_dir() -> Path:
    """The folder of the shipped tiny tokenizer (and tiny Llama): ``data/models/tiny_llama``."""
    return MODEL_DIR / "tiny_llama"


def tiny_config(arch: str, tokenizer_dir: str | Path | None = None) -> PretrainedConfig:
    """The config of a tiny ``arch`` model whose vocabulary and special ids match the tokenizer.

    Args:
        arch: One of :data:`TINY_ARCHS`.
        tokenizer_dir: Folder with the tokenizer; defaults to :func:`tiny_tokenizer_dir`.

    Raises:
        ConfigError: If ``arch`` is unknown.
    """
    if arch not in _ARCHS:
        raise ConfigError(f"make_tiny_model: unknown arch {arch!r}; expected one of {', '.join(TINY_ARCHS)}.")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or tiny_tokenizer_dir())
    config_cls, extra = _ARCHS[arch]
    return config_cls(
        **_COMMON,
        **extra,
        # Rounded up like real checkpoints pad their vocabularies; the spare rows are never produced.
        vocab_size=math.ceil(len(tokenizer) / 64) * 64,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def make_tiny_model(arch: str, path: str | Path, *, seed: int = 0, tokenizer_dir: str | Path | None = None) -> Path:
    """Write a random-init tiny ``arch`` model, with the tiny tokenizer, to ``path``.

    The same ``arch`` and ``seed`` always give identical weights; the caller's global torch RNG
    state is left untouched.

    Args:
        arch: One of :data:`TINY_ARCHS` (``"llama"``, ``"qwen2"``, ...).
        path: Output folder; created if missing, existing model files are overwritten.
        seed: Seed of the random initialisation.
        tokenizer_dir: Folder with the tokenizer to copy and size the vocabulary from; defaults to
            :func:`tiny_tokenizer_dir`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`, loadable with ``AutoModelForCausalLM`` and
        ``AutoTokenizer``.

    Raises:
        ConfigError: If ``arch`` is unknown or ``tokenizer_dir`` holds no ``tokenizer.json``.
    """
    tokenizer_dir = Path(tokenizer_dir or tiny_tokenizer_dir())
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise ConfigError(
            f"make_tiny_model: no tokenizer.json in {tokenizer_dir}; pass tokenizer_dir= a folder with one, "
            "or rebuild the shipped one with `python tools/make_tiny_model.py`."
        )
    config = tiny_config(arch, tokenizer_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    for name in _TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, path / name)
    return path
