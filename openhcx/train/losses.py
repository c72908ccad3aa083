"""Training losses as pure functions on tensors.

Each returns plain tensors and touches no module, optimizer or process group, so every formula can be
checked against a hand-computed value. Not here: scaling for data parallelism (the trainer multiplies by
the world size because DDP and FSDP average gradients over ranks).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
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


# ---- RLHF (PPO) -------------------------------------------------------------------------------------------
# Shapes: (B, R) over response tokens, `mask` 1 on real response tokens (a prefix of each row), 0 on padding.


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the positions where `mask` is 1 (0 when there are none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """log p - log p_ref: unbiased per sampled token, can be negative; its sum over a response is the
    sequence's log-ratio, so the per-token penalty adds up to an unbiased sequence KL. The PPO reward uses k1."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """0.5 (log p_ref - log p)^2: never negative, low variance, biased (Schulman's k2)."""
    return 0.5 * (ref_logp - logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """(r - 1) - log r with r = p_ref / p: unbiased and never negative (Schulman's k3)."""
    log_ratio = ref_logp - logp
    return log_ratio.exp() - 1 - log_ratio


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def rewards_with_kl_penalty(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> tuple[Tensor, Tensor]:
    """Per-token rewards: -kl_coef * KL on every response token, plus the reward-model score on the last one.

    scores: (B,) one score per response; kl: (B, R) per-token KL estimate. Returns (rewards, penalty), both
    0 on padding; penalty is the KL part alone (logged as the non-score reward).
    """
    penalty = -kl_coef * kl * mask
    last = (torch.arange(mask.shape[1], device=mask.device) * mask.long()).argmax(-1)
    rewards = penalty.clone()
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores.to(rewards.dtype)
    return rewards, penalty


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) in one reverse pass over response tokens.

    delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1}, with V = 0 after a response's
    last token (the episode ends there). Returns (advantages, returns = advantages + values), 0 on padding.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    steps = rewards.shape[1]
    running = torch.zeros_like(rewards[:, 0])
    reversed_advantages = []
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        running = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * running
        reversed_advantages.append(running)
    advantages = torch.stack(reversed_advantages[::-1], dim=1) * mask
    return advantages, advantages + values


def whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked positions (unbiased variance), 0 on padding.

    shift_mean=False keeps the mean (rescales only), for rewards whose sign carries meaning.
    """
    mask_f = mask.to(values.dtype)
    mean = masked_mean(values, mask_f)
    count = mask_f.sum()
    var = masked_mean((values - mean) ** 2, mask_f) * count / (count - 1).clamp(min=1)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask_f


class PolicyLoss(NamedTuple):
    loss: Tensor  # mean over response tokens of max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))
    clip_fraction: Tensor  # share of tokens where the clipped term was the larger one
    approx_kl: Tensor  # 0.5 mean (log p - log p_old)^2: how far this epoch moved from the rollout policy


def ppo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2) -> PolicyLoss:
    """PPO's clipped surrogate objective (Schulman et al. 2017), negated to be minimised."""
    diff = logp - old_logp
    ratio = diff.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = 0.5 * masked_mean(diff.detach() ** 2, mask)
    return PolicyLoss(loss, fraction, approx_kl)


