"""The fused output head + cross-entropy equals the plain one: loss sum, count and gradients."""

import pytest
import torch

from openhcx.io import UserError
from openhcx.model.transformer import Transformer, model_config
from openhcx.train.losses import IGNORE_INDEX, linear_cross_entropy, token_cross_entropy


def inputs(n=50, dim=16, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, n, dim, generator=g).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=g) * 0.5).requires_grad_()
    targets = torch.randint(0, vocab, (2, n), generator=g)
    targets[0, ::3] = IGNORE_INDEX
    targets[1, -7:] = IGNORE_INDEX
    return hidden, weight, targets


def grads(loss_fn, hidden, weight, scale=0.37):
    hidden.grad = weight.grad = None
    total, count = loss_fn()
    (total * scale).backward()
    return total.detach(), count, hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("chunk", [1, 16, 37, 4096])
def test_fused_loss_and_gradients_equal_the_unfused_ones(chunk):
    hidden, weight, targets = inputs()
    ref = grads(lambda: token_cross_entropy(hidden @ weight.t(), targets), hidden, weight)
    fused = grads(lambda: linear_cross_entropy(hidden, weight, targets, chunk_tokens=chunk), hidden, weight)
    assert fused[1] == ref[1] == (targets != IGNORE_INDEX).sum()
    assert torch.allclose(fused[0], ref[0], rtol=1e-6, atol=1e-5)
    assert torch.allclose(fused[2], ref[2], atol=1e-6)
    assert torch.allclose(fused[3], ref[3], atol=1e-6)
    assert fused[2][0, ::3].abs().max() == 0  # ignored tokens get no gradient


def test_nothing_scored_gives_zero_loss_count_and_gradients():
    hidden, weight, targets = inputs()
    total, count, grad_h, grad_w = grads(
        lambda: linear_cross_entropy(hidden, weight, torch.full_like(targets, IGNORE_INDEX)), hidden, weight)
    assert total == 0 and count == 0 and grad_h.abs().max() == 0 and grad_w.abs().max() == 0


def test_a_hopeless_target_keeps_an_exact_finite_loss():
    # The target's logit sits 200 below the best: its probability underflows fp32, its loss does not.
    hidden = torch.tensor([[1.0, 0.0]])
    weight = torch.tensor([[100.0, 0.0], [-100.0, 0.0], [0.0, 0.0]])
    total, count = linear_cross_entropy(hidden, weight, torch.tensor([1]))
    expected = token_cross_entropy(hidden @ weight.t(), torch.tensor([1]))[0]
    assert count == 1 and torch.isfinite(total) and abs(total.item() - 200.0) < 1e-4
    assert torch.allclose(total, expected)


def test_without_gradients_it_returns_the_same_loss():
    hidden, weight, targets = inputs()
    with torch.no_grad():
        fused = linear_cross_entropy(hidden, weight, targets, chunk_tokens=8)
        ref = token_cross_entropy(hidden @ weight.t(), targets)
    assert torch.allclose(fused[0], ref[0], rtol=1e-6) and fused[1] == ref[1]


def test_bfloat16_loss_is_summed_in_fp32_and_close_to_the_unfused_one():
    hidden, weight, targets = inputs()
    h, w = hidden.detach().bfloat16(), weight.detach().bfloat16()
    total, _ = linear_cross_entropy(h, w, targets)
    ref, _ = token_cross_entropy(h @ w.t(), targets)
    assert total.dtype == torch.float32 and torch.allclose(total, ref, rtol=1e-3)


def test_under_autocast_it_equals_the_unfused_loss_of_autocast_logits():
    hidden, weight, targets = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = grads(lambda: token_cross_entropy(hidden @ weight.t(), targets), hidden, weight)
        fused = grads(lambda: linear_cross_entropy(hidden, weight, targets), hidden, weight)
    assert torch.allclose(fused[0], ref[0], rtol=1e-5)
    assert fused[3].dtype == torch.float32  # the parameter's gradient keeps the parameter's dtype
    for got, want in zip(fused[2:], ref[2:]):
        assert (got - want).abs().max() <= 1e-2 * want.abs().max()


@pytest.mark.parametrize("tie", [False, True])
def test_model_targets_give_the_loss_and_gradients_of_its_logits(tie):
    torch.manual_seed(0)
    config = model_config("tiny", vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                          max_seq_len=32, tie_embeddings=tie)
    model = Transformer(config)
    ids = torch.randint(0, 96, (3, 20))
    targets = torch.randint(0, 96, (3, 20))
    targets[2, 5:] = IGNORE_INDEX

    def run(fused):
        model.zero_grad(set_to_none=True)
        total, count = model(ids, targets=targets) if fused else token_cross_entropy(model(ids), targets)
        (total / count).backward()
        return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (ref, ref_grads), (fused, fused_grads) = run(False), run(True)
    assert torch.allclose(fused, ref, rtol=1e-6)
    for name, grad in ref_grads.items():
        assert torch.allclose(fused_grads[name], grad, atol=1e-6), name


def test_scalar_head_refuses_targets():
    model = Transformer(model_config("tiny", vocab_size=32, dim=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                     ffn_dim=32, max_seq_len=16, head="scalar"))
    with pytest.raises(UserError, match="lm head"):
        model(torch.zeros(1, 4, dtype=torch.long), targets=torch.zeros(1, 4, dtype=torch.long))
