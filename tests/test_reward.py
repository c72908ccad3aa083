"""Reward model: prompt groups share a step, scores at the last real token, normalisation, HF parity, accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from openhcx.io import UserError
from openhcx.model.transformer import ModelConfig, Transformer
from openhcx.tokenizer.tokenizer import PAD
from openhcx.train.batching import EpochLoader
from openhcx.train.losses import IGNORE_INDEX
from openhcx.train.reward import (RewardModel, RewardNorm, collate_groups, group_batches, load_pair_data, normalise,
                                  pair_loss, sequence_scores, train_reward)
from openhcx.tokenizer.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "data/demo/preference.jsonl"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair_data(demo_tokenizer):
    """The demo pairs rendered once, a fifth of the prompts held out (the split `trained` uses)."""
    return load_pair_data([str(PAIRS)], Tokenizer.load(demo_tokenizer), 256, 2048, False, 0.2, 0)


@pytest.fixture(scope="module")
def trained(tiny_lm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reward") / "run"
    train_reward(str(tiny_lm), [str(PAIRS)], str(out), max_tokens=2048, lr=2e-3, min_lr=2e-4, warmup_steps=3,
                 heldout_fraction=0.2, norm_samples=5000, mlflow=False, progress=False, peak_flops=1e9)
    return out


def test_collate_interleaves_pairs_and_counts_pairs_not_rows():
    from openhcx.train.reward import RenderedGroup

    groups = [RenderedGroup([([5, 6, 7], [5, 8])], "a:1"), RenderedGroup([([9], [9, 9]), ([4, 4], [3])], "b:2")]
    batch, shape = collate_groups(groups, pad_id=1)
    assert batch.ids.tolist() == [[5, 6, 7], [5, 8, 1], [9, 1, 1], [9, 9, 1], [4, 4, 1], [3, 1, 1]]
    assert (batch.targets != IGNORE_INDEX).sum().item() == 3 and batch.targets[0::2].eq(0).all()
    assert shape.real == 11 and shape.padded == 18


def test_score_is_read_at_the_last_real_token_of_right_padded_rows():
    torch.manual_seed(1)
    config = ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=32,
                         head="scalar", pad_token_id=1)
    model = Transformer(config).eval()
    seqs = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19]]
    from openhcx.train.batching import pad_right

    ids, mask = pad_right(seqs, pad_id=1)
    with torch.no_grad():
        batched = sequence_scores(model, ids, mask)
        alone = torch.stack([model(torch.tensor([s]))[0, -1] for s in seqs])
        at_pad = model(ids)[1, -1]
    assert torch.allclose(batched, alone, atol=1e-5)
    assert abs(at_pad.item() - alone[1].item()) > 1e-3  # the padded end differs: reading it would be wrong


def test_all_pairs_of_a_prompt_share_one_step(demo_tokenizer, pair_data):
    tok, data = Tokenizer.load(demo_tokenizer), pair_data
    multi = [i for i, g in enumerate(data.train) if len(g.pairs) > 1]
    assert data.pairs == 600 and len(data.train) + len(data.heldout) == 545 and len(multi) >= 30
    loader = EpochLoader(lambda e: group_batches(data.train, 1536, e),
                         lambda idx: (idx, collate_groups([data.train[i] for i in idx], tok.id(PAD))[1]))
    steps = [loader.next_batch() for _ in range(loader.steps_per_epoch())]
    where = {i: s for s, idx in enumerate(steps) for i in idx}
    assert sorted(where) == list(range(len(data.train)))  # every prompt once, never split across steps
    for idx in steps:
        batch, shape = collate_groups([data.train[i] for i in idx], tok.id(PAD))
        assert shape.padded <= 1536
        assert (batch.targets != IGNORE_INDEX).sum().item() == sum(len(data.train[i].pairs) for i in idx)


def test_identical_pair_and_oversized_group_are_named(demo_tokenizer, tmp_path):
    tok = Tokenizer.load(demo_tokenizer)
    lines = PAIRS.read_text(encoding="utf-8").splitlines()[:4]
    same = {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Hello."}
    bad = tmp_path / "pairs.jsonl"
    bad.write_text("\n".join(lines[:2] + [json.dumps(same)] + lines[2:]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"{bad}:3: chosen and rejected responses are identical"):
        load_pair_data([str(bad)], tok, 256, 4096, False, 0.0, 0)
    assert load_pair_data([str(bad)], tok, 256, 4096, True, 0.0, 0).skipped == {"identical": 1}
    with pytest.raises(UserError, match=rf"{bad}:1: the 1 pair\(s\) of this prompt need 2 x \d+ padded tokens"):
        load_pair_data([str(bad)], tok, 256, 40, True, 0.0, 0)


def test_normalise_centres_scales_and_clips():
    norm = RewardNorm(mean=2.0, std=0.5, clip=3.0, reference="test", count=10)
    assert normalise(torch.tensor([2.0, 2.5, 10.0, -10.0]), norm).tolist() == [0.0, 1.0, 3.0, -3.0]


def test_heldout_accuracy_beats_chance_and_is_logged(trained):
    manifest = json.loads((trained / "manifest.json").read_text())
    acc, pairs = manifest["heldout_accuracy"], manifest["heldout_pairs"]
    print(f"held-out pairwise accuracy {manifest['heldout_accuracy_start']:.3f} -> {acc:.3f} on {pairs} pairs")
    assert pairs >= 100 and acc >= 0.7  # chance is 0.5; 0.7 of 100+ pairs is over 4 standard deviations above
    rows = [json.loads(line) for line in (trained / "eval.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == manifest["steps"] and rows[-1]["accuracy"] == acc
    saved = sorted((trained / "checkpoints").iterdir())
    assert saved and all(json.loads((c / "manifest.json").read_text())["stage"] == "reward-checkpoint" for c in saved)


def test_norm_stats_are_stored_and_applied(trained, pair_data):
    model_dir = trained / "model"
    stored = json.loads((model_dir / "reward_norm.json").read_text())
    assert json.loads((model_dir / "config.json").read_text())["reward_norm"] == stored
    assert json.loads((model_dir / "manifest.json").read_text())["reward_norm"] == stored
    assert stored["reference"] == "training chosen responses" and stored["clip"] == 5.0
    rm = RewardModel.load(model_dir)
    chosen = list({tuple(c): None for g in pair_data.train for c, _ in g.pairs})
    assert stored["count"] == len(chosen)
    raw, normalised = rm.score(chosen)
    assert abs(raw.mean().item() - stored["mean"]) < 1e-4 and abs(raw.std().item() - stored["std"]) < 1e-4
    assert torch.allclose(normalised, ((raw - stored["mean"]) / stored["std"]).clamp(-5, 5))
    assert abs(normalised.mean().item()) < 0.05


def test_transformers_reads_the_same_score_at_the_last_real_token(trained, demo_tokenizer, pair_data):
    from transformers import AutoModelForSequenceClassification

    model_dir = trained / "model"
    hf = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForSequenceClassification" and hf.config.num_labels == 1
    tok, data = Tokenizer.load(demo_tokenizer), pair_data
    seqs = [s for g in data.heldout[:4] for pair in g.pairs for s in pair]
    assert len({len(s) for s in seqs}) > 1  # right padding really happens
    from openhcx.train.batching import pad_right

    ids, mask = pad_right(seqs, tok.id(PAD))
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits[:, 0]
    ours, _ = RewardModel.load(model_dir).score(seqs)
    assert torch.allclose(theirs, ours, atol=1e-4)
    # The same numbers drive training: pair_loss on that batch is the Bradley-Terry loss of these scores.
    batch, _ = collate_groups(data.heldout[:4], tok.id(PAD))
    rm = RewardModel.load(model_dir).model
    with torch.no_grad():
        total, count = pair_loss(rm, batch)
    expected = -torch.nn.functional.logsigmoid(ours[0::2] - ours[1::2]).sum()
    assert count.item() == len(seqs) // 2 and abs(total.item() - expected.item()) < 1e-4
