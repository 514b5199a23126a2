"""Chat-formatted SFT batches: prompt tokens masked out, target tokens (and the end-of-turn token) learned.

An example is `{"messages": [...], "target": "..."}`; its input is the tokenizer's chat template of
the messages with the generation prompt, followed by the target and the end-of-turn token, which is
exactly how the policy's reply looks at generation time. Examples longer than `max_length` are
dropped and counted (cutting a prompt would train on a conversation that never happens).

Sharding is explicit so one process and N processes see the same global batches: training draws
global batches of `batch_size` from one seeded permutation per epoch and splits each across ranks
(`GlobalBatchSampler`); validation gives each rank every N-th example without the padding a stock
`DistributedSampler` adds, so the summed validation loss equals the one-process value.
"""
from __future__ import annotations

import logging
import math

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from clicks2pref.errors import ConfigError
from clicks2pref.lit.distributed import GlobalBatchSampler, ShardSampler, world_and_rank
from clicks2pref.objectives.sft import IGNORE_INDEX, prompt_completion_labels

log = logging.getLogger(__name__)


def encode_example(tokenizer, messages: list[dict], target: str, max_length: int) -> dict | None:
    """`{"input_ids", "labels"}` of one example, or None when it exceeds max_length tokens."""
    prompt = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                           return_dict=False)
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt) + len(target_ids) > max_length:
        return None
    ids, labels = prompt_completion_labels(list(prompt), target_ids)
    return {"input_ids": ids, "labels": labels}


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad to the longest example, so every target ends at the last position and the module can
    compute logits for the last few positions only; padding is masked in attention and labels, and
    position ids count real tokens only."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, width - n:] = torch.tensor(b["input_ids"])
        labels[i, width - n:] = torch.tensor(b["labels"])
        attention[i, width - n:] = 1
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": attention, "position_ids": positions, "labels": labels}


class _Collate:
    """A picklable collate function (spawned DDP workers pickle the data loaders)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch):
        return collate(batch, self.pad_id)


class SFTDataModule(pl.LightningDataModule):
    def __init__(self, tokenizer, train: list[dict], val: list[dict], batch_size: int, max_length: int,
                 seed: int = 0):
        super().__init__()
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
        self.pad_id = tokenizer.pad_token_id
        self.train_set = [e for e in (encode_example(tokenizer, x["messages"], x["target"], max_length) for x in train)
                          if e is not None]
        self.val_set = [e for e in (encode_example(tokenizer, x["messages"], x["target"], max_length) for x in val)
                        if e is not None]
        self.dropped = len(train) + len(val) - len(self.train_set) - len(self.val_set)
        if self.dropped:
            log.warning("sft data: dropped %d of %d examples longer than max_length=%d", self.dropped,
                        len(train) + len(val), max_length)
        if not self.train_set:
            raise ConfigError(f"no training example fits max_length={max_length} tokens (of {len(train)}); raise "
                              "train.max_length or check the click logs")
        if len(self.train_set) < batch_size:
            log.warning("sft data: %d training examples, fewer than one batch of %d; they are repeated",
                        len(self.train_set), batch_size)

    def train_dataloader(self) -> DataLoader:
        world, rank = world_and_rank(self.trainer)
        if self.batch_size % world:
            raise ConfigError(f"train.batch_size={self.batch_size} is the global batch and must divide evenly "
                              f"over {world} processes")
        sampler = GlobalBatchSampler(self.train_set, self.batch_size, world, rank, self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size // world, sampler=sampler,
                          collate_fn=_Collate(self.pad_id))

    def val_dataloader(self) -> DataLoader | list:
        """Lightning's periodic validation: none when some process would get no example, since a process
        with an empty shard skips the loop and the others would wait for it in the loss sum."""
        world, rank = world_and_rank(self.trainer)
        if len(self.val_set) < world:
            return []
        return self.val_shard(world, rank)

    def val_shard(self, world: int, rank: int) -> DataLoader:
        """Every `world`-th validation example from `rank` (possibly none), for loops that sum across processes."""
        per_rank = max(1, math.ceil(self.batch_size / world))
        return DataLoader(self.val_set, batch_size=per_rank, sampler=ShardSampler(self.val_set, world, rank),
                          collate_fn=_Collate(self.pad_id))

    def stats(self) -> dict:
        target = [sum(t != IGNORE_INDEX for t in e["labels"]) for e in self.train_set]
        total = [len(e["input_ids"]) for e in self.train_set]
        return {"train_examples": len(self.train_set), "val_examples": len(self.val_set),
                "dropped_too_long": self.dropped, "mean_tokens": sum(total) / len(total),
                "mean_target_tokens": sum(target) / len(target)}
