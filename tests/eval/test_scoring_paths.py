"""HFBackend's two scoring paths (one plain causal pass; a context pass then a continuation pass against its
cache) against a hand-built reference: one full forward pass per (context, continuation) pair, as
lm-eval runs it, on a tiny random checkpoint."""

from __future__ import annotations

import os

import pytest
import torch

from openhcx.eval.backends import SHARED_OPENING, HFBackend, Request, load_hf

CTX = "전쟁이 시작되었다. 병사들이 전투에 파견되었다. 질문: 그래서 왜냐하면 답변:"
REQUESTS = [
    Request(CTX, (" 예", " 아니오")),  # single-token choices (checked below)
    Request("The following are multiple choice questions about anatomy. Answer:", (" A", " B", " C", " D")),
    Request(CTX + " 문장:", (" 병사들이 전투에 파견되었다.", " 전쟁이 시작되었다 그래서", " 예")),  # mixed lengths
    Request("문장: 긍정 부정", (" 그래서 왜냐하면 질문",)),  # one multi-token choice
    Request(CTX * 3, (" multiple choice questions", " anatomy", " 질문: 답변:")),  # a longer context
    Request("", (" 전쟁이 시작되었다", " The following")),  # empty context: scored after the prefix token
]


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    return load_hf(tiny_ckpt)


def reference(backend: HFBackend, req: Request) -> list[tuple[float, bool]]:
    """Per continuation, a separate causal forward pass over context + continuation."""
    ctx, conts = backend.encode(req)
    out = []
    for cont in conts:
        ids = torch.tensor([ctx + cont])
        with torch.inference_mode():
            logp = torch.log_softmax(backend.model(input_ids=ids).logits[0].float(), -1)
        pred = logp[len(ctx) - 1:-1]
        tgt = torch.tensor(cont)
        out.append((float(pred.gather(1, tgt[:, None]).sum()), bool((pred.argmax(-1) == tgt).all())))
    return out


def scores(backend: HFBackend, requests: list[Request]) -> list[list[tuple[float, bool]]]:
    got = dict(backend.loglikelihood(requests))
    assert sorted(got) == list(range(len(requests)))
    return [got[i] for i in range(len(requests))]


def test_requests_cover_both_paths(tiny):
    backend = HFBackend(*tiny, "t")
    conts = [backend.encode(r)[1] for r in REQUESTS]
    assert [len(c) for c in conts[1]] == [1, 1, 1, 1]
    kinds = [HFBackend._causal(c) for c in conts]
    assert kinds == [all(len(x) == 1 for x in conts[0]), True, False, True, False, False]
    assert any(len(x) == 1 for x in conts[2]) and any(len(x) > 1 for x in conts[2])


@pytest.mark.parametrize("batch_tokens", [1, 64, 8192])  # one row per batch; a few; everything in one batch
@pytest.mark.parametrize("share_context", [True, False])
def test_paths_match_reference(tiny, batch_tokens, share_context):
    backend = HFBackend(*tiny, "t", batch_tokens=batch_tokens, share_context=share_context)
    for req, got in zip(REQUESTS, scores(backend, REQUESTS)):
        want = reference(backend, req)
        assert [s for s, _ in got] == pytest.approx([s for s, _ in want], abs=1e-4)
        assert [g for _, g in got] == [g for _, g in want]


def test_truncated_context_matches_reference(tiny):
    """Left truncation to max_length keeps the same ids on both paths."""
    backend = HFBackend(*tiny, "t", max_length=24)
    reqs = [REQUESTS[1], REQUESTS[4], Request(CTX * 2, (" 예", " 아니오"))]
    for req, got in zip(reqs, scores(backend, reqs)):
        ctx, conts = backend.encode(req)
        assert len(ctx) + max(map(len, conts)) - 1 <= 24
        assert [s for s, _ in got] == pytest.approx([s for s, _ in reference(backend, req)], abs=1e-4)


def test_causal_rows_pass_no_mask(tiny):
    """Plain causal rows reach attention without a mask (SDPA's causal kernel); shared rows send a mask
    over the continuations and the cached context only."""
    backend = HFBackend(*tiny, "t")
    seen = []
    hook = backend.model.get_decoder().register_forward_pre_hook(
        lambda _, args, kwargs: seen.append((kwargs["input_ids"].shape, kwargs.get("attention_mask"))),
        with_kwargs=True)
    try:
        scores(backend, REQUESTS[1:2])
        assert len(seen) == 1 and seen[0][1] is None
        seen.clear()
        scores(backend, REQUESTS[2:3])
        ctx, conts = backend.encode(REQUESTS[2])
        tail = 1 + sum(len(c) - 1 for c in conts)
        (head_shape, head_mask), (tail_shape, tail_mask) = seen
        assert head_mask is None and tuple(head_shape) == (1, len(ctx) - 1)
        assert tuple(tail_shape) == (1, tail) and tuple(tail_mask.shape) == (1, 1, tail, len(ctx) - 1 + tail)
    finally:
        hook.remove()


def test_questions_that_open_alike_share_one_pass_over_the_opening(tiny):
    """Causal questions behind the same few-shot block: the block runs once, each question runs only what
    follows it, and every score equals a full pass; a question that shares only a short header stays apart."""
    backend = HFBackend(*tiny, "t", batch_tokens=64)
    shots = "".join(f"질문: {CTX} {i}번\n답변: 예\n\n" for i in range(4))
    questions = [f"질문: 병사들이 {i}번 파견되었다?\n답변:" for i in range(5)]
    reqs = [Request(shots + q, (" 예", " 아니오")) for q in questions]
    reqs += [Request(q + " 문장:", (" A", " B")) for q in questions[:1]]  # shares no opening with the rest
    opening = len(os.path.commonprefix([backend.encode(r)[0] for r in reqs[:5]]))
    assert opening >= SHARED_OPENING
    seen = []
    hook = backend.model.get_decoder().register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        got = scores(backend, reqs)
    finally:
        hook.remove()
    for req, g in zip(reqs, got):
        assert [s for s, _ in g] == pytest.approx([s for s, _ in reference(backend, req)], abs=1e-4)
        assert [h for _, h in g] == [h for _, h in reference(backend, req)]
    assert seen[0] == (1, opening)  # the opening, once
    longest = max(len(backend.encode(r)[0]) for r in reqs[:5]) - opening
    assert sum(b for b, _ in seen[1:]) == len(reqs) and max(t for _, t in seen[1:-1]) == longest
    assert seen[-1] == (1, len(backend.encode(reqs[5])[0]))  # the lone question: one whole pass
