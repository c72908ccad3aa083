"""Evaluation suites: bpb by hand (one window and many), tasks with categories, held-out prompts, reward pairs,
and the refusals that name the field or file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from openhcx.data.corpus import Source, build_corpus, iter_documents
from openhcx.data.filters import FilterConfig
from openhcx.eval.categories import CATEGORIES
from openhcx.io import UserError
from openhcx.model.hf import load_checkpoint, read_config, save_checkpoint
from openhcx.model.transformer import Transformer
from openhcx.pipeline.suites import Suite, run_suite
from openhcx.tokenizer.tokenizer import EOT, Tokenizer
from openhcx.train.reward import load_pair_data

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures/benchmarks"
PROMPTS = ROOT / "data/demo/heldout_prompts.jsonl"
PAIRS = ROOT / "data/demo/preference.jsonl"
DOCS = {  # both land in the held-out split at heldout_fraction 0.9 (a hash of the text decides)
    "en": "After three days of rain the river rose, and the ferry stopped running until the water went down again.",
    "ko": "비가 사흘 동안 내린 뒤 강물이 불어나서, 물이 다시 빠질 때까지 나룻배는 운행을 멈추었다. "
          "마을 사람들은 다리를 건너 장터에 갔다.",
}
CKPT = {"stage": "base", "step": 40, "path": "base/checkpoints/step-00000040"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A corpus whose held-out split is exactly the two documents above, one per label."""
    src = tmp_path_factory.mktemp("bpb-src")
    for label, text in DOCS.items():
        (src / f"{label}.jsonl").write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("bpb") / "corpus"
    manifest = build_corpus([Source(str(src / f"{label}.jsonl"), label) for label in DOCS], str(out),
                            filters=FilterConfig(min_chars=20), heldout_fraction=0.9)
    assert manifest["totals"]["heldout"] == 2
    return out


@pytest.fixture(scope="module")
def reward_ckpt(tiny_lm, tmp_path_factory) -> Path:
    """A scalar-head checkpoint over the demo tokenizer (random head: figures near chance, but real ones)."""
    config = read_config(tiny_lm).replace(head="scalar")
    torch.manual_seed(1)
    return save_checkpoint(Transformer(config), config, tmp_path_factory.mktemp("rm") / "model", tiny_lm)


def hand_bpb(model_dir: Path, texts: list[str]) -> float:
    """Every token of each text after <|endoftext|>, predicted from at most max_seq_len tokens of its own window."""
    tok = Tokenizer.load(model_dir)
    model, config = load_checkpoint(model_dir)
    span, nll = config.max_seq_len, 0.0
    for text in texts:
        ids = [tok.id(EOT)] + tok.encode(text)
        for start in range(0, len(ids) - 1, span):
            window = torch.tensor([ids[start:start + span + 1]])
            with torch.no_grad():
                logp = model(window[:, :-1]).log_softmax(-1).double()
            nll -= float(logp.gather(2, window[:, 1:, None]).sum())
    return nll / (math.log(2) * sum(len(t.encode("utf-8")) for t in texts))


def test_bpb_is_the_nll_over_the_documents_bytes(tiny_lm, corpus, tmp_path):
    held = [d.text for d in iter_documents(corpus, "heldout")]
    assert sorted(held) == sorted(DOCS.values())
    res = run_suite(str(tiny_lm), str(tmp_path / "a"), Suite(bpb=str(corpus)), CKPT)
    assert res["metrics"]["bpb"] == pytest.approx(hand_bpb(tiny_lm, held), rel=1e-5)
    tok = Tokenizer.load(tiny_lm)
    assert res["counts"] == {"bpb_documents": 2, "bpb_bytes": sum(len(t.encode()) for t in held),
                             "bpb_tokens": sum(len(tok.encode(t)) for t in held)}
    # A random model over a 6,000-token vocabulary: about ln(6000) nats per token.
    per_token = res["metrics"]["bpb"] * math.log(2) * res["counts"]["bpb_bytes"] / res["counts"]["bpb_tokens"]
    assert per_token == pytest.approx(math.log(6000), rel=0.05)
    # bpb_docs takes labels in turn: one document is the first label's (en)
    one = run_suite(str(tiny_lm), str(tmp_path / "b"), Suite(bpb=str(corpus), bpb_docs=1), CKPT)
    assert one["metrics"]["bpb"] == pytest.approx(hand_bpb(tiny_lm, [DOCS["en"]]), rel=1e-5)


