"""openhcx.train.losses against hand-computed values."""

from __future__ import annotations

import math

import torch

from openhcx.train.losses import IGNORE_INDEX, masked_cross_entropy, token_cross_entropy, token_weighted_mean

LN2, LN3 = math.log(2), math.log(3)


def test_cross_entropy_skips_ignored_targets():
    # Row 1: uniform over 2 ids -> ln 2. Row 2: p(id 1) = 1 / (3 + 1) -> ln 4. Row 3: ignored.
    logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0], [5.0, -5.0]]])
    targets = torch.tensor([[0, 1, IGNORE_INDEX]])
    total, count = token_cross_entropy(logits, targets)
    assert count.item() == 2
    assert abs(total.item() - 3 * LN2) < 1e-6
    assert abs(masked_cross_entropy(logits, targets).item() - 1.5 * LN2) < 1e-6


def test_cross_entropy_of_nothing_is_zero_not_nan():
    logits = torch.zeros(1, 2, 5)
    targets = torch.full((1, 2), IGNORE_INDEX)
    assert masked_cross_entropy(logits, targets).item() == 0.0
    assert token_cross_entropy(logits, targets)[1].item() == 0


def test_bf16_logits_are_reduced_in_fp32():
    logits = torch.tensor([[[0.0, 0.0]] * 300], dtype=torch.bfloat16)
    total, _ = token_cross_entropy(logits, torch.zeros(1, 300, dtype=torch.long))
    assert total.dtype == torch.float32
    assert abs(total.item() - 300 * LN2) < 1e-4  # a bf16 sum of 300 x 0.693 would be off by ~0.5


def test_token_weighted_mean_weighs_tokens_not_micro_batches():
    # Micro-batch A: 2 tokens, losses ln2 + ln4. Micro-batch B: 1 token, loss ln2.
    sums, counts = torch.tensor([3 * LN2, LN2]), torch.tensor([2, 1])
    assert abs(token_weighted_mean(sums, counts).item() - 4 * LN2 / 3) < 1e-6
    mean_of_means = (1.5 * LN2 + LN2) / 2
    assert abs(token_weighted_mean(sums, counts).item() - mean_of_means) > 0.05


def test_accumulated_gradient_equals_whole_batch_gradient():
    """The trainer's rule: each micro-batch backpropagates sum / (tokens of the whole batch)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7, requires_grad=True)
    targets = torch.randint(0, 7, (3, 4))
    targets[0, :3] = IGNORE_INDEX  # micro-batches score 1 and 8 tokens
    masked_cross_entropy(logits, targets).backward()
    whole = logits.grad.clone()
    logits.grad = None
    count = (targets != IGNORE_INDEX).sum()
    for rows in (slice(0, 1), slice(1, 3)):
        (token_cross_entropy(logits[rows], targets[rows])[0] / count).backward()
    assert torch.allclose(logits.grad, whole, atol=1e-7)


def test_bradley_terry_loss_by_hand_and_its_gradient_widens_the_margin():
    from openhcx.train.losses import bradley_terry_loss

    # Margin 0 -> -log(1/2) = ln 2. Margin -ln 3 -> -log(1/(1+3)) = ln 4. Sum 3 ln 2 over 2 pairs.
    chosen = torch.tensor([1.0, 0.0], requires_grad=True)
    rejected = torch.tensor([1.0, LN3], requires_grad=True)
    total, count = bradley_terry_loss(chosen, rejected)
    assert count.item() == 2
    assert abs(total.item() - 3 * LN2) < 1e-6
    total.backward()
    # d/d r_chosen = -(1 - sigmoid(margin)): -1/2 at margin 0, -3/4 at margin -ln 3; rejected the opposite.
    assert torch.allclose(chosen.grad, torch.tensor([-0.5, -0.75]))
    assert torch.allclose(rejected.grad, torch.tensor([0.5, 0.75]))
    # A huge margin either way stays finite (logsigmoid, not log of sigmoid).
    far, _ = bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0]))
    assert abs(far.item() - 400.0) < 1e-3
