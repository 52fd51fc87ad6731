"""Packed rows: how they are described, which attention keeps their samples apart, and the check.

The contract. A packed row holds several whole samples; the collator describes the batch's layout with
``cu_seq_lens``: the cumulative segment boundaries over the flattened ``(batch * width)`` tokens, int32,
one segment per sample and one per row's padding tail (the layout flash-attention's varlen kernels and
transformers' ``cu_seq_lens_q/k`` keyword arguments use). ``position_ids`` restart at 0 in every segment
(RoPE needs them). Unpacked rows are one segment of real tokens plus one of padding.

Who honours it:

- ``xtune_varlen`` (registered here in transformers' ``AttentionInterface``, so any model that goes through
  that interface can use it; nothing is patched into model classes): attention per segment. On a CPU, and
  for softcapped/windowed segments, a loop over segments of causal attention with no mask (sdpa's fast
  path); on CUDA in fp16/bf16, torch's ``varlen_attn`` over all segments in one call. Without
  ``cu_seq_lens`` (generation, a batch from elsewhere) it is sdpa with transformers' own mask.
- ``flash_attention_2/3``: transformers passes ``cu_seq_lens_q/k`` to flash-attn's varlen kernel.
- ``sdpa``, ``eager``, ``flex_attention``: transformers builds a block-diagonal mask from the restarting
  ``position_ids`` (a dense ``width x width`` mask for sdpa/eager: correct, but slower).
- Remote code (``trust_remote_code``) runs its own attention: :func:`check_packing` probes it at build
  time (perturb one packed sample, the other's logits must not move) and refuses packing if it leaks.

``auto`` picks ``xtune_varlen`` where measured faster (the CPU; see docs/benchmarks.md) for models that
use the interface, and leaves transformers' choice elsewhere.
"""

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from xtune.errors import ConfigError

VARLEN = "xtune_varlen"
# xtune's implementations that read cu_seq_lens (xtune_ulysses: sequence parallelism, over xtune_varlen)
SEGMENT_READERS = frozenset({VARLEN, "xtune_ulysses"})
# Implementations whose masking keeps packed samples apart when the model uses transformers' interface.
HONOURS_PACKING = frozenset(
    {*SEGMENT_READERS, "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4"}
)


def segments_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """``cu_seq_lens`` of rows whose positions restart at 0 for each segment (int32, on their device)."""
    flat = position_ids.reshape(-1)
    starts = flat == 0
    starts[:: position_ids.size(-1)] = True  # every row starts a segment, whatever its first position
    bounds = starts.nonzero().squeeze(1)
    end = torch.tensor([flat.numel()], device=flat.device)
    return torch.cat([bounds, end]).to(torch.int32)


def segments_from_right_padding(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """``cu_seq_lens`` of right-padded rows (real tokens, then padding); None for any other mask."""
    width = attention_mask.size(-1)
    real = attention_mask.sum(dim=-1)
    if not torch.equal(attention_mask.bool(), torch.arange(width, device=real.device) < real[:, None]):
        return None
    ends = (
        torch.stack([real, torch.full_like(real, width)], dim=1)
        + width * torch.arange(len(real), device=real.device)[:, None]
    )
    bounds = torch.cat([ends.new_zeros(1), ends.reshape(-1)])
    return torch.unique_consecutive(bounds).to(torch.int32)  # full rows have no padding segment


def _segment_attention(q, k, v, scaling, dropout, window, softcap, training):
    """Causal attention of one segment; ``q`` is ``(heads, tokens, dim)``, ``k``/``v`` may have fewer heads."""
    q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
    length = q.size(2)
    gqa = k.size(1) != q.size(1)
    if softcap is None and (window is None or length <= window):
        # No mask at all: the causal fast path (flash kernel on a CPU).
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa
        )[0]
    index = torch.arange(length, device=q.device)
    allowed = index[None, :] <= index[:, None]
    if window is not None:
        allowed &= index[None, :] > index[:, None] - window
    if softcap is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scaling, enable_gqa=gqa
        )[0]
    # Soft-capped scores (Gemma 2): the eager computation, as transformers' eager path does it.
    groups = q.size(1) // k.size(1)
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = F.dropout(weights, p=dropout, training=training)
    return torch.matmul(weights, v)[0]


