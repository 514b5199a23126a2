"""Sharding for several processes that reproduces one process: the same global batches, split across ranks.

Training draws global batches from one seeded permutation per epoch and gives rank r every N-th index of
each (`GlobalBatchSampler`); validation gives each rank every N-th example without the padding a stock
`DistributedSampler` adds (`ShardSampler`). A loss that is a mean over a batch's items becomes, on each
rank, its local sum over the global count times N (`global_mean_scale`), because DDP averages gradients
over processes: the averaged gradient is then the one-process gradient of the whole global batch.
"""
from __future__ import annotations

import os
from typing import Hashable, Optional, Sequence

import torch
from torch.utils.data import DistributedSampler


def world_and_rank(trainer) -> tuple[int, int]:
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)


def share_cpu_threads(trainer, device) -> None:
    """Several CPU processes share the cores instead of each taking all of them."""
    if trainer.world_size > 1 and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // trainer.world_size))


def all_sum(trainer, value: torch.Tensor) -> torch.Tensor:
    """Sum over processes (identity on one or without a trainer)."""
    if trainer is None or trainer.world_size == 1:
        return value
    return trainer.strategy.reduce(value.detach().clone(), reduce_op="sum")


def global_mean_scale(trainer, local_count: torch.Tensor) -> torch.Tensor:
    """Factor turning a local mean over `local_count` items into this rank's share of the global mean:
    local_count · N / global_count (1 on one process)."""
    if trainer is None or trainer.world_size == 1:
        return torch.ones((), dtype=local_count.dtype, device=local_count.device)
    return local_count * trainer.world_size / all_sum(trainer, local_count).clamp(min=1e-12)


class GlobalBatchSampler(DistributedSampler):
    """Shuffled global batches of `batch_size`, the same for any number of processes, each split across ranks.

    Every epoch draws one permutation (seed + epoch); consecutive runs of `batch_size` indices form the
    global batches, an incomplete last one is dropped, and rank r takes every N-th index of each. A set
    smaller than one batch is repeated to fill one. With `clusters` (an id per index), indices sharing an id
    stay adjacent: the clusters are permuted, then the members within each, so a batch spans as few
    clusters as their sizes allow (work shared within a cluster, such as a conversation's prefix, is done
    once per batch).
    """

    def __init__(self, dataset, batch_size: int, num_replicas: int, rank: int, seed: int,
                 clusters: Optional[Sequence[Hashable]] = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.global_batch = batch_size
        if clusters is not None and len(clusters) != len(dataset):
            raise ValueError(f"{len(clusters)} cluster ids for {len(dataset)} examples")
        self.members = None
        if clusters is not None:
            members: dict = {}
            for i, c in enumerate(clusters):
                members.setdefault(c, []).append(i)
            self.members = list(members.values())

    def _permutation(self, g: torch.Generator) -> list[int]:
        if self.members is None:
            return torch.randperm(len(self.dataset), generator=g).tolist()
        perm = []
        for c in torch.randperm(len(self.members), generator=g).tolist():
            cluster = self.members[c]
            perm += [cluster[j] for j in torch.randperm(len(cluster), generator=g).tolist()]
        return perm

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        perm = self._permutation(g)
        while perm and len(perm) < self.global_batch:
            perm += self._permutation(g)
        for start in range(0, len(perm) - self.global_batch + 1, self.global_batch):
            yield from perm[start:start + self.global_batch][self.rank::self.num_replicas]

    def __len__(self) -> int:
        return max(1, len(self.dataset) // self.global_batch) * (self.global_batch // self.num_replicas)


class ShardSampler(DistributedSampler):
    """Rank r of N gets examples r, r+N, ... in order, with no padding (validation)."""

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))