def test_bpb_over_many_windows_and_batches(tiny_lm, corpus, tmp_path):
    """A context of 8 tokens: each document spans several windows, batched 3 windows a pass, padded."""
    model, config = load_checkpoint(tiny_lm)
    short = save_checkpoint(model, config.replace(max_seq_len=8), tmp_path / "short", tiny_lm)
    res = run_suite(str(short), str(tmp_path / "out"), Suite(bpb=str(corpus), batch_tokens=27), CKPT)
    assert res["counts"]["bpb_tokens"] > 3 * 8
    held = [DOCS["en"], DOCS["ko"]]
    assert res["metrics"]["bpb"] == pytest.approx(hand_bpb(short, held), rel=1e-5)
    # the first window's context differs from one long window's: the windowing is visible in the figure
    assert res["metrics"]["bpb"] != pytest.approx(hand_bpb(tiny_lm, held), rel=1e-4)


def test_base_suite_writes_tasks_categories_metrics_and_the_checkpoint(tiny_lm, corpus, tmp_path):
    suite = Suite(tasks=["arc_easy", "kmmlu_accounting"], limit=3, shots=0, data_root=str(FIXTURES), bpb=str(corpus))
    out = tmp_path / "eval"
    res = run_suite(str(tiny_lm), str(out), suite, CKPT)
    assert json.loads((out / "results.json").read_text(encoding="utf-8")) == res
    assert res["checkpoint"] == CKPT and res["model"] == str(tiny_lm) and res["suite"]["limit"] == 3
    assert {name: t["n"] for name, t in res["tasks"].items()} == {"arc_easy": 2, "kmmlu_accounting": 3}
    cats = {c["name"]: c for c in res["categories"]}
    assert list(cats) == list(CATEGORIES)  # the report's seven, then Chat and Multilingual
    arc, kmmlu = res["tasks"]["arc_easy"]["metrics"]["acc"], res["tasks"]["kmmlu_accounting"]["metrics"]["acc"]
    assert cats["Commonsense"]["score"] == pytest.approx(100 * arc)
    assert cats["Korean"]["score"] == pytest.approx(100 * kmmlu)
    assert all(c["score"] is None for name, c in cats.items() if name not in ("Commonsense", "Korean"))
    assert res["overall"] == pytest.approx((100 * arc + 100 * kmmlu) / 2)
    assert res["metrics"]["bpb"] > 0 and (out / "tasks" / "cache.jsonl").is_file()
    # per-item records agree with the aggregate
    items = [json.loads(line) for line in (out / "tasks/samples/arc_easy.jsonl").read_text().splitlines()]
    assert sum(r["acc"] for r in items) / len(items) == pytest.approx(arc)


def test_sft_suite_scores_heldout_prompts(tiny_lm, tmp_path):
    res = run_suite(str(tiny_lm), str(tmp_path / "sft"), Suite(prompts=str(PROMPTS), prompt_limit=4,
                                                                max_new_tokens=6), {**CKPT, "stage": "sft"})
    m = res["metrics"]
    assert set(m) == {"heldout_score", "heldout_constraints", "heldout_length_chars", "heldout_repetition_rate"}
    assert all(0 <= m[k] <= 1 for k in ("heldout_score", "heldout_constraints", "heldout_repetition_rate"))
    assert m["heldout_length_chars"] >= 0 and res["counts"] == {"heldout_prompts": 4}
    # no tasks: no scores, every category reported missing
    assert res["tasks"] == {} and res["overall"] is None and all(c["score"] is None for c in res["categories"])


def test_reward_suite_scores_only_the_heldout_pairs(reward_ckpt, demo_tokenizer, tmp_path):
    pairs = tmp_path / "pairs.jsonl"  # the demo file's first 100 pairs
    pairs.write_text("".join(PAIRS.read_text(encoding="utf-8").splitlines(keepends=True)[:100]), encoding="utf-8")
    res = run_suite(str(reward_ckpt), str(tmp_path / "rm"), Suite(pairs=str(pairs), heldout_fraction=0.2),
                    {**CKPT, "stage": "reward"})
    data = load_pair_data([str(pairs)], Tokenizer.load(demo_tokenizer), 256, 10**9, False, 0.2, 0)
    assert len(data.heldout) >= 5
    assert res["counts"] == {"pairs": sum(len(g.pairs) for g in data.heldout), "pair_prompts": len(data.heldout)}
    m = res["metrics"]
    assert 0 <= m["pair_accuracy"] <= 1 and m["pair_loss"] > 0
    # Bradley-Terry loss at margin 0 is ln 2; a random head's margins are small
    assert m["pair_loss"] == pytest.approx(math.log(2), abs=0.2)