@torch.compiler.disable  # a loop over data-dependent segments: run eagerly inside compiled layers
def _segments_loop(module, query, key, value, cu_seq_lens, scaling, dropout, window, softcap):
    """Row by row (``unbind``), segment by segment (``split``): views whose backward passes are one
    ``stack`` and one ``cat`` per row, where slicing would write a zero tensor of the whole batch per
    segment."""
    width = query.size(2)
    bounds = cu_seq_lens.tolist()
    rows = []
    for row, (q, k, v) in enumerate(zip(query.unbind(0), key.unbind(0), value.unbind(0), strict=True)):
        start = row * width
        cuts = sorted({0, width, *(b - start for b in bounds if start < b < start + width)})
        lengths = [end - begin for begin, end in zip(cuts, cuts[1:], strict=False)]
        parts = [
            _segment_attention(*segment, scaling, dropout, window, softcap, module.training)
            for segment in zip(q.split(lengths, 1), k.split(lengths, 1), v.split(lengths, 1), strict=True)
        ]
        rows.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
    return torch.stack(rows).transpose(1, 2)  # (batch, width, heads, dim), as transformers' functions return


def _eager_masked(query, key, value, attention_mask, module, scaling, dropout, window, softcap):
    """Soft-capped attention of whole rows under transformers' mask (bool: True attends; or additive)."""
    if attention_mask is None:
        batch, _, width, _ = query.shape
        rows = torch.arange(0, (batch + 1) * width, width, dtype=torch.int32, device=query.device)
        return _segments_loop(module, query, key, value, rows, scaling, dropout, window, softcap)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    scores = torch.tanh(scores / softcap) * softcap
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous()


