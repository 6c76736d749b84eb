"""Data order as a pure function of (seed, epoch, step): what makes resume and DDP exact.

Epoch e visits the map-style training set in the order ``torch.randperm(n)`` drawn from a
generator seeded with ``seed`` and ``e``; step s takes global batch ``s mod steps_per_epoch``
of epoch ``s // steps_per_epoch`` (the last incomplete batch is dropped). Each rank takes its
rows of that global batch (``distributed.shard_bounds``), split into ``accum_steps``
micro-batches. Nothing here touches the global RNG.
"""
from __future__ import annotations

import torch

from loupe_core.train.distributed import shard_bounds
from loupe_core.errors import ConfigError


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """long[n]: the visiting order of epoch ``epoch``."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen)


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batches (lists of dataset indices) for steps ``start_step .. total_steps-1``.

    Each step yields ``accum_steps`` lists of ``global_batch / (world_size * accum_steps)`` indices.
    """

    def __init__(self, dataset_size: int, global_batch: int, *, seed: int, start_step: int, total_steps: int,
                 world_size: int = 1, rank: int = 0, accum_steps: int = 1):
        if global_batch > dataset_size:
            raise ConfigError(f"train.batch_size={global_batch} exceeds the training set ({dataset_size} pairs)")
        self.n = dataset_size
        self.global_batch = global_batch
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps
        self.bounds = shard_bounds(global_batch, world_size, rank, accum_steps)
        self.steps_per_epoch = dataset_size // global_batch
        self._perm, self._perm_epoch = None, None

    def global_batch_indices(self, step: int) -> torch.Tensor:
        """long[G]: the dataset indices of step ``step``'s global batch, in bank order."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._perm_epoch != epoch:
            self._perm, self._perm_epoch = epoch_permutation(self.n, self.seed, epoch), epoch
        return self._perm[pos * self.global_batch:(pos + 1) * self.global_batch]

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            rows = self.global_batch_indices(step)
            for start, stop in self.bounds:
                yield rows[start:stop].tolist()

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * len(self.bounds)
