"""The Transformer itself: config validation, parameter counts, KV cache and packed-document masking."""

import re
from pathlib import Path

import pytest
import torch

from openhcx.io import UserError
from openhcx.model.generate import Sampling, generate
from openhcx.model.transformer import (
    PRESETS, KVCache, ModelConfig, Transformer, last_real, model_config, positions_in_documents,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "model.md"


def small(**overrides) -> ModelConfig:
    return model_config("tiny", vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                        max_seq_len=64, **overrides)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(small()).eval()


def test_unknown_preset_and_bad_fields_name_the_key():
    with pytest.raises(UserError, match="preset='huge'"):
        model_config("huge")
    with pytest.raises(UserError, match="model.n_kv_head"):
        model_config("tiny", n_kv_head=2)
    with pytest.raises(UserError, match="model.n_kv_heads=3"):
        model_config("tiny", n_kv_heads=3)
    with pytest.raises(UserError, match="model.dim"):
        model_config("tiny", dim="128")
    with pytest.raises(UserError, match="model.head"):
        model_config("tiny", head="value")
    with pytest.raises(UserError, match="model.tie_embeddings"):
        model_config("tiny", tie_embeddings=1)


@pytest.mark.parametrize("changes", [{}, {"tie_embeddings": True}, {"head": "scalar"}])
def test_num_params_counts_the_real_module(changes):
    config = small(**changes)
    with torch.device("meta"):
        model = Transformer(config)
    assert config.num_params() == sum(p.numel() for p in model.parameters())


def test_tiny_is_a_few_million_and_presets_grow():
    assert 1e6 < PRESETS["tiny"].num_params() < 1e7
    sizes = [c.num_params() for c in PRESETS.values()]
    assert sizes == sorted(sizes) and sizes[-1] > 1e10


def test_docs_table_matches_computed_counts():
    if not DOCS.exists():
        pytest.skip("docs/model.md not written")
    text = DOCS.read_text(encoding="utf-8")
    for name, config in PRESETS.items():
        row = re.search(rf"^\| `{re.escape(name)}` \|.*\| ([\d,]+) \|", text, re.M)
        assert row, f"no table row for preset {name}"
        assert int(row.group(1).replace(",", "")) == config.num_params()


def test_flops_per_token_is_six_n_plus_attention():
    c = small()
    matmul = c.num_params() - c.vocab_size * c.dim - c.dim * (2 * c.n_layers + 1)  # minus embedding, norms
    assert c.flops_per_token(32) == 6 * matmul + 12 * c.n_layers * c.dim * 32


def test_context_longer_than_max_seq_len_is_refused(model):
    with pytest.raises(UserError, match="max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_kv_cache_decoding_equals_full_recomputation(model):
    ids = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.config, 2, 20)
        steps = [model(ids[:, :8], cache=cache)]
        steps += [model(ids[:, t:t + 1], cache=cache) for t in range(8, 20)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


def test_left_padded_batch_with_cache_equals_each_prompt_alone(model):
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, 96, (n,), generator=g) for n in (9, 4, 6)]
    follow = torch.randint(1, 96, (3, 5), generator=g)
    ids = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, 9 - len(p):], mask[row, 9 - len(p):] = p, True
    with torch.no_grad():
        cache = KVCache(model.config, 3, 14)
        first = model(ids, attn_mask=mask, cache=cache)
        later = [model(follow[:, t:t + 1], cache=cache) for t in range(5)]
        for row, p in enumerate(prompts):
            alone = model(torch.cat([p, follow[row]])[None])[0]
            torch.testing.assert_close(first[row, 9 - len(p):], alone[: len(p)], atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.cat([x[row] for x in later]), alone[len(p):], atol=1e-5, rtol=0)


def test_decoding_without_stops_or_streaming_gives_the_streamed_tokens(model):
    # Without stop ids, stop strings or on_token, generate keeps tokens on the device until the end.
    prompts = [[5, 6, 7, 8, 9], [12], [13, 14, 15]]
    streamed = []
    watched = generate(model, prompts, Sampling(max_new_tokens=9), on_token=lambda r, t: streamed.append(r))
    plain = generate(model, prompts, Sampling(max_new_tokens=9))
    assert [c.ids for c in plain] == [c.ids for c in watched] and len(streamed) == 27
    assert all(c.finish_reason == "length" and len(c.ids) == 9 for c in plain)


def test_a_row_that_stops_early_leaves_the_others_decoding_as_alone(model):
    prompts = [[5, 6, 7, 8, 9], [12], [13, 14, 15]]
    free = generate(model, prompts, Sampling(max_new_tokens=10))
    stop = free[1].ids[2]  # row 1 stops at its third token; the others feed padding to it from then on
    sampling = Sampling(max_new_tokens=10, stop_ids=(stop,))
    batched = generate(model, prompts, sampling)
    alone = [generate(model, [p], sampling)[0] for p in prompts]
    assert batched[1].ids == free[1].ids[: free[1].ids.index(stop) + 1] and batched[1].finish_reason == "stop"
    assert [c.ids for c in batched] == [c.ids for c in alone]


def test_right_padding_leaves_real_tokens_unchanged(model):
    ids = torch.randint(1, 96, (1, 7), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded)[:, :7], model(ids), atol=1e-6, rtol=0)


def test_packed_documents_equal_running_them_separately(model):
    g = torch.Generator().manual_seed(4)
    docs = [torch.randint(1, 96, (n,), generator=g) for n in (5, 9, 3)]
    packed = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    assert positions_in_documents(doc_ids).tolist() == [[*range(5), *range(9), *range(3)]]
    with torch.no_grad():
        together = model(packed, doc_ids=doc_ids)[0]
        apart = torch.cat([model(d[None])[0] for d in docs])
        plain = model(packed)[0]
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=0)
    assert (plain[5:] - apart[5:]).abs().max() > 1e-2  # without doc_ids the documents do mix


def test_scalar_head_gives_one_value_per_position_read_at_last_real_token():
    torch.manual_seed(0)
    model = Transformer(small(head="scalar")).eval()
    ids = torch.randint(1, 96, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        values = model(ids)
        alone = model(ids[:1, :4])
    assert values.shape == (2, 6)
    torch.testing.assert_close(last_real(values, mask), torch.stack([alone[0, 3], values[1, 5]]))


def test_tied_embeddings_share_one_matrix():
    model = Transformer(small(tie_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_meta_init_then_init_weights_gives_a_working_model():
    with torch.device("meta"):
        model = Transformer(small())
    model.to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(0))
    logits = model(torch.arange(10)[None])
    assert torch.isfinite(logits).all() and logits.std() > 0
    assert model.rope_cos.shape == (64, 16) and model.rope_cos[0].eq(1).all()


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    model = Transformer(small())
    ids = torch.randint(0, 96, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 96), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(96.0)).item(), abs=0.1)
    assert losses[-1] < losses[0] - 1.0
