"""RLHF math in openhcx.train.losses: each function against a hand-computed tensor, GAE against a plain Python
loop, and GAE, whitening and the PPO losses against TRL's PPO trainer code run on the same inputs."""

from __future__ import annotations

import inspect
import math
import os
import random
from types import SimpleNamespace

import pytest
import torch

from openhcx.train.losses import (
    gae, kl_k1, kl_k2, kl_k3, masked_mean, ppo_policy_loss, repeated_ngram_mask, rewards_with_kl_penalty,
    sequence_unlikelihood_loss, value_loss, whiten,
)

close = torch.testing.assert_close
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # TRL warns on every import from trl.experimental


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    close(kl_k1(logp, ref), torch.tensor([math.log(2)]))
    close(kl_k2(logp, ref), torch.tensor([0.5 * math.log(2) ** 2]))
    close(kl_k3(logp, ref), torch.tensor([0.5 - 1 + math.log(2)]))
    same = torch.tensor([-1.3])
    for k in (kl_k1, kl_k2, kl_k3):
        assert k(same, same).item() == 0.0


def test_k1_and_k3_are_unbiased_k2_is_biased():
    g = torch.Generator().manual_seed(0)
    p, q = torch.tensor([0.9, 0.1]), torch.tensor([0.1, 0.9])
    exact = (p * (p / q).log()).sum()  # KL(p || q) = 0.8 ln 9 = 1.758
    x = torch.multinomial(p, 400_000, replacement=True, generator=g)
    logp, logq = p.log()[x], q.log()[x]
    assert abs(kl_k1(logp, logq).mean() - exact) < 0.01
    assert abs(kl_k3(logp, logq).mean() - exact) < 0.01
    assert kl_k3(logp, logq).min() >= 0 and kl_k1(logp, logq).min() < 0
    close(kl_k2(logp, logq).mean(), torch.tensor(0.5 * math.log(9) ** 2), atol=1e-4, rtol=0)  # 2.414, not 1.758


def test_rewards_with_kl_penalty_by_hand():
    scores = torch.tensor([2.0, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, penalty = rewards_with_kl_penalty(scores, kl, mask, kl_coef=0.1)
    close(penalty, torch.tensor([[-0.01, -0.02, -0.03], [-0.05, -0.05, 0.0]]))
    close(rewards, torch.tensor([[-0.01, -0.02, 1.97], [-0.05, -1.05, 0.0]]))


def test_gae_by_hand():
    adv, ret = gae(torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 1.5]]), torch.ones(1, 3), 1.0, 0.5)
    close(adv, torch.tensor([[1.875, 0.75, 0.5]]))
    close(ret, torch.tensor([[2.375, 1.75, 2.0]]))
    # padding: the value after the last real token counts as 0 and padded rewards are ignored
    adv, ret = gae(torch.tensor([[3.0, 0.0, 9.0]]), torch.tensor([[1.0, 2.0, 7.0]]), torch.tensor([[1, 1, 0]]),
                   1.0, 1.0)
    close(adv, torch.tensor([[2.0, -2.0, 0.0]]))
    close(ret, torch.tensor([[3.0, 0.0, 0.0]]))


def reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """A_t = sum_l (gamma lam)^l delta_{t+l}, straight from the definition, on one unpadded response."""
    n = len(rewards)
    v = values + [0.0]
    deltas = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(n)]
    return [sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t)) for t in range(n)]


def test_gae_matches_python_reference_loop():
    rng = random.Random(1)
    torch.manual_seed(1)
    B, R = 6, 9
    rewards, values = torch.randn(B, R, dtype=torch.float64), torch.randn(B, R, dtype=torch.float64)
    lengths = [rng.randint(1, R) for _ in range(B)]
    mask = (torch.arange(R)[None] < torch.tensor(lengths)[:, None]).long()
    adv, ret = gae(rewards, values, mask, gamma=0.97, lam=0.9)
    for b, n in enumerate(lengths):
        want = reference_gae(rewards[b, :n].tolist(), values[b, :n].tolist(), 0.97, 0.9)
        close(adv[b, :n], torch.tensor(want, dtype=torch.float64))
        close(ret[b, :n], torch.tensor(want, dtype=torch.float64) + values[b, :n])
        assert adv[b, n:].abs().sum() == 0


