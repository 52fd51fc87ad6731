"""``gradient_checkpointing='auto'``: on only when training would not fit in memory without it.

Checkpointing trades a second forward pass of every layer (about a third more compute) for not keeping
the layers' activations. ``auto`` keeps them whenever the estimate of a training step without
checkpointing fits the device with a margin:

    weights + gradients and Adam states of the trainable weights + activations of one micro-batch

Activations are estimated per token and layer from the tensors autograd keeps for a Llama-style block
(norm inputs and outputs, q/k/v before and after RoPE, the attention output, the MLP's gate, up,
activation and product, and a copy of each linear input for adapters), in the weights' dtype. The output
layer's logits are left out: the chunked loss never holds them whole. The estimate errs high, so ``auto``
errs towards checkpointing.
"""

import os

import torch
from mmengine.logging import print_log

from xtune.errors import ConfigError

MEMORY_MARGIN = 0.75  # share of the device's memory a step may plan to use: allocator slack, fragmentation
DEFAULT_TOKENS = 4096  # a micro-batch's tokens when the config does not say (2 rows of 2048)


def device_memory_bytes() -> int:
    """Memory of the device training runs on: this rank's GPU, or the machine's available RAM on a CPU."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", 0))).total_memory
    with open("/proc/meminfo") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields["MemAvailable"].split()[0]) * 1024


def activation_bytes(config, tokens: int, dtype_bytes: int, adapters: bool) -> int:
    """Bytes autograd keeps for ``tokens`` tokens through every decoder layer, without checkpointing."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    query = heads * head_dim
    mlp = getattr(config, "intermediate_size", None) or 4 * hidden
    experts = getattr(config, "num_experts_per_tok", None) or 1  # MoE: each token's chosen experts
    per_layer = 6 * hidden + 3 * query + 4 * kv + experts * 4 * mlp
    if adapters:  # each adapted linear keeps its (dropout-ed) input again
        per_layer += 4 * hidden + query + experts * (2 * hidden + mlp)
    return tokens * config.num_hidden_layers * per_layer * dtype_bytes


def training_bytes(model, finetune_type: str, tokens: int) -> int:
    """Estimated peak bytes of a training step of ``model`` (before adapters are added) without checkpointing."""
    parameters = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in parameters)
    dtype_bytes = max((p.element_size() for p in parameters if p.is_floating_point()), default=4)
    # gradients in the weights' dtype + two fp32 Adam states; freeze is bounded by full, adapters are small
    trainable = sum(p.numel() for p in parameters) if finetune_type in ("full", "freeze") else 0
    states = trainable * (dtype_bytes + 8)
    adapters = finetune_type in ("lora", "dora", "qlora")
    # a vision-language model: its language model's layers (image tokens are among the batch's tokens)
    return weights + states + activation_bytes(model.config.get_text_config(), tokens, dtype_bytes, adapters)


def want_checkpointing(setting: bool | str, model, finetune_type: str, tokens_per_batch: int | None) -> bool:
    """``True``/``False`` as given; ``auto``: on when :func:`training_bytes` exceeds the margin of the device."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ConfigError(f"gradient_checkpointing must be True, False or 'auto', got {setting!r}.")
    tokens = tokens_per_batch or DEFAULT_TOKENS
    need, have = training_bytes(model, finetune_type, tokens), device_memory_bytes()
    budget = MEMORY_MARGIN * have
    on = need > budget
    print_log(
        f"gradient checkpointing {'on' if on else 'off'} (auto): a step of {tokens} tokens needs about "
        f"{need / 2**30:.1f} GiB without it; {MEMORY_MARGIN:.0%} of the device is {budget / 2**30:.1f} GiB",
        logger="current",
    )
    return on


def offloaded_checkpoint(function, *args, **kwargs):
    """``torch.utils.checkpoint.checkpoint`` whose saved tensors (a checkpointed layer keeps only its inputs,
    ``tokens x hidden`` per layer) wait for the backward pass in CPU memory.

    transformers' ``activation_checkpointing_enable(offload=True)`` does the same with pinned memory always,
    which fails on a machine without an accelerator; here memory is pinned only where CUDA is. The numbers
    are unchanged: the tensors come back bit for bit.
    """
    with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, **kwargs)


def offload_checkpointed_activations(causal_lm) -> None:
    """Make the checkpointed layers of ``causal_lm`` run through :func:`offloaded_checkpoint`.

    Called once the model is final: peft's ``prepare_model_for_kbit_training`` (QLoRA) re-enables plain
    checkpointing.
    """
    causal_lm._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=offloaded_checkpoint)
