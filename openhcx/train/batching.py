"""Length-grouped batches under a token budget (RECIPE §5), shared by SFT, the reward model and PPO.

A batch is a list of *units*: one conversation for SFT, one prompt with all its pairs for the reward model.
Units are sorted by length and cut greedily so that rows x longest row (the padded size the model computes)
stays within `max_tokens`: short sequences travel many to a batch, long ones few (variable batch size).
Ties in length are broken by a seeded shuffle and the batch order is shuffled per epoch, so epochs differ
while every epoch has the same number of batches. `EpochLoader` feeds such batches to the one training
loop, each rank taking its own, and resumes at the exact batch; `TokenBudgetTrainer` reports throughput
from each batch's real shape.
Not here: tokenisation, what a batch tensor holds (the stages' collate functions), gradient accumulation
inside a budget batch (one budget batch per rank is one optimisation step).
"""

from __future__ import annotations

import random
from typing import Callable, Generic, Sequence, TypeVar

import torch
from torch import Tensor

from openhcx.train.trainer import Phase, Shape, Trainer

B = TypeVar("B")


def padded_tokens(lengths: Sequence[int], rows: Sequence[int] | None = None) -> int:
    """Tokens a right-padded batch computes: all rows times the longest row."""
    return (sum(rows) if rows is not None else len(lengths)) * max(lengths, default=0)


def token_budget_batches(lengths: Sequence[int], max_tokens: int, seed: int = 0,
                         rows: Sequence[int] | None = None, shuffle: bool = True) -> list[list[int]]:
    """Unit indices grouped into batches of similar length whose padded size is at most `max_tokens`.

    lengths[i]: the longest sequence of unit i; rows[i]: its sequences (default 1). A unit that alone
    exceeds the budget is a ValueError: callers check first and name the record.
    """
    rows = list(rows) if rows is not None else [1] * len(lengths)
    for i, (length, n) in enumerate(zip(lengths, rows)):
        if length * n > max_tokens:
            raise ValueError(f"unit {i}: {n} row(s) of {length} tokens exceed max_tokens={max_tokens}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    # Stable sort on (length, rows): ties keep their shuffled order, and the cut points (hence the number
    # of batches) are the same for every seed.
    order.sort(key=lambda i: (lengths[i], rows[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    current_rows = 0
    for i in order:
        longest = max(lengths[i], max((lengths[j] for j in current), default=0))
        if current and (current_rows + rows[i]) * longest > max_tokens:
            batches.append(current)
            current, current_rows = [], 0
        current.append(i)
        current_rows += rows[i]
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, fill: int | None = None) -> tuple[Tensor, Tensor]:
    """(ids, attn_mask) of right-padded rows: every row starts at position 0, padding sits after the end."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id if fill is None else fill, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids, mask


class EpochLoader(Generic[B]):
    """Budget batches for the trainer: epoch e uses `plan(e)`; step s of an epoch is batch s*world+rank.

    `collate(indices)` builds the batch tensors and its Shape. Every rank gets the same number of steps
    (an epoch's last batches that do not fill all ranks are dropped). The trainer's `rows`/`seq_len`
    arguments are ignored: the plan decides the shape.
    """

    def __init__(self, plan: Callable[[int], list[list[int]]], collate: Callable[[list[int]], tuple[B, Shape]],
                 rank: int = 0, world_size: int = 1):
        self.plan, self.collate, self.rank, self.world_size = plan, collate, rank, world_size
        self.epoch, self.position = 0, 0
        self.last_shape = Shape(0, 0, 0)
        self._batches = plan(0)

    def steps_per_epoch(self) -> int:
        return len(self._batches) // self.world_size

    def next_batch(self, rows: int = 0, seq_len: int = 0) -> B:
        if self.position >= self.steps_per_epoch():
            self.epoch, self.position = self.epoch + 1, 0
            self._batches = self.plan(self.epoch)
        batch, self.last_shape = self.collate(self._batches[self.position * self.world_size + self.rank])
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._batches = self.plan(self.epoch)


class TokenBudgetTrainer(Trainer):
    """The one loop fed by an EpochLoader: throughput counts each batch's real tokens, MFU its padded ones.

    The base loop sizes a step from the fixed (batch_size, seq_len) phase, which a budget batch does not have.
    """

    def batch_shape(self, phase: Phase) -> Shape:
        return self.loader.last_shape
