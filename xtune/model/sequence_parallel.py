"""Ulysses sequence parallelism (``sequence_parallel_size = s``): one sequence split over ``s`` ranks.

Design. Ranks ``[g*s, (g+1)*s)`` form sequence-parallel group ``g``; groups are the data-parallel
replicas, so the data-parallel size is ``world / s``.

- Data: every rank of a group draws the same micro-batch (the sampler is told rank ``rank // s`` of
  ``world / s``), pads its width to a multiple of ``s`` and keeps its own contiguous slice of every row
  (:func:`shard_batch`): ``input_ids``, ``position_ids`` (restarting per sample, so RoPE is right on
  every shard) and ``shift_labels`` (labels shifted *before* slicing, so the token at a shard's end still
  predicts the next shard's first token). ``cu_seq_lens`` stays that of the whole rows.
- Attention: ``xtune_ulysses``, registered in transformers' ``AttentionInterface`` (no model class is
  patched). Given a shard it runs DeepSpeed's ``UlyssesSPAttentionHF``: all-to-all scatters heads and
  gathers the sequence, the core attention (``xtune_varlen``, or flash-attention's varlen kernels) runs
  per sample on the full sequence with the global ``cu_seq_lens`` (no sample attends to another), and a
  second all-to-all gives every rank its slice back with all heads. Anything else (generation,
  validation on whole rows, the packing probe) goes straight to the core attention.
- Loss: each rank sums the token losses of its shard and counts its shard's trained tokens; the loop
  all-reduces the counts over the world, so the count is the step's true total. DDP/ZeRO average
  gradients over all ``world`` ranks and the loop multiplies by ``world``: the gradient is the sum over
  shards and groups divided by the step's tokens, the same as without SP (tests/engine/test_sequence_parallel.py).

DeepSpeed's ``UlyssesSPDataLoaderAdapter`` is not used: it gathers ``s`` different batches and feeds them
in turn (``s`` times the micro-batches), which would change what an iteration, a resume skip and
``accumulative_counts`` mean. Sharding the one batch a group shares keeps them as without SP.
"""

from __future__ import annotations

import math
import weakref

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from xtune.dataset.encode import IGNORE_INDEX
from xtune.errors import ConfigError
from xtune.model.attention import VARLEN, segments_from_positions

SEQUENCE_PARALLEL = "xtune_ulysses"
# Core attentions that keep packed samples apart with cu_seq_lens over the gathered sequence.
CORE_ATTENTIONS = (VARLEN, "flash_attention_2", "flash_attention_3")


class _State:
    """This process's sequence-parallel setup (one per process, like torch.distributed's groups)."""

    size = 1
    group = None
    core = VARLEN
    modules: dict = {}  # UlyssesSPAttentionHF per micro-batch size
    last: tuple = (None, False)  # (weak reference to the last cu_seq_lens seen, whether it described shards)


def sequence_parallel_size() -> int:
    return _State.size


def process_groups() -> list:
    """The process groups this process's sequence-parallel setup made (none without one)."""
    return [_State.group] if _State.group is not None else []


def reset() -> None:
    """Forget this process's sequence-parallel setup (its groups were destroyed at the end of a run)."""
    _State.size, _State.group, _State.core, _State.modules, _State.last = 1, None, VARLEN, {}, (None, False)


def data_parallel_info(size: int) -> tuple[int, int]:
    """``(data-parallel rank, data-parallel size)`` of this process when ``size`` ranks share a sequence.

    Raises:
        ConfigError: The world size is not a multiple of ``size``.
    """
    from mmengine.dist import get_dist_info

    rank, world = get_dist_info()
    if world % size:
        raise ConfigError(
            f"sequence_parallel_size={size} must divide the number of ranks, which is {world}: every group of "
            f"{size} ranks shares one sequence. Set NPROC_PER_NODE (x NNODES) to a multiple of {size}, or set "
            f"sequence_parallel_size to a divisor of {world}."
        )
    return rank // size, world // size


def check_model(causal_lm, size: int, implementation: str) -> str:
    """The core attention to run under sequence parallelism, after checking the model can be split.

    Raises:
        ConfigError: Heads or KV heads do not divide by ``size``, the model's attention does not go through
            transformers' interface, or the chosen implementation cannot keep packed samples apart.
    """
    from xtune.model.attention import uses_attention_interface

    config = causal_lm.config.get_text_config()
    name = type(causal_lm).__name__
    if not uses_attention_interface(causal_lm):
        raise ConfigError(
            f"sequence_parallel_size={size}: {name} ({type(causal_lm).__module__}) runs its own attention code, "
            "which xtune cannot wrap with the Ulysses all-to-all. Set sequence_parallel_size=1 (long rows on one "
            "device: gradient_checkpointing, activation_offload), or use a model transformers implements natively."
        )
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads % size:
        raise ConfigError(
            f"sequence_parallel_size={size} must divide the model's attention heads, {heads} ({name}): each rank "
            f"computes attention for heads/{size} of them. Use a sequence_parallel_size that divides {heads}."
        )
    if kv_heads % size and size % kv_heads:
        raise ConfigError(
            f"sequence_parallel_size={size} and the model's {kv_heads} key/value heads ({name}) must divide one "
            f"another (KV heads are split over ranks, or copied when there are fewer than ranks). Use a "
            f"sequence_parallel_size that divides {kv_heads} or is a multiple of it."
        )
    if implementation in ("auto", VARLEN, SEQUENCE_PARALLEL):
        return VARLEN
    if implementation in CORE_ATTENTIONS:
        return implementation
    raise ConfigError(
        f"sequence_parallel_size={size} with attn_implementation='{implementation}': under sequence parallelism "
        "attention runs on the gathered sequence and must keep samples apart by their boundaries. Set "
        f"attn_implementation to 'auto' (xtune_varlen) or one of {', '.join(CORE_ATTENTIONS[1:])}."
    )