def test_whiten_by_hand():
    x, mask = torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1, 1, 1, 0])
    close(whiten(x, mask), torch.tensor([-1.0, 0.0, 1.0, 0.0]))  # mean 2, unbiased variance 1
    close(whiten(x, mask, shift_mean=False), torch.tensor([1.0, 2.0, 3.0, 0.0]))
    close(masked_mean(x, mask), torch.tensor(2.0))


def test_ppo_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.0, 1.5, 0.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    out = ppo_policy_loss(logp, old, adv, torch.ones(1, 3), clip=0.2)
    # ratio 1, 1.5, 0.5: terms max(-1, -1), max(-1.5, -1.2), max(0.5, 0.8) -> the last two are clipped
    close(out.loss, torch.tensor(-1.4 / 3))
    close(out.clip_fraction, torch.tensor(2 / 3))
    close(out.approx_kl, torch.tensor(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3))
    # padding is left out of every part
    padded = ppo_policy_loss(torch.cat([logp, torch.tensor([[5.0]])], 1), torch.zeros(1, 4),
                             torch.cat([adv, torch.tensor([[7.0]])], 1), torch.tensor([[1, 1, 1, 0]]), clip=0.2)
    close(padded.loss, out.loss)
    close(padded.approx_kl, out.approx_kl)


def test_ppo_policy_loss_gradient_stops_outside_the_clip_range():
    logp = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    ppo_policy_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), clip=0.2).loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] < 0  # a clipped positive advantage pushes no further


def test_value_loss_by_hand():
    values, old = torch.tensor([[1.0, 3.0, 3.0]]), torch.ones(1, 3)
    returns = torch.tensor([[2.0, 0.0, 4.0]])
    out = value_loss(values, old, returns, torch.ones(1, 3), clip=0.5)
    # clipped values 1, 1.5, 1.5; squared errors plain (1, 9, 1), clipped (1, 2.25, 6.25)
    close(out.loss, torch.tensor(0.5 * (1 + 9 + 6.25) / 3))
    close(out.clip_fraction, torch.tensor(1 / 3))
    close(out.unclipped, torch.tensor(0.5 * 11 / 3))


def test_repeated_ngram_mask_follows_the_paper():
    tokens = torch.tensor([[1, 2, 3, 4, 9, 1, 2, 3, 4, 5], [7, 7, 7, 7, 7, 7, 7, 0, 0, 0],
                           [7, 7, 7, 7, 7, 7, 7, 7, 0, 0]])
    mask = torch.tensor([[1] * 10, [1] * 7 + [0] * 3, [1] * 8 + [0] * 2])
    got = repeated_ngram_mask(tokens, mask, n=4)
    assert got[0].tolist() == [False] * 5 + [True] * 4 + [False]
    assert not got[1].any()  # seven 7s: every earlier "7 7 7 7" overlaps the later one
    assert got[2].tolist() == [False] * 4 + [True] * 4 + [False] * 2
    assert repeated_ngram_mask(tokens[:1], mask[:1], n=2)[0].tolist() == [False] * 5 + [True] * 4 + [False]
    # padding never counts: the repeat lies beyond the real tokens
    assert not repeated_ngram_mask(tokens[:1], torch.tensor([[1] * 8 + [0] * 2]), n=4).any()


def test_sequence_unlikelihood_loss_by_hand():
    tokens = torch.tensor([[1, 2, 3, 4, 9, 1, 2, 3, 4, 5]])
    logp = torch.full((1, 10), math.log(0.5))
    logp[0, 5] = math.log(0.9)
    loss = sequence_unlikelihood_loss(logp, tokens, torch.ones(1, 10), n=4)
    close(loss, torch.tensor((-math.log(0.1) - 3 * math.log(0.5)) / 10))
    # minimising it lowers the probability of the repeated tokens only
    logp.requires_grad_()
    sequence_unlikelihood_loss(logp, tokens, torch.ones(1, 10), n=4).backward()
    assert (logp.grad[0, 5:9] > 0).all() and (logp.grad[0, :5] == 0).all() and logp.grad[0, 9] == 0
    assert sequence_unlikelihood_loss(logp, torch.arange(10)[None], torch.ones(1, 10)).item() == 0.0


# ---- parity with TRL 1.12's PPO trainer (trl.experimental.ppo) ------------------------------------------------


