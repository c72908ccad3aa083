"""Decoding: logit processing against hand-computed distributions, stops, streaming, batching and infill."""

import math

import pytest
import torch

from openhcx.io import UserError
from openhcx.model.generate import (
    argmax,
    FimTokens, Sampling, generate, infill, penalize_repetition, psm_prompt, sampling_probs,
)
from openhcx.model.transformer import Transformer, decoding_head, decoding_logits, model_config

LOGITS = torch.tensor([[2.0, 1.0, 0.0, -1.0]])


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def close(got, want):
    torch.testing.assert_close(got, torch.tensor([want]), atol=1e-6, rtol=0)


def decode(ids):
    return "".join(chr(ord("a") + i % 26) for i in ids)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = model_config("tiny", vocab_size=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                          max_seq_len=48)
    return Transformer(config).eval()


def test_blocked_argmax_equals_torch_argmax_with_ties():
    g = torch.Generator().manual_seed(0)
    for rows, vocab in ((8, 16000), (3, 256), (1, 16000), (4, 1000)):  # 1000: not a multiple of the block
        logits = torch.randn(rows, vocab, generator=g)
        assert torch.equal(argmax(logits), logits.argmax(-1))
    tied = torch.zeros(4, 1024)
    tied[:, [700, 300, 900]] = 5.0  # the first maximum wins, across blocks and within one
    tied[2, 301] = 5.0
    assert argmax(tied).tolist() == tied.argmax(-1).tolist() == [300, 300, 300, 300]
    assert argmax(torch.zeros(2, 512)).tolist() == [0, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_decoding_head_layouts_give_the_heads_logits(dtype):
    """fp16 is packed only on CPUs with AVX512-FP16; elsewhere it falls back to the plain copy, same logits."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(16000, 128, generator=g).to(dtype)
    threads = torch.get_num_threads()
    seen = set()
    try:
        for n_threads, rows in ((1, 1), (1, 8), (2, 1), (2, 3)):
            torch.set_num_threads(n_threads)
            head = decoding_head(weight, rows)
            seen.add(head.is_mkldnn)
            h = torch.randn(rows, 1, 128, generator=g).to(dtype)
            want = torch.nn.functional.linear(h.double(), weight.double())
            got = decoding_logits(h, head)
            assert got.shape == (rows, 1, 16000) and got.dtype == dtype
            torch.testing.assert_close(got.double(), want, atol=1e-4 if dtype == torch.float32 else 0.2, rtol=1e-2)
    finally:
        torch.set_num_threads(threads)
    assert False in seen  # one row: the (dim, vocab) copy
    if dtype == torch.float32 and torch.backends.mkldnn.is_available():
        assert True in seen  # more rows: the packed oneDNN layout


def test_temperature_scales_logits():
    close(sampling_probs(LOGITS, Sampling(temperature=0.5)), softmax([4.0, 2.0, 0.0, -2.0]))


def test_top_k_keeps_the_k_largest():
    e2, e1 = math.exp(2), math.exp(1)
    close(sampling_probs(LOGITS, Sampling(temperature=1.0, top_k=2)), [e2 / (e2 + e1), e1 / (e2 + e1), 0, 0])


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.6, 0.25, 0.1, 0.05]]).log()
    close(sampling_probs(logits, Sampling(temperature=1.0, top_p=0.9)), [0.6 / 0.95, 0.25 / 0.95, 0.1 / 0.95, 0])
    close(sampling_probs(logits, Sampling(temperature=1.0, top_p=0.5)), [1.0, 0, 0, 0])


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    seen = torch.tensor([[True, False, False, True]])
    close(penalize_repetition(LOGITS, seen, 2.0), [1.0, 1.0, 0.0, -2.0])


def test_sampling_follows_the_distribution_and_repeats_with_a_seed(model):
    probs = sampling_probs(torch.tensor([[1.0, 0.5, 0.0, -3.0]]).expand(20000, 4), Sampling(temperature=0.7))
    draws = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0)).squeeze(1)
    freq = torch.bincount(draws, minlength=4) / 20000
    torch.testing.assert_close(freq, probs[0], atol=0.015, rtol=0)

    sampling = Sampling(max_new_tokens=10, temperature=1.0, top_k=20, seed=7)
    first = generate(model, [[1, 2, 3]], sampling)[0].ids
    assert first == generate(model, [[1, 2, 3]], sampling)[0].ids
    assert first != generate(model, [[1, 2, 3]], Sampling(max_new_tokens=10, temperature=1.0, seed=8))[0].ids


def test_stop_id_ends_the_row_and_is_kept_in_ids_not_text(model):
    free = generate(model, [[3, 1, 4, 1, 5]], Sampling(max_new_tokens=12))[0].ids
    stop = free[4]
    cut = free.index(stop)
    got = generate(model, [[3, 1, 4, 1, 5]], Sampling(max_new_tokens=12, stop_ids=(stop,)), decode=decode)[0]
    assert got.ids == free[: cut + 1] and got.finish_reason == "stop" and got.text == decode(free[:cut])


def test_stop_string_cuts_the_text(model):
    free = generate(model, [[2, 7, 1, 8]], Sampling(max_new_tokens=12), decode=decode)[0]
    assert free.finish_reason == "length" and len(free.ids) == 12
    stop = free.text[5:7]
    cut = free.text.index(stop)
    got = generate(model, [[2, 7, 1, 8]], Sampling(max_new_tokens=12, stop_strings=("zzzz", stop)),
                   decode=decode)[0]
    assert got.text == free.text[:cut] and got.finish_reason == "stop"
    assert got.ids == free.ids[: cut + len(stop)]  # one character per token here
    with pytest.raises(UserError, match="decode"):
        generate(model, [[1]], Sampling(stop_strings=("x",)))


def test_streaming_callback_sees_every_token_in_order(model):
    streamed = []
    out = generate(model, [[1, 2], [3, 4, 5]], Sampling(max_new_tokens=6),
                   on_token=lambda row, tok: streamed.append((row, tok)))
    for row, completion in enumerate(out):
        assert [t for r, t in streamed if r == row] == completion.ids


def test_batched_prompts_decode_as_they_would_alone(model):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15]]
    batched = generate(model, prompts, Sampling(max_new_tokens=8, repetition_penalty=1.3))
    alone = [generate(model, [p], Sampling(max_new_tokens=8, repetition_penalty=1.3))[0] for p in prompts]
    assert [c.ids for c in batched] == [c.ids for c in alone]


def test_samples_of_one_prompt_prefill_it_once(model, monkeypatch):
    """n copies of a prompt (a task's n samples): one prefill row, its keys and values copied to the others; every
    row then decodes as the prompt alone, and sampled rows draw different, repeatable continuations."""
    shapes = []
    forward = Transformer.forward
    monkeypatch.setattr(Transformer, "forward", lambda self, ids, **kw: (shapes.append(tuple(ids.shape)),
                                                                         forward(self, ids, **kw))[1])
    prompt = [5, 6, 7, 8, 9, 10, 11]
    greedy = Sampling(max_new_tokens=8, repetition_penalty=1.3)
    rows = generate(model, [prompt] * 3, greedy)
    assert shapes[0] == (1, 7) and shapes[1:] == [(3, 1)] * 7
    assert [c.ids for c in rows] == [generate(model, [prompt], greedy)[0].ids] * 3
    sampled = Sampling(max_new_tokens=8, temperature=1.0, seed=3)
    draws = [c.ids for c in generate(model, [prompt] * 4, sampled)]
    assert len({tuple(d) for d in draws}) > 1 and draws == [c.ids for c in generate(model, [prompt] * 4, sampled)]


def test_completion_never_exceeds_the_context(model):
    out = generate(model, [list(range(1, 41))], Sampling(max_new_tokens=20))[0]
    assert len(out.ids) == 8 and out.finish_reason == "length"
    with pytest.raises(UserError, match="max_seq_len=48"):
        generate(model, [list(range(49))])


def test_infill_uses_psm_and_stops_at_end_of_text(model):
    fim = FimTokens(prefix=60, suffix=61, middle=62, end=63)
    assert psm_prompt([1, 2], [3], fim) == [60, 1, 2, 61, 3, 62]
    prompt = psm_prompt([1, 2, 3], [7, 8], fim)
    free = generate(model, [prompt], Sampling(max_new_tokens=10))[0].ids
    end = FimTokens(prefix=60, suffix=61, middle=62, end=free[2])
    got = infill(model, [1, 2, 3], [7, 8], end, Sampling(max_new_tokens=10))
    assert got.ids == free[: free.index(free[2]) + 1] and got.finish_reason == "stop"


def test_bad_sampling_values_name_the_key():
    with pytest.raises(UserError, match="sampling.top_p"):
        Sampling(top_p=0.0)
    with pytest.raises(UserError, match="sampling.temperature"):
        Sampling(temperature=-1)
    with pytest.raises(UserError, match="sampling.stop_strings"):
        Sampling(stop_strings=("</s>", ""))