def setup(causal_lm, size: int, implementation: str) -> str:
    """Make ``causal_lm`` train with sequences split over groups of ``size`` ranks; returns ``xtune_ulysses``.

    Creates the process groups (DeepSpeed's ``parallel_state_sp``, on the running torch.distributed world)
    and sets the model's attention implementation.
    """
    import deepspeed.comm as ds_dist
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as groups
    import torch.distributed as dist

    core = check_model(causal_lm, size, implementation)
    data_parallel_info(size)  # the world divides
    if not dist.is_initialized():
        raise ConfigError(
            f"sequence_parallel_size={size} needs several ranks: start training with NPROC_PER_NODE={size} "
            "(or more, a multiple of it)."
        )
    if not ds_dist.is_initialized():
        ds_dist.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
    if groups._SEQUENCE_PARALLEL_GROUP is None:
        groups.initialize_sequence_parallel(size)
    _State.size, _State.group, _State.core, _State.modules = size, groups.get_sequence_parallel_group(), core, {}
    causal_lm.set_attn_implementation(SEQUENCE_PARALLEL)
    return SEQUENCE_PARALLEL


# ----------------------------------------------------------------------------------------- data
def shard_batch(batch: dict, rank: int, size: int) -> dict:
    """Rank ``rank``'s slice (of ``size``) of a collated SFT batch; see the module docstring.

    Unpacked rows (``attention_mask``) become one segment of real tokens and one of padding, with
    positions counted from 0 in each; the width is padded to a multiple of ``size`` with ignored labels.
    """
    input_ids, labels = batch["input_ids"], batch["labels"]
    rows, width = input_ids.shape
    num_tokens = batch.get("num_tokens")
    if num_tokens is None:  # pair batches: right-padded rows
        num_tokens = batch["attention_mask"].sum(dim=1)
    positions = batch.get("position_ids")
    if positions is None:
        real = batch["attention_mask"].sum(dim=1, keepdim=True)
        index = torch.arange(width).expand(rows, -1)
        positions = torch.where(index < real, index, index - real)
    padded = math.ceil(width / size) * size
    extra = padded - width
    if extra:
        tail = positions[:, -1:] + 1 + torch.arange(extra)  # the padding tail goes on counting
        ends_sample = num_tokens.reshape(-1, 1) >= width  # a full row: the padding is a new segment
        tail = torch.where(ends_sample, torch.arange(extra).expand(rows, -1), tail)
        positions = torch.cat([positions, tail], dim=1)
        input_ids = torch.cat([input_ids, input_ids.new_zeros(rows, extra)], dim=1)
        labels = torch.cat([labels, labels.new_full((rows, extra), IGNORE_INDEX)], dim=1)
    shift_labels = torch.cat([labels[:, 1:], labels.new_full((rows, 1), IGNORE_INDEX)], dim=1)
    cu_seq_lens = batch.get("cu_seq_lens")
    if cu_seq_lens is None or extra or "position_ids" not in batch:
        cu_seq_lens = segments_from_positions(positions)
    part = slice(rank * padded // size, (rank + 1) * padded // size)
    real = num_tokens.reshape(-1) - part.start
    ends_here = (real > 0) & (real <= padded // size)  # this slice holds the row's last real token
    out = {key: value for key, value in batch.items() if key not in ("labels", "attention_mask")}
    out.update(
        input_ids=input_ids[:, part].contiguous(),
        position_ids=positions[:, part].contiguous(),
        shift_labels=shift_labels[:, part].contiguous(),
        cu_seq_lens=cu_seq_lens,  # of the whole rows: attention runs on the gathered sequence
        num_tokens=real.clamp(0, padded // size),  # real tokens in this slice (a prefix of it)
        ends_here=ends_here,  # the rm stage reads each row's score there
    )
    return out


def sum_over_group(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` (per-row sums of the slices) over this rank's sequence-parallel group.

    Every rank of a group then computes the same whole-sequence loss (DPO, KTO, ...). The accounting: each
    rank counts the batch's pairs, so the loop's all-reduced count is ``s`` times the step's pairs and each
    rank's loss is ``1/s`` of that batch's (the loss logged is that of one process); the backward of this
    all-reduce sums the group's gradients, ``s`` copies, which makes the step's gradient whole again
    (tests/engine/test_sequence_parallel.py checks weights and logged losses against one process).
    """
    import torch.distributed.nn.functional as distributed

    return distributed.all_reduce(tensor, group=_State.group)


def group_mean_value(loss: torch.Tensor) -> torch.Tensor:
    """``loss`` with the value of its mean over the group and its own gradient.

    A slice's token-loss share says little on its own (one slice may hold only a prompt); the mean over the
    group is what a rank of plain data parallelism logs for the same rows. Every rank of a group then also
    sees the same value, so a non-finite loss stops them all at the same step.
    """
    import torch.distributed as dist

    total = loss.detach().clone()
    dist.all_reduce(total, group=_State.group)
    return loss + (total / _State.size - loss.detach())


def unsharded(collate_fn):
    """The collate function under :class:`ShardingCollate`, for passes over whole rows on every rank
    (reference log-probs)."""
    return collate_fn.collate_fn if isinstance(collate_fn, ShardingCollate) else collate_fn


class ShardingCollate:
    """A collate function followed by :func:`shard_batch` for this rank (picklable for worker processes)."""

    def __init__(self, collate_fn, rank: int, size: int) -> None:
        self.collate_fn, self.rank, self.size = collate_fn, rank, size

    def __call__(self, items: list) -> dict:
        batch = self.collate_fn(items)
        if "labels" not in batch or "input_ids" not in batch:
            raise ConfigError(
                f"sequence_parallel_size={self.size} splits rows of token ids and labels; "
                f"this stage's batches hold {sorted(batch)}. Set sequence_parallel_size=1 for it."
            )
        return shard_batch(batch, self.rank, self.size)


def adapt_dataloader(dataloader, size: int):
    """Make a training dataloader feed sequence-parallel groups: every rank of a group the same samples
    (the sampler becomes that of the group's data-parallel rank), each rank its slice of them."""
    from mmengine.dist import get_rank

    dp_rank, dp_size = data_parallel_info(size)
    sampler = dataloader.sampler
    if not hasattr(sampler, "world_size") or not hasattr(sampler, "num_samples"):
        raise ConfigError(
            f"sequence_parallel_size={size} needs a sampler that deals samples to ranks (DefaultSampler, "
            f"LengthGroupedSampler); train_dataloader.sampler is {type(sampler).__name__}."
        )
    sampler.rank, sampler.world_size = dp_rank, dp_size
    length = len(sampler.lengths) if hasattr(sampler, "lengths") else len(sampler.dataset)
    if getattr(sampler, "round_up", True):
        sampler.num_samples = math.ceil(length / dp_size)
        sampler.total_size = sampler.num_samples * dp_size
    else:
        sampler.num_samples = math.ceil((length - dp_rank) / dp_size)
        sampler.total_size = length
    dataloader.collate_fn = ShardingCollate(dataloader.collate_fn, get_rank() % size, size)
    return dataloader


# ----------------------------------------------------------------------------------------- attention
def _sharded(cu_seq_lens: torch.Tensor | None, query: torch.Tensor) -> bool:
    """Whether ``cu_seq_lens`` covers ``size`` times the tokens in ``query``: its rows are shards."""
    if cu_seq_lens is None or _State.size == 1:
        return False
    seen, answer = _State.last
    if seen is None or seen() is not cu_seq_lens:  # one host read per forward pass, not per layer
        answer = int(cu_seq_lens[-1]) == query.size(0) * query.size(2) * _State.size
        _State.last = (weakref.ref(cu_seq_lens), answer)
    return answer


def _ulysses(module: torch.nn.Module, batch: int):
    """DeepSpeed's Ulysses attention around the core one, for micro-batches of ``batch`` rows."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    found = _State.modules.get(batch)
    if found is None:
        config = module.config.get_text_config()
        heads = config.num_attention_heads
        found = UlyssesSPAttentionHF(
            attn=ALL_ATTENTION_FUNCTIONS[_State.core],
            batch_size=batch,
            attn_head_count=heads,
            attn_head_size=getattr(config, "head_dim", None) or config.hidden_size // heads,
            kv_head_count=getattr(config, "num_key_value_heads", None) or heads,
            num_hidden_layers=config.num_hidden_layers,
            process_group=_State.group,
            seq_length_is_variable=True,
        )
        found.core_attn_implementation = _State.core
        _State.modules[batch] = found
    return found


def ulysses_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of a shard over the whole sequence (see the module docstring); whole rows go to the core."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if not _sharded(kwargs.get("cu_seq_lens_q"), query):
        return ALL_ATTENTION_FUNCTIONS[_State.core](module, query, key, value, attention_mask, **kwargs)
    # The mask (built for the shard's width, all true) says nothing: segments come from cu_seq_lens.
    return _ulysses(module, query.size(0))(module, query, key, value, None, **kwargs)


AttentionInterface.register(SEQUENCE_PARALLEL, ulysses_attention_forward)
AttentionMaskInterface.register(SEQUENCE_PARALLEL, sdpa_mask)