def trl_block(first: str, last: str) -> str:
    """The lines of TRL's PPOTrainer.train from the one starting with `first` to the one starting with `last`."""
    ppo_trainer = pytest.importorskip("trl.experimental.ppo.ppo_trainer")
    lines = inspect.getsource(ppo_trainer.PPOTrainer.train).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(first))
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith(last))
    block = lines[start:end + 1]
    indent = min(len(line) - len(line.lstrip()) for line in block if line.strip())
    return "\n".join(line[indent:] for line in block)


def trl_namespace(**tensors) -> dict:
    from trl.experimental.ppo.ppo_trainer import masked_mean as trl_masked_mean

    return {"torch": torch, "masked_mean": trl_masked_mean, **tensors}


@pytest.fixture
def padded_batch():
    torch.manual_seed(3)
    B, R = 8, 12
    lengths = torch.tensor([12, 3, 7, 1, 12, 5, 9, 2])
    mask = torch.arange(R)[None] < lengths[:, None]
    return SimpleNamespace(B=B, R=R, mask=mask, padding=~mask,
                           rewards=torch.randn(B, R, dtype=torch.float64) * mask,
                           values=torch.randn(B, R, dtype=torch.float64) * mask)


def test_gae_and_whitening_match_trl(padded_batch):
    from trl.experimental.ppo.ppo_trainer import masked_whiten

    b = padded_batch
    ns = trl_namespace(rewards=b.rewards, values=b.values, responses=torch.zeros(b.B, b.R),
                       args=SimpleNamespace(gamma=0.99, lam=0.95))
    exec(trl_block("lastgaelam = 0", "returns = advantages + values"), ns)
    adv, ret = gae(b.rewards, b.values, b.mask, gamma=0.99, lam=0.95)
    close(adv[b.mask], ns["advantages"][b.mask])
    close(ret[b.mask], ns["returns"][b.mask])
    close(whiten(adv, b.mask)[b.mask], masked_whiten(ns["advantages"], b.mask)[b.mask])
    close(whiten(b.rewards, b.mask, shift_mean=False)[b.mask],
          masked_whiten(b.rewards, b.mask, shift_mean=False)[b.mask])


def test_policy_and_value_losses_match_trl(padded_batch):
    b = padded_batch
    torch.manual_seed(4)
    old_logp = -torch.rand(b.B, b.R, dtype=torch.float64) * 3
    new_logp = old_logp + torch.randn(b.B, b.R, dtype=torch.float64) * 0.3
    advantages = torch.randn(b.B, b.R, dtype=torch.float64) * b.mask
    returns = torch.randn(b.B, b.R, dtype=torch.float64) * b.mask
    vpred = b.values + torch.randn(b.B, b.R, dtype=torch.float64) * 0.5 * b.mask
    # TRL fills padded log-probabilities with the same constant, so their difference is 0 there
    filled_new, filled_old = new_logp.masked_fill(b.padding, 1.0), old_logp.masked_fill(b.padding, 1.0)
    ns = trl_namespace(vpred=vpred, mb_values=b.values, mb_return=returns, new_logprobs=filled_new,
                       mb_logprobs=filled_old, mb_advantage=advantages, padding_mask=b.padding,
                       padding_mask_p1=b.padding, micro_batch_inds=torch.arange(b.B), logits=torch.zeros(b.B, b.R, 2),
                       args=SimpleNamespace(cliprange=0.2, cliprange_value=0.2, vf_coef=0.1))
    exec(trl_block("vpredclipped = torch.clamp(", "loss = pg_loss + args.vf_coef * vf_loss"), ns)
    exec(trl_block("pg_clipfrac = masked_mean(", "approxkl = 0.5 * (logprobs_diff**2).mean()"), ns)
    policy = ppo_policy_loss(new_logp, old_logp, advantages, b.mask, clip=0.2)
    value = value_loss(vpred, b.values, returns, b.mask, clip=0.2)
    close(policy.loss, ns["pg_loss"])
    close(policy.clip_fraction, ns["pg_clipfrac"])
    close(value.loss, ns["vf_loss"])
    close(value.clip_fraction, ns["vf_clipfrac"])
    # TRL averages approx KL over padding too (where the difference is 0): rescale to compare
    close(policy.approx_kl * b.mask.sum() / b.mask.numel(), ns["approxkl"])
