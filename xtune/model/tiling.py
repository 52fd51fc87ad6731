"""``tiled_mlp``: each decoder layer's MLP runs over tiles of the sequence (DeepSpeed's ``TiledMLP``).

At long rows the MLP's intermediate tensors (gate, up, the activation, their product: ``4 x tokens x
intermediate``) are the largest thing a layer holds while its backward runs; for Llama-3-8B in bf16 that is
112 KiB per token, 7 GiB at 65,536 tokens. DeepSpeed's ``TiledMLP`` autograd function keeps only the MLP's
input and recomputes the MLP tile by tile in the backward pass, so only one tile's intermediates exist at a
time. The numbers are those of the untiled MLP (each token's MLP output depends on that token alone).

Each layer's ``mlp`` is replaced by :class:`TiledMLP`, a module that holds the same children under the same
names (state-dict keys and checkpoints are unchanged) and calls the original module's own ``forward`` per
tile; no model class is patched.

One device only: the tile-by-tile backward adds each weight's gradient once per tile, which DDP counts as
a gradient reported twice.
"""

from __future__ import annotations

import math

import torch

from xtune.errors import ConfigError


class TiledMLP(torch.nn.Module):
    """An MLP module run over tiles of ``tokens`` tokens of the sequence in training.

    Args:
        mlp: The layer's MLP (its ``forward`` maps ``(batch, seq, hidden)`` to the same shape, token by token).
        tokens: Tokens per tile.
    """

    def __init__(self, mlp: torch.nn.Module, tokens: int) -> None:
        super().__init__()
        for name, child in mlp.named_children():
            self.add_module(name, child)  # the same modules under the same names: state-dict keys unchanged
        for name, param in mlp.named_parameters(recurse=False):
            self.register_parameter(name, param)
        object.__setattr__(self, "_mlp_forward", mlp.forward)  # not a child: its weights are ours already
        self.tokens = tokens

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP as TiledMLPFunction

        tiles = math.ceil(hidden_states.shape[-2] / self.tokens)
        if tiles <= 1 or not torch.is_grad_enabled():
            return self._mlp_forward(hidden_states)
        trainable = [p for p in self.parameters() if p.requires_grad]
        return TiledMLPFunction.apply(lambda _, x: self._mlp_forward(x), self, hidden_states, tiles, trainable)


def tile_mlps(causal_lm, tokens: int) -> int:
    """Replace every decoder layer's ``mlp`` of ``causal_lm`` by a :class:`TiledMLP`; returns how many.

    Raises:
        ConfigError: Several ranks are training, or a layer has no dense ``mlp`` (a mixture of experts).
    """
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        raise ConfigError(
            f"tiled_mlp={tokens} is for training on one device: its tile-by-tile backward reports each weight's "
            "gradient once per tile, which data parallelism cannot sum. Set tiled_mlp=0, or train on one GPU "
            "(several GPUs: sequence_parallel_size splits the row instead)."
        )
    layers = causal_lm.get_decoder().layers
    for index, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        name = type(mlp).__name__
        if mlp is None or not name.endswith("MLP") or "Moe" in name or "Sparse" in name:
            raise ConfigError(
                f"tiled_mlp={tokens}: decoder layer {index} of {type(causal_lm).__name__} has no dense MLP "
                f"(found {name}). Set tiled_mlp=0 for this model."
            )
        if not isinstance(mlp, TiledMLP):
            layer.mlp = TiledMLP(mlp, tokens)
    return len(layers)