def _varlen_cuda(module, query, key, value, cu_seq_lens, max_length, scaling, window):
    from torch.nn.attention.varlen import varlen_attn

    batch, heads, width, dim = query.shape
    flat = [t.transpose(1, 2).reshape(batch * width, t.size(1), dim) for t in (query, key, value)]
    left = -1 if window is None else window - 1  # transformers' window W: a query sees itself and W - 1 before
    out = varlen_attn(
        *flat, cu_seq_lens, cu_seq_lens, max_length, max_length, scale=scaling, window_size=(left, 0),
        enable_gqa=flat[1].size(1) != heads,
    )  # fmt: skip
    return out.reshape(batch, width, heads, dim)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention within each segment of ``cu_seq_lens_q``; without it, sdpa with the given mask.

    Shapes as transformers' attention functions: ``query`` ``(batch, heads, width, dim)`` in,
    ``(batch, width, heads, dim)`` out.
    """
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    dropout = dropout if module.training else 0.0
    if cu_seq_lens_q is None:
        if softcap is not None:  # no sdpa kernel soft-caps
            return _eager_masked(query, key, value, attention_mask, module, scaling, dropout, sliding_window, softcap)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    use_kernel = (
        query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and softcap is None and not dropout
        and max_length_q is not None
    )  # fmt: skip
    if use_kernel:
        return _varlen_cuda(module, query, key, value, cu_seq_lens_q, max_length_q, scaling, sliding_window), None
    return _segments_loop(module, query, key, value, cu_seq_lens_q, scaling, dropout, sliding_window, softcap), None


AttentionInterface.register(VARLEN, varlen_attention_forward)
# Masks, when transformers builds them (generation, unpacked batches without cu_seq_lens), as for sdpa.
AttentionMaskInterface.register(VARLEN, sdpa_mask)


# ----------------------------------------------------------------------------------------- choosing
def uses_attention_interface(causal_lm) -> bool:
    """Whether the model's attention goes through transformers' ``AttentionInterface`` (native models do;
    remote code may not, then registered implementations never reach it)."""
    return type(causal_lm).__module__.startswith("transformers.") and causal_lm._can_set_attn_implementation()


def choose_attention(causal_lm, requested: str) -> str:
    """Set the model's attention implementation for training; returns the one in use.

    ``auto``: ``xtune_varlen`` on a machine without CUDA for models that use the interface (measured
    faster there than sdpa's dense masks); otherwise transformers' own choice, as loaded.
    """
    if requested == "auto" and not torch.cuda.is_available() and uses_attention_interface(causal_lm):
        causal_lm.set_attn_implementation(VARLEN)
    return causal_lm.config._attn_implementation


def attention_inputs(
    implementation: str,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    cu_seq_lens: torch.Tensor | None,
) -> dict:
    """The mask-related model inputs for a batch: segments for implementations that read them, else the
    masks transformers builds itself (``attention_mask``, or packed ``position_ids`` with no mask).

    Packed rows without ``cu_seq_lens`` (a batch not from xtune's collator) get it from ``position_ids``.
    """
    if cu_seq_lens is None and position_ids is not None and attention_mask is None:
        cu_seq_lens = segments_from_positions(position_ids)
    elif cu_seq_lens is None and attention_mask is not None and implementation in SEGMENT_READERS:
        cu_seq_lens = segments_from_right_padding(attention_mask)
    reads_segments = implementation in SEGMENT_READERS or implementation.startswith("flash_attention")
    if cu_seq_lens is None or not reads_segments:
        return {"attention_mask": attention_mask, "position_ids": position_ids}
    inputs = {"position_ids": position_ids, "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens}
    if implementation in SEGMENT_READERS:
        # An all-true padding mask lets transformers skip building a mask (sdpa's causal skip); padding
        # is a segment of its own, so nothing needs masking.
        width = (position_ids if position_ids is not None else attention_mask).shape
        inputs["attention_mask"] = torch.ones(width, dtype=torch.bool, device=cu_seq_lens.device)
    if cu_seq_lens.is_cuda or implementation not in SEGMENT_READERS:  # kernels need the longest segment (one host sync)
        longest = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
        inputs["max_length_q"] = inputs["max_length_k"] = longest
    return inputs


def _probe_rows(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, min(vocab, 1000), (2, 16), generator=generator)
    ids[1, 8:] = ids[0, 8:]  # the second sample is the same in both rows; the first differs
    return ids, torch.arange(8).repeat(2).expand(2, -1)


@torch.no_grad()
def packing_leaks(causal_lm) -> bool:
    """Whether packed samples see each other in this model: two rows packing two 8-token samples, the first
    sample different, the second the same; its logits must agree."""
    parameter = next(causal_lm.parameters())
    ids, positions = _probe_rows(causal_lm.config.vocab_size)
    was_training = causal_lm.training
    causal_lm.eval()
    try:
        logits = causal_lm(input_ids=ids.to(parameter.device), position_ids=positions.to(parameter.device),
                           use_cache=False).logits.float()  # fmt: skip
    finally:
        causal_lm.train(was_training)
    second = logits[:, 8:]
    tolerance = 16 * torch.finfo(parameter.dtype).eps * float(second.abs().max())
    return bool((second[0] - second[1]).abs().max() > tolerance)


def check_packing(causal_lm, implementation: str) -> None:
    """Refuse packed rows where the model's attention cannot keep their samples apart.

    Models that use transformers' interface with an implementation in :data:`HONOURS_PACKING` pass as
    they are; anything else (remote code, other implementations) is probed with :func:`packing_leaks`.

    Raises:
        ConfigError: The probe saw one sample attend to another, or the model cannot be probed.
    """
    if uses_attention_interface(causal_lm) and implementation in HONOURS_PACKING:
        return
    name = f"{type(causal_lm).__name__} ({type(causal_lm).__module__}, attention '{implementation}')"
    if any(hasattr(p, "ds_id") for p in causal_lm.parameters()):
        raise ConfigError(
            f"pack_to_max_length=True, but {name} runs its own attention code and its weights are ZeRO-3 "
            "partitioned, so xtune cannot check that packed samples stay apart. Set pack_to_max_length=False, "
            "or train without ZeRO-3."
        )
    if packing_leaks(causal_lm):
        raise ConfigError(
            f"pack_to_max_length=True, but in {name} packed samples attend to each other: its attention "
            "ignores the restarting position_ids that separate them, so every sample would train on its "
            "neighbours' text. Set pack_to_max_length=False (each row one sample, padded)."
        )
