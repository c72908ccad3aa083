"""Demo-scale SFT, reward model and PPO on the shipped alignment sets, scored without a learned judge.

Starts from the demo base model (`make demo` writes runs/demo/base/model), fine-tunes it on
data/demo/sft.jsonl, trains the reward model on data/demo/preference.jsonl and reports its held-out pairwise
accuracy, then runs PPO from the SFT model twice with the same seed and steps: with sequence-level
unlikelihood and without it (`unlikelihood_weight=0`). Every model answers the held-out prompts greedily;
the programmatic scorer judges the answers, the reward model scores them, and each PPO policy's KL to the
SFT reference is measured on responses it samples for the same prompts. PPO's early stopping is judged on
prompts taken from preference.jsonl (never PPO prompts, never held-out ones), so the held-out set stays
unseen by every choice made during training. Figures go to stdout and <out>/align_demo.json;
docs/alignment.md quotes them.

    python scripts/align_demo.py [--base runs/demo/base/model] [--out runs/demo] [--stages sft,reward,ppo]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from openhcx.align.scorer import PromptRecord, repetition_rate, score
from openhcx.data.chat import render_prompt
from openhcx.io import atomic_file, write_json
from openhcx.model.generate import Sampling, generate
from openhcx.model.hf import load_checkpoint
from openhcx.tokenizer.tokenizer import ENDOFTURN, EOT, PAD, Tokenizer
from openhcx.train.ppo import ppo
from openhcx.train.reward import RewardModel, train_reward
from openhcx.train.rollout import RolloutWorker
from openhcx.train.sft import sft

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data/demo"
MAX_NEW_TOKENS = 48  # greedy held-out answers
KL_SAMPLES = 4  # sampled responses per held-out prompt for the KL to the reference


def read_records(path: Path) -> list[PromptRecord]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [PromptRecord.from_json(json.loads(line), f"{path.name}:{n}") for n, line in enumerate(lines, 1)]


def answer(model_dir: Path, records: list[PromptRecord], rm: RewardModel | None = None) -> dict:
    """Greedy responses cut at the turn's end, with their reward-model scores when `rm` is given."""
    tok = Tokenizer.load(model_dir)
    model, _ = load_checkpoint(model_dir)
    prompts = [render_prompt(r.messages, tok) for r in records]
    stops = (tok.id(ENDOFTURN), tok.id(EOT))
    done = generate(model.eval(), prompts, Sampling(max_new_tokens=MAX_NEW_TOKENS, stop_ids=stops),
                    decode=tok.decode)
    out = {"texts": [c.text for c in done]}
    if rm is not None:
        raw, normalised = rm.score([[*p, *c.ids] for p, c in zip(prompts, done)])
        out |= {"reward_raw": float(raw.mean()), "reward": float(normalised.mean())}
    return out


def judge(records: list[PromptRecord], responses: list[str]) -> dict:
    results = [score(r, text) for r, text in zip(records, responses)]
    parts = sorted({k for res in results for k in res.parts})
    return {"mean_score": sum(r.total for r in results) / len(results),
            "parts": {k: sum(r.parts[k] for r in results if k in r.parts) / sum(k in r.parts for r in results)
                      for k in parts},
            "repetition_rate": repetition_rate(responses),
            "length_chars": sum(len(t.strip()) for t in responses) / len(responses), "examples": responses[:4]}


@torch.no_grad()
def sampled_kl(policy_dir: Path, reference_dir: Path, rm: RewardModel, records: list[PromptRecord],
               max_new_tokens: int, seed: int = 1234) -> dict:
    """Mean over sampled responses (temperature 1, as in training) of sum_t log pi - log pi_ref: the k1 estimate
    of the per-response KL, unbiased under the policy's own samples; with their reward and repetition."""
    tok = Tokenizer.load(policy_dir)
    policy, _ = load_checkpoint(policy_dir)
    reference, _ = load_checkpoint(reference_dir)
    stops = (tok.id(ENDOFTURN), tok.id(EOT))
    worker = RolloutWorker(policy, reference, rm, Sampling(max_new_tokens=max_new_tokens, temperature=1.0,
                                                           stop_ids=stops), tok.id(PAD), decode=tok.decode)
    prompts = [render_prompt(r.messages, tok) for r in records]
    rows = [worker.rollout(prompts, list(range(len(prompts))), seed=seed + k) for k in range(KL_SAMPLES)]
    kl = torch.cat([(r.logprobs - r.ref_logprobs).sum(1) for r in rows])
    texts = [t for r in rows for t in r.texts]
    return {"kl": float(kl.mean()), "kl_std": float(kl.std()), "responses": len(kl),
            "reward_raw": float(torch.cat([r.scores_raw for r in rows]).mean()),
            "reward": float(torch.cat([r.scores for r in rows]).mean()),
            "repetition_rate": repetition_rate(texts),
            "length_tokens": float(torch.cat([r.response_mask.sum(1) for r in rows]).float().mean())}


