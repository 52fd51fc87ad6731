"""The files around the weights of an exported model: tokenizer, generation config, config copy."""

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import GenerationConfig
from transformers.utils.hub import convert_file_size_to_int

from xtune.chat.stopping import stop_token_ids, template_stop_words
from xtune.errors import XtuneError

CONFIG_COPY = "xtune_config.py"
"""Name of the training config copied next to converted weights."""

# Files that mark a folder as holding a tokenizer (transformers 5 writes tokenizer_config.json always).
_TOKENIZER_MARKERS = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


def check_shard_size(max_shard_size: str) -> str:
    """Validate a ``--max-shard-size`` value such as ``5GB`` or ``500MB``.

    Raises:
        XtuneError: The value is not a size.
    """
    try:
        if convert_file_size_to_int(max_shard_size) <= 0:
            raise ValueError
    except ValueError:
        raise XtuneError(f"--max-shard-size must be a size like 5GB, 500MB or 2GiB; got '{max_shard_size}'.") from None
    return max_shard_size


def has_tokenizer(folder: str | Path) -> bool:
    """Whether ``folder`` is a local folder with tokenizer files in it."""
    return any((Path(folder) / name).is_file() for name in _TOKENIZER_MARKERS)


def generation_config_for(model, tokenizer, template: str) -> GenerationConfig:
    """The model's generation config, with the template's single-token stop words as extra EOS ids.

    A base model trained on a chat template ends its turns with the template's end token (``<|im_end|>``,
    ``<|eot_id|>``), which its own generation config may not list; servers that read
    ``generation_config.json`` (transformers, vLLM) would then run past the answer.
    """
    config = getattr(model, "generation_config", None)
    config = copy.deepcopy(config) if config is not None else GenerationConfig.from_model_config(model.config)
    eos = config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None:
        eos.append(tokenizer.eos_token_id)
    eos += stop_token_ids(tokenizer, template_stop_words(tokenizer, template))
    eos = list(dict.fromkeys(eos))
    config.eos_token_id = eos[0] if len(eos) == 1 else eos or None
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    return config


def write_config_copy(folder: Path, config_text: str, source: str) -> None:
    """Write the training config next to the weights, so the folder says how it was made."""
    header = f"# The training config of this model ({source}), written by `xtune convert`.\n"
    (folder / CONFIG_COPY).write_text(header + config_text, encoding="utf-8")


def safetensors_to_bin(folder: Path) -> None:
    """Rewrite ``model*.safetensors`` (and their index) as PyTorch ``pytorch_model*.bin`` files.

    transformers 5 writes only safetensors; this serves tools that still want the older format.
    """
    shards = sorted(folder.glob("model*.safetensors"))
    renames = {}
    for shard in shards:
        target = "pytorch_model" + shard.name[len("model") : -len(".safetensors")] + ".bin"
        torch.save(load_file(shard), folder / target)
        shard.unlink()
        renames[shard.name] = target
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {key: renames.get(name, name) for key, name in data["weight_map"].items()}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(data, indent=2) + "\n")
        index.unlink()
