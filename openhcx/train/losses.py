"""Training losses as pure functions on tensors.

Each returns plain tensors and touches no module, optimizer or process group, so every formula can be
checked against a hand-computed value. Not here: scaling for data parallelism (the trainer multiplies by
the world size because DDP and FSDP average gradients over ranks).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100  # target id that carries no loss (padding, prompt tokens), as in torch and HF


def token_cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Summed next-token cross-entropy over the scored tokens, and how many tokens were scored.

    logits: (..., vocab); targets: (...) ids, `ignore_index` where nothing is scored. The loss is summed
    in fp32, so bf16 logits lose no precision in the reduction. Sum and count (not a mean) let
    micro-batches and ranks be combined with equal weight per token.
    """
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                            ignore_index=ignore_index, reduction="sum")
    return total, (targets != ignore_index).sum()


def masked_cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy per scored token; 0 when no token is scored (not NaN)."""
    total, count = token_cross_entropy(logits, targets, ignore_index)
    return total / count.clamp(min=1)


def token_weighted_mean(sums: Tensor, counts: Tensor) -> Tensor:
    """Mean per token across micro-batches (or ranks) from their loss sums and token counts.

    Equal to the loss of the whole batch at once; the mean of per-micro-batch means is not, as soon as
    micro-batches score different numbers of tokens.
    """
    return sums.sum() / counts.sum().clamp(min=1)


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
    """Summed ranking loss -log sigmoid(r_chosen - r_rejected) over pairs, and the number of pairs.

    chosen, rejected: (pairs,) scalar rewards. Computed in fp32 through logsigmoid, which stays finite for
    any margin. Sum and count, like `token_cross_entropy`, so micro-batches and ranks weigh pairs equally.
    """
    total = -F.logsigmoid(chosen.float() - rejected.float()).sum()
    return total, chosen.new_tensor(chosen.numel()).long()