def test_refusals_name_the_field_or_file(tiny_lm, reward_ckpt, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(UserError, match="^tasks: .*reward checkpoint"):
        run_suite(str(reward_ckpt), str(out), Suite(tasks=["arc_easy"], pairs=str(PAIRS)), CKPT)
    with pytest.raises(UserError, match="^bpb: "):
        run_suite(str(reward_ckpt), str(out), Suite(bpb="corpus"), CKPT)
    with pytest.raises(UserError, match="^pairs: .*language model"):
        run_suite(str(tiny_lm), str(out), Suite(pairs=str(PAIRS)), CKPT)
    with pytest.raises(UserError, match="nope.jsonl: held-out prompt file not found"):
        run_suite(str(tiny_lm), str(out), Suite(prompts=str(tmp_path / "nope.jsonl")), CKPT)
    with pytest.raises(UserError, match="missing/manifest.json: corpus manifest not found"):
        run_suite(str(tiny_lm), str(out), Suite(bpb=str(tmp_path / "missing")), CKPT)
    with pytest.raises(UserError, match="unknown task 'arc_eazy'"):
        run_suite(str(tiny_lm), str(out), Suite(tasks=["arc_eazy"]), CKPT)
    with pytest.raises(UserError, match="no-model: checkpoint directory not found"):
        run_suite(str(tmp_path / "no-model"), str(out), Suite(), CKPT)
    assert not out.exists()  # nothing written by a refused suite
    with pytest.raises(UserError, match="^limit=0: must be at least 1"):
        Suite(limit=0)
    with pytest.raises(UserError, match="^heldout_fraction=0"):
        Suite(heldout_fraction=0)


def test_a_suite_runs_generation_tasks_beside_multiple_choice_ones(tiny_lm, tmp_path):
    import shutil

    config = read_config(tiny_lm).replace(max_seq_len=1024)  # room for GSM8K's 256 new tokens after a prompt
    model = save_checkpoint(load_checkpoint(tiny_lm)[0], config, tmp_path / "model", tiny_lm)
    data = tmp_path / "benchmarks"
    shutil.copytree(FIXTURES / "arc", data / "arc")
    (data / "gsm8k").mkdir()
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many does he have?",
             "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"} for a, b in
            ((3, 4), (10, 5), (7, 7))]
    for split in ("train", "test"):
        (data / "gsm8k" / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    suite = Suite(tasks=["arc_easy", "gsm8k_maj8"], limit=2, shots=0, data_root=str(data))
    res = run_suite(str(model), str(tmp_path / "eval"), suite, CKPT)
    assert {name: t["n"] for name, t in res["tasks"].items()} == {"arc_easy": 2, "gsm8k_maj8": 2}
    samples = [json.loads(x) for x in (tmp_path / "eval/tasks/samples/gsm8k_maj8.jsonl").read_text().splitlines()]
    assert [s["gold"] for s in samples] == ["7", "15"] and all(len(s["flexible"]) == 8 for s in samples)
    maj = res["tasks"]["gsm8k_maj8"]["metrics"]["maj_at_8"]
    assert maj == pytest.approx(sum(s["maj_at_8"] for s in samples) / 2)
    math_cat = next(c for c in res["categories"] if c["name"] == "Math")
    assert math_cat["benchmarks"] == {"GSM8K": pytest.approx(100 * maj)}  # the task feeds its category


def test_a_suite_names_a_missing_toxicity_scorer_or_judge(tiny_lm, tmp_path):
    for key in ("toxicity", "judge"):
        with pytest.raises(UserError, match=f"{tmp_path}/nope"):
            run_suite(str(tiny_lm), str(tmp_path / "e"), Suite(tasks=["bold_toxicity"], **{key: str(tmp_path / "nope")}),
                      CKPT)
