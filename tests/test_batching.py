"""Max-token batches: the budget holds, lengths are grouped, units stay whole, the loader resumes exactly."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openhcx.train.batching import EpochLoader, Shape, pad_right, padded_tokens, token_budget_batches


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=80), st.integers(60, 400), st.integers(0, 5))
def test_batches_never_exceed_the_budget_and_use_every_unit_once(lengths, max_tokens, seed):
    batches = token_budget_batches(lengths, max_tokens, seed)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(padded_tokens([lengths[i] for i in b]) <= max_tokens for b in batches)


def test_similar_lengths_share_a_batch_and_batch_size_varies():
    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(500)]
    batches = token_budget_batches(lengths, 1000, seed=1)
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    # Sorted by length before cutting: batches cover disjoint length ranges (touching at equal lengths).
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))
    short = next(b for b in batches if lengths.index(min(lengths)) in b)
    long = next(b for b in batches if lengths.index(max(lengths)) in b)
    assert len(short) >= 30 and len(long) <= 5
    # Greedy cutting wastes little: the padded total is within 10% of the real token count.
    padded = sum(padded_tokens([lengths[i] for i in b]) for b in batches)
    assert padded <= 1.1 * sum(lengths)


def test_seeds_change_order_but_not_the_number_of_batches():
    rng = random.Random(3)
    lengths = [rng.randint(1, 50) for _ in range(300)]
    rows = [rng.randint(1, 3) for _ in range(300)]
    a, b = (token_budget_batches(lengths, 300, seed, rows=rows) for seed in (0, 1))
    assert len(a) == len(b) and a != b


def test_units_with_several_rows_stay_whole_under_the_budget():
    lengths, rows = [10, 12, 30, 31, 9], [4, 2, 2, 6, 1]
    batches = token_budget_batches(lengths, 200, seed=0, rows=rows)
    for b in batches:
        assert padded_tokens([lengths[i] for i in b], [rows[i] for i in b]) <= 200
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="unit 3: 6 row"):
        token_budget_batches(lengths, 150, rows=rows)


def test_pad_right_keeps_every_row_at_position_zero():
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    targets, _ = pad_right([[5], [8, 9]], pad_id=1, fill=-100)
    assert targets.tolist() == [[5, -100], [8, 9]]


def _loader(rank=0, world_size=1):
    lengths = list(range(1, 41))
    return EpochLoader(lambda epoch: token_budget_batches(lengths, 80, seed=epoch),
                       lambda idx: (sorted(idx), Shape(sum(lengths[i] for i in idx), 0, 0)), rank, world_size)


def test_loader_walks_epochs_and_resumes_at_the_exact_batch():
    loader = _loader()
    per_epoch = loader.steps_per_epoch()
    seen = [loader.next_batch() for _ in range(per_epoch)]
    assert sorted(i for b in seen for i in b) == list(range(40))
    state = loader.state_dict()
    upcoming = [loader.next_batch() for _ in range(3)]
    assert loader.epoch == 1 and upcoming != seen[:3]  # a new epoch reshuffles
    resumed = _loader()
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(3)] == upcoming
    assert resumed.last_shape.real == sum(i + 1 for i in upcoming[-1])


def test_ranks_take_disjoint_batches_and_the_same_number_of_steps():
    r0, r1 = _loader(0, 2), _loader(1, 2)
    assert r0.steps_per_epoch() == r1.steps_per_epoch() == len(r0._batches) // 2
    a = [r0.next_batch() for _ in range(r0.steps_per_epoch())]
    b = [r1.next_batch() for _ in range(r1.steps_per_epoch())]
    assert not {i for x in a for i in x} & {i for x in b for i in x}
