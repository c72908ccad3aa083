"""SFT: the loss by hand, the mask in real batches, input errors, and a short real run that learns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from openhcx.data.chat import read_conversations, tokenize
from openhcx.io import UserError
from openhcx.model.hf import load_checkpoint
from openhcx.model.transformer import ModelConfig, Transformer
from openhcx.tokenizer.tokenizer import ENDOFTURN, PAD, Tokenizer
from openhcx.train.losses import IGNORE_INDEX, token_cross_entropy
from openhcx.train.sft import (collate_samples, heldout_split, load_sft_data, sft, sft_batches,
                               sft_loss, shift)

ROOT = Path(__file__).resolve().parents[1]
SFT_DATA = ROOT / "data/demo/sft.jsonl"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_masked_lm_loss_by_hand():
    # ids 5 6 7 8 with the last two trained: inputs 5 6 7, targets (ignored) 7 8.
    inputs, targets = shift([5, 6, 7, 8], [0, 0, 1, 1])
    assert inputs == [5, 6, 7] and targets == [IGNORE_INDEX, 7, 8]
    # Vocab of 9; position 1 puts logit ln 3 on id 7 (p = 3/11), position 2 is uniform (p = 1/9).
    logits = torch.zeros(1, 3, 9)
    logits[0, 1, 7] = math.log(3)
    logits[0, 0, 5] = 50.0  # an untrained position: must not matter
    total, count = token_cross_entropy(logits, torch.tensor([targets]))
    assert count.item() == 2
    assert abs(total.item() - (math.log(11 / 3) + math.log(9))) < 1e-5


def test_sft_loss_ignores_padding_rows_add_nothing():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=40, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32, max_seq_len=32)
    model = Transformer(config)
    from openhcx.data.chat import Sample

    a, b = Sample([3, 4, 5, 6, 7], [0, 0, 1, 1, 1]), Sample([8, 9, 10], [0, 1, 1])
    batch, shape = collate_samples([a, b], pad_id=1)
    assert batch.inputs.tolist() == [[3, 4, 5, 6], [8, 9, 1, 1]]
    assert shape.real == 6 and shape.padded == 8 and shape.width == 4
    together, count = sft_loss(model, batch)
    alone = sum(sft_loss(model, collate_samples([s], 1)[0])[0] for s in (a, b))
    assert count.item() == 5 and abs(together.item() - alone.item()) < 1e-4


def test_mask_covers_exactly_the_assistant_turns_in_real_batches(demo_tokenizer):
    tok = Tokenizer.load(demo_tokenizer)
    convs = read_conversations(SFT_DATA).records[:80]
    samples = tokenize(convs, tok).records
    end = tok.id(ENDOFTURN)
    checked = 0
    for idx in sft_batches(samples, 600, seed=0):
        batch, _ = collate_samples([samples[i] for i in idx], tok.id(PAD))
        for row, i in enumerate(idx):
            trained = [t for t in batch.targets[row].tolist() if t != IGNORE_INDEX]
            turns, current = [], []
            for t in trained:
                current.append(t)
                if t == end:
                    turns.append(tok.decode(current[:-1]))
                    current = []
            assert not current  # every trained run ends with <|endofturn|>
            wanted = [m.content for m in convs[i].messages if m.role == "assistant"]
            assert turns == wanted
            checked += 1
    assert checked == 80


def test_over_long_conversation_is_named_or_skipped(demo_tokenizer, tmp_path):
    tok = Tokenizer.load(demo_tokenizer)
    lines = SFT_DATA.read_text(encoding="utf-8").splitlines()[:5]
    long = {"messages": [{"role": "user", "content": "말해 줘. " * 80}, {"role": "assistant", "content": "네."}]}
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(lines[:3] + [json.dumps(long, ensure_ascii=False)] + lines[3:]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"{data}:4: conversation is \d+ tokens, longer than the limit of 120"):
        load_sft_data([str(data)], tok, 120, 4096, "auto", False, 0.0, 0)
    loaded = load_sft_data([str(data)], tok, 120, 4096, "auto", True, 0.0, 0)
    assert len(loaded.train) == 5 and loaded.skipped == {"too_long": 1}
    with pytest.raises(UserError, match="max_tokens=20 is below the longest conversation"):
        load_sft_data([str(data)], tok, 120, 20, "auto", True, 0.0, 0)


def test_heldout_split_is_seeded_and_disjoint():
    train, held = heldout_split(100, 0.1, seed=3)
    assert len(held) == 10 and not set(train) & set(held) and sorted(train + held) == list(range(100))
    assert heldout_split(100, 0.1, seed=3) == (train, held) != heldout_split(100, 0.1, seed=4)
    assert heldout_split(5, 0.0, 0) == ([0, 1, 2, 3, 4], [])


def test_bad_input_writes_nothing(tiny_lm, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}\n')
    out = tmp_path / "run"
    with pytest.raises(UserError, match=rf"{bad}:1: .*unknown role 'robot'"):
        sft(str(tiny_lm), [str(bad)], str(out), mlflow=False, progress=False)
    assert not out.exists()


def test_short_sft_lowers_heldout_assistant_loss_and_resumes(tiny_lm, tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(SFT_DATA.read_text(encoding="utf-8").splitlines()[:240]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    kwargs = dict(epochs=2, max_tokens=1536, lr=3e-3, min_lr=3e-4, warmup_steps=2, heldout_fraction=0.1,
                  checkpoint_every=10, mlflow=False, progress=False, peak_flops=1e9)
    path = sft(str(tiny_lm), [str(data)], str(out), show=1, **kwargs)
    shown = capsys.readouterr().out
    assert f"--- {data}:" in shown and "⟦" in shown and "<|assistant|>·⟦" in shown
    manifest = json.loads((out / "manifest.json").read_text())
    start, end = manifest["heldout_loss_start"], manifest["heldout_loss_end"]
    print(f"held-out assistant loss {start:.3f} -> {end:.3f} over {manifest['steps']} steps")
    assert end < start - 1.5
    assert manifest["train_conversations"] == 216 and manifest["heldout_conversations"] == 24
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert len({r["seq_len"] for r in rows}) > 1  # batch shapes vary with the lengths they group
    saved = sorted((out / "checkpoints").iterdir())
    assert saved and all(json.loads((c / "manifest.json").read_text())["stage"] == "sft-checkpoint" for c in saved)
    # The result is a HF directory with the tokenizer; transformers reads it with no custom code.
    model, config = load_checkpoint(path)
    assert config.head == "lm" and (path / "tokenizer.json").is_file() and (path / "tokenizer_config.json").is_file()
    assert Tokenizer.load(path).morpheme_aware == Tokenizer.load(tiny_lm).morpheme_aware
    # Running again finds the finished run's last checkpoint and trains nothing more.
    again = sft(str(tiny_lm), [str(data)], str(out), **kwargs)
    assert json.loads((out / "manifest.json").read_text())["steps"] == manifest["steps"]
    reloaded, _ = load_checkpoint(again)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