def dev_prompts(path: Path, count: int = 64) -> Path:
    """Early-stopping prompts for PPO: the first `count` distinct prompts of preference.jsonl with their checks."""
    seen, rows = set(), []
    for line in (DEMO / "preference.jsonl").read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        key = json.dumps(obj["prompt"], ensure_ascii=False)
        if key not in seen and len(rows) < count:
            seen.add(key)
            rows.append({"id": f"dev-{len(rows):04d}", "messages": obj["prompt"], **obj["check"]})
    with atomic_file(path, encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return path


def run_ppo(a: argparse.Namespace, out: Path, unlikelihood_weight: float, name: str) -> tuple[Path, float]:
    start = time.perf_counter()
    model = ppo(str(out / "sft/model"), str(out / "reward/model"), [str(DEMO / "sft.jsonl")], str(out / name),
                heldout=str(dev_prompts(out / "ppo_dev_prompts.jsonl")), steps=a.ppo_steps, batch_size=a.ppo_batch,
                minibatch_size=a.ppo_minibatch, epochs=a.ppo_epochs, max_new_tokens=a.ppo_max_new_tokens,
                lr=a.ppo_lr, value_lr=a.ppo_value_lr, kl_coef=a.kl_coef, unlikelihood_weight=unlikelihood_weight,
                eval_every=a.ppo_eval_every, patience=a.ppo_patience, seed=a.seed, mlflow=False, progress=False,
                overwrite=True)
    return model, time.perf_counter() - start


def ppo_summary(run_dir: Path, seconds: float, evaluation: dict) -> dict:
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    last = metrics[-min(5, len(metrics)):]
    train = {k: sum(m[k] for m in last) / len(last) for k in ("reward_raw", "reward", "kl", "response_length",
                                                              "repetition_rate", "unlikelihood_loss")}
    first = {k: metrics[0][k] for k in ("reward_raw", "reward", "kl", "response_length", "repetition_rate")}
    return {"steps": manifest["steps"], "best_step": manifest["best_step"], "stopped_early": manifest["stopped_early"],
            "seconds": round(seconds, 1), "train_first_step": first, "train_last_5_steps": train,
            "unlikelihood_active_steps": sum(m["unlikelihood_loss"] > 0 for m in metrics),
            "config": manifest["config"]["config"]} | evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="runs/demo/base/model")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--stages", default="sft,reward,ppo", help="comma-separated: sft, reward, ppo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ppo_steps", type=int, default=20)
    parser.add_argument("--ppo_batch", type=int, default=32)
    parser.add_argument("--ppo_minibatch", type=int, default=8)
    parser.add_argument("--ppo_epochs", type=int, default=4)
    parser.add_argument("--ppo_max_new_tokens", type=int, default=48)
    parser.add_argument("--ppo_lr", type=float, default=3e-5)
    parser.add_argument("--ppo_value_lr", type=float, default=1e-4)
    parser.add_argument("--kl_coef", type=float, default=0.04)
    parser.add_argument("--ul_weight", type=float, default=1.0)
    parser.add_argument("--ppo_eval_every", type=int, default=5)
    parser.add_argument("--ppo_patience", type=int, default=3)
    a = parser.parse_args()
    stages = set(a.stages.split(","))
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    records = read_records(DEMO / "heldout_prompts.jsonl")
    summary_file = out / "align_demo.json"
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else {}
    if "sft" in stages:
        start = time.perf_counter()
        sft_model = sft(a.base, [str(DEMO / "sft.jsonl")], str(out / "sft"), epochs=4, max_tokens=1024, lr=2e-3,
                        min_lr=2e-4, warmup_steps=10, heldout_fraction=0.1, checkpoint_every=50, show=1)
        sft_seconds = time.perf_counter() - start
        sft_manifest = json.loads((out / "sft/manifest.json").read_text(encoding="utf-8"))
        summary["sft"] = ({k: sft_manifest[k] for k in ("steps", "heldout_loss_start", "heldout_loss_end",
                                                        "trained_tokens")} | {"seconds": round(sft_seconds, 1)})
        summary["heldout_prompts"] = len(records)
        summary["base"] = judge(records, answer(Path(a.base), records)["texts"])
        summary["sft_scores"] = judge(records, answer(sft_model, records)["texts"])
    if "reward" in stages:
        start = time.perf_counter()
        rm = train_reward(str(out / "sft/model"), [str(DEMO / "preference.jsonl")], str(out / "reward"),
                          max_tokens=2048, lr=3e-4, min_lr=3e-5, warmup_steps=5, heldout_fraction=0.1)
        rm_seconds = time.perf_counter() - start
        rm_manifest = json.loads((out / "reward/manifest.json").read_text(encoding="utf-8"))
        summary["reward"] = ({k: rm_manifest[k] for k in ("steps", "heldout_accuracy_start", "heldout_accuracy",
                                                          "heldout_pairs", "reward_norm")}
                             | {"seconds": round(rm_seconds, 1), "model": str(rm)})
    if "ppo" in stages:
        rm = RewardModel.load(out / "reward/model")
        sft_dir = out / "sft/model"
        table = {"base": Path(a.base), "sft": sft_dir}
        for name, weight in (("ppo", a.ul_weight), ("ppo-no-ul", 0.0)):
            model, seconds = run_ppo(a, out, weight, name)
            table[name] = model
            summary[name] = ppo_summary(out / name, seconds,
                                        {"sampled": sampled_kl(model, sft_dir, rm, records, a.ppo_max_new_tokens)})
        summary["sft_sampled"] = sampled_kl(sft_dir, sft_dir, rm, records, a.ppo_max_new_tokens)
        summary["side_by_side"] = {}
        for name, path in table.items():
            greedy = answer(path, records, rm)
            summary["side_by_side"][name] = judge(records, greedy.pop("texts")) | greedy
    write_json(summary_file, summary)
    print(json.dumps(summary, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
