"""A sampler that batches samples of similar length together, to pad less when not packing."""

import math

import torch
from mmengine.dist import get_dist_info, sync_random_seed
from torch.utils.data import Sampler

from xtune.registry import DATA_SAMPLERS


@DATA_SAMPLERS.register_module()
class LengthGroupedSampler(Sampler):
    """Shuffle, cut into mega-batches of ``batch_size * world_size * group_size`` samples, sort each
    mega-batch by length, and deal consecutive samples to ranks. Every epoch differs (seed + epoch);
    every rank sees a disjoint share of equal size.

    Args:
        dataset: A dataset with a ``lengths`` attribute (tokens per item).
        batch_size: Per-device batch size.
        group_size: Batches per sorted mega-batch: larger pads less, smaller is more random.
        seed: Shuffle seed, shared by all ranks (default: a synchronised random seed).
    """

    def __init__(self, dataset, batch_size: int, group_size: int = 50, seed: int | None = None) -> None:
        self.rank, self.world_size = get_dist_info()
        self.lengths = list(dataset.lengths)
        self.batch_size = batch_size
        self.group_size = group_size
        self.seed = sync_random_seed() if seed is None else seed
        self.epoch = 0
        self.num_samples = math.ceil(len(self.lengths) / self.world_size)
        self.total_size = self.num_samples * self.world_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        order += order[: self.total_size - len(order)]  # pad so every rank gets as many samples
        mega = self.batch_size * self.world_size * self.group_size
        grouped = []
        for start in range(0, len(order), mega):
            grouped += sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
        # each rank takes every world_size-th batch, so a global step's batches have similar lengths
        batches = [grouped[i : i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        mine = [index for batch in batches[self.rank :: self.world_size] for index in batch]
        return iter(mine[: self.num_samples])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