class ValueLoss(NamedTuple):
    loss: Tensor  # 0.5 mean of max(unclipped, clipped) squared errors
    clip_fraction: Tensor  # share of tokens where the clipped error was the larger one
    unclipped: Tensor  # 0.5 mean (V - return)^2, the plain regression error


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 0.2) -> ValueLoss:
    """Clipped value regression: a new value may not gain by moving more than `clip` from the rollout's."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    plain = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(plain, clipped), mask)
    with torch.no_grad():
        fraction = masked_mean((clipped > plain).float(), mask)
        unclipped = 0.5 * masked_mean(plain.detach(), mask)
    return ValueLoss(loss, fraction, unclipped)


def repeated_ngram_mask(tokens: Tensor, mask: Tensor, n: int = 4) -> Tensor:
    """(B, R) bool: tokens inside an n-gram that already occurred, whole, earlier in the same response.

    Welleck et al. (2019), section 5.2: token x_t is a candidate when an n-gram holding it also lies in the
    continuation before that n-gram's start. Occurrences may not overlap ("a a a a" is no repeat at n=4;
    eight "a"s are). Only the response is searched, not the prompt.
    """
    out = torch.zeros_like(mask, dtype=torch.bool)
    lengths = mask.long().sum(-1).tolist()
    for row, (ids, length) in enumerate(zip(tokens.tolist(), lengths)):
        first: dict[tuple[int, ...], int] = {}
        for start in range(length - n + 1):
            gram = tuple(ids[start:start + n])
            if gram not in first:
                first[gram] = start
            elif first[gram] + n <= start:
                out[row, start:start + n] = True
    return out


def sequence_unlikelihood_loss(logp: Tensor, tokens: Tensor, mask: Tensor, n: int = 4) -> Tensor:
    """Sequence-level unlikelihood (Welleck et al. 2019): -sum log(1 - p(x_t | x_<t)) over repeated n-grams.

    logp: (B, R) log-probabilities of the sampled response tokens under the policy being trained. The
    candidate set at position t is {x_t} when `repeated_ngram_mask` marks t, else empty. The sum is divided
    by the number of response tokens, so its weight against the per-token PPO loss does not depend on length.
    """
    candidates = repeated_ngram_mask(tokens, mask, n) & mask.bool()
    # log(1 - p) computed as log1p(-p), with p kept just below 1 so a certain repeat gives a large, finite loss
    one_minus = torch.log1p(-logp.exp().clamp(max=1 - 1e-6))
    return -(one_minus * candidates).sum() / mask.sum().clamp(min=1)


# ---- Fused output head + cross-entropy --------------------------------------------------------------------


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss sum of `token_cross_entropy(hidden @ weight.T, targets)` with its gradients taken in the forward.

    Tokens go through in chunks: each chunk's logits give the loss and, at once, the gradient of the loss
    with respect to them (softmax - onehot), which is folded into the gradients of `hidden` and `weight`
    right away. The (tokens x vocab) logits never exist whole and no log-softmax backward runs.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, chunk: int) -> Tensor:
        rows = (targets != ignore_index).nonzero().squeeze(1)
        h, t = hidden.index_select(0, rows), targets.index_select(0, rows)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # Two chunk-sized buffers reused by every chunk: fresh allocations this large cost page faults on CPU.
        logits = torch.empty(min(chunk, len(rows)), weight.shape[0], dtype=torch.float32, device=hidden.device)
        probs = torch.empty_like(logits)
        for start in range(0, len(rows), chunk):
            hc, tc = h[start:start + chunk], t[start:start + chunk]
            n = len(tc)
            lc, pc = logits[:n], probs[:n]
            if weight.dtype == torch.float32:
                torch.mm(hc, weight.t(), out=lc)
            else:
                lc.copy_(hc @ weight.t())
            torch._softmax(lc, -1, False, out=pc)
            # log-sum-exp = max - log(p_max): p_max >= 1/vocab never underflows, so this stays exact where
            # -log(p_target) would not, and it costs no exp beyond the softmax's own.
            lse = lc.amax(-1) - pc.amax(-1).log()
            total += (lse - lc.gather(1, tc[:, None]).squeeze(1)).sum()
            if not (want_h or want_w):
                continue
            pc[torch.arange(n, device=pc.device), tc] -= 1.0  # d loss / d logits = softmax - onehot
            g = pc.to(weight.dtype)
            if want_h:
                torch.mm(g, weight, out=grad_h[start:start + chunk])
            if want_w:
                if weight.dtype == torch.float32:
                    grad_w.addmm_(g.t(), hc)
                else:
                    grad_w += (g.t() @ hc).float()
        if want_h:
            full = torch.zeros_like(hidden)
            ctx.grad_h = full.index_copy_(0, rows, grad_h)
        ctx.grad_w = grad_w.to(weight.dtype) if want_w else None
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        grad_h = ctx.grad_h * grad_total.to(ctx.grad_h.dtype) if ctx.needs_input_grad[0] else None
        grad_w = ctx.grad_w * grad_total.to(ctx.grad_w.dtype) if ctx.needs_input_grad[1] else None
        ctx.grad_h = ctx.grad_w = None
        return grad_h, grad_w, None, None, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX,
                         chunk_tokens: int = 256) -> tuple[Tensor, Tensor]:
    """`token_cross_entropy(hidden @ weight.T, targets)` without ever holding the logits of every token.

    hidden: (..., dim) final-normed hidden states; weight: (vocab, dim) output head (tied or not);
    targets: (...) ids, `ignore_index` where nothing is scored. Returns the fp32 loss sum and the count of
    scored tokens. Gradients of hidden and weight are computed during the forward, `chunk_tokens` tokens at a
    time (ignored tokens are skipped), so memory beyond the gradients is two chunks of fp32 logits and the
    log-softmax backward never runs. The one backward this supports is the sum's own (a scalar scale).
    256 tokens was the fastest chunk for a 16,000 vocabulary on CPU (bigger chunks fall out of cache).
    """
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # the head's matmuls in the autocast dtype, as nn.Linear's would be
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    flat_targets = targets.reshape(-1)
    total = _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, flat_targets, ignore_index,
                                      chunk_tokens)
    return total, (flat_targets != ignore_index).sum()
