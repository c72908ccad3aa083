"""Demo-scale SFT, reward model and PPO on the shipped alignment sets, scored without a learned judge.

Starts from the demo base model (`make demo` writes runs/demo/base/model), fine-tunes it on
data/demo/sft.jsonl, trains the reward model on data/demo/preference.jsonl and reports its held-out pairwise
accuracy, then runs PPO from the SFT model with sequence-level unlikelihood and without it
(`unlikelihood_weight=0`), for several seeds, each run the same number of updates and keeping its last policy
(equal steps). Every model answers the held-out prompts greedily; the programmatic scorer judges the answers,
the reward model scores them, and each PPO policy's KL to the SFT reference is measured on responses it
samples for the same prompts. Repetition is also measured on longer greedy answers (128 new tokens) and on
greedy answers to the PPO prompts themselves, where unlikelihood acted. PPO's held-out signal during training
comes from prompts taken from preference.jsonl (never PPO prompts, never held-out ones), so the held-out set
stays unseen by every choice made during training. Each PPO run writes <out>/<variant>-seed<k>/demo_eval.json;
the ppo-report stage gathers them (mean and std over seeds) into <out>/align_demo.json, which
docs/alignment.md quotes.

    python scripts/align_demo.py [--base runs/demo/base/model] [--out runs/demo] [--stages sft,reward,ppo,ppo-report]
    # PPO variants in parallel, then the report:
    python scripts/align_demo.py --stages ppo --ppo_variants ppo --threads 1 &
    python scripts/align_demo.py --stages ppo --ppo_variants ppo-no-ul --threads 1; wait
    python scripts/align_demo.py --stages ppo-report
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
from openhcx.model.transformer import Transformer
from openhcx.tokenizer.tokenizer import ENDOFTURN, EOT, PAD, Tokenizer
from openhcx.train.ppo import ppo, read_prompts
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


def load(model_dir: Path) -> tuple[Tokenizer, Transformer]:
    return Tokenizer.load(model_dir), load_checkpoint(model_dir)[0].eval()


def answer(policy: tuple[Tokenizer, Transformer], conversations: list, rm: RewardModel | None = None,
           max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """Greedy responses cut at the turn's end, with their reward-model scores when `rm` is given."""
    tok, model = policy
    prompts = [render_prompt(messages, tok) for messages in conversations]
    stops = (tok.id(ENDOFTURN), tok.id(EOT))
    done = [c for i in range(0, len(prompts), 128)
            for c in generate(model, prompts[i:i + 128],
                              Sampling(max_new_tokens=max_new_tokens, stop_ids=stops), decode=tok.decode)]
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
            "length_chars": mean_length(responses), "examples": responses[:4]}


def mean_length(responses: list[str]) -> float:
    return sum(len(t.strip()) for t in responses) / len(responses)


@torch.no_grad()
def sampled_kl(policy: tuple[Tokenizer, Transformer], reference: Transformer, rm: RewardModel,
               records: list[PromptRecord], max_new_tokens: int, seed: int = 1234) -> dict:
    """Mean over sampled responses (temperature 1, as in training) of sum_t log pi - log pi_ref: the k1 estimate
    of the per-response KL, unbiased under the policy's own samples; with their reward and repetition."""
    tok, policy = policy
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


def run_ppo(a: argparse.Namespace, out: Path, name: str, unlikelihood_weight: float, seed: int) -> tuple[Path, float]:
    start = time.perf_counter()
    model = ppo(str(out / "sft/model"), str(out / "reward/model"), [str(DEMO / "sft.jsonl")], str(out / name),
                heldout=str(dev_prompts(out / "ppo_dev_prompts.jsonl")), steps=a.ppo_steps, batch_size=a.ppo_batch,
                minibatch_size=a.ppo_minibatch, epochs=a.ppo_epochs, max_new_tokens=a.ppo_max_new_tokens,
                lr=a.ppo_lr, value_lr=a.ppo_value_lr, kl_coef=a.kl_coef, unlikelihood_weight=unlikelihood_weight,
                eval_every=a.ppo_eval_every, patience=a.ppo_steps, keep="last", seed=seed, mlflow=False,
                progress=False, overwrite=True)
    return model, time.perf_counter() - start


def ppo_summary(run_dir: Path, seconds: float) -> dict:
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    keys = ("reward_raw", "reward", "kl", "response_length", "repetition_rate", "greedy_repetition_rate")
    last = metrics[-min(5, len(metrics)):]
    train = {k: sum(m[k] for m in last) / len(last) for k in (*keys, "unlikelihood_loss")}
    return {"steps": manifest["steps"], "seconds": round(seconds, 1),
            "train_first_step": {k: metrics[0][k] for k in keys}, "train_last_5_steps": train,
            "unlikelihood_active_steps": sum(m["unlikelihood_loss"] > 0 for m in metrics),
            "config": manifest["config"]["config"]}


def spread(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "runs": values}


def ppo_report(out: Path, records: list[PromptRecord], rm: RewardModel, names: list[str]) -> dict:
    """Side by side on the held-out prompts: each PPO run next to SFT, and mean +- std over seeds per variant."""
    sft_dir = out / "sft/model"
    report = {"sft": evaluate_policy(sft_dir, sft_dir, records, rm), "runs": {}, "variants": {}}
    for name in names:
        run = json.loads((out / name / "demo_eval.json").read_text(encoding="utf-8"))
        report["runs"][name] = run
        variant = name.rsplit("-seed", 1)[0]
        report["variants"].setdefault(variant, []).append(run)
    for variant, runs in report["variants"].items():
        report["variants"][variant] = {
            "seeds": len(runs), "mean_score": spread([r["mean_score"] for r in runs]),
            "repetition_rate": spread([r["repetition_rate"] for r in runs]),
            "repetition_rate_long": spread([r["long"]["repetition_rate"] for r in runs]),
            "train_prompts_repetition_rate": spread([r["train_prompts"]["repetition_rate"] for r in runs]),
            "length_chars": spread([r["length_chars"] for r in runs]),
            "kl": spread([r["sampled"]["kl"] for r in runs])}
    return report


def evaluate_policy(model: Path, sft_dir: Path, records: list[PromptRecord], rm: RewardModel) -> dict:
    """Greedy held-out answers (48 and 128 new tokens), greedy answers to the PPO prompts, sampled KL."""
    held, policy = [r.messages for r in records], load(model)
    greedy = answer(policy, held, rm)
    long = answer(policy, held, max_new_tokens=128)["texts"]
    train_texts = answer(policy, read_prompts([str(DEMO / "sft.jsonl")]))["texts"]
    return (judge(records, greedy.pop("texts")) | greedy
            | {"long": {"repetition_rate": repetition_rate(long), "length_chars": mean_length(long)},
               "train_prompts": {"repetition_rate": repetition_rate(train_texts), "prompts": len(train_texts)},
               "sampled": sampled_kl(policy, load(sft_dir)[1], rm, records, MAX_NEW_TOKENS)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="runs/demo/base/model")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--stages", default="sft,reward,ppo,ppo-report",
                        help="comma-separated: sft, reward, ppo, ppo-report")
    parser.add_argument("--ppo_seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ppo_variants", default="ppo,ppo-no-ul",
                        help="ppo (with unlikelihood), ppo-no-ul (weight 0); run them in two processes to halve the time")
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
        held = [r.messages for r in records]
        summary["base"] = judge(records, answer(load(Path(a.base)), held)["texts"])
        summary["sft_scores"] = judge(records, answer(load(sft_model), held)["texts"])
    if "reward" in stages:
        start = time.perf_counter()
        rm = train_reward(str(out / "sft/model"), [str(DEMO / "preference.jsonl")], str(out / "reward"),
                          max_tokens=2048, lr=3e-4, min_lr=3e-5, warmup_steps=5, heldout_fraction=0.1)
        rm_seconds = time.perf_counter() - start
        rm_manifest = json.loads((out / "reward/manifest.json").read_text(encoding="utf-8"))
        summary["reward"] = ({k: rm_manifest[k] for k in ("steps", "heldout_accuracy_start", "heldout_accuracy",
                                                          "heldout_pairs", "reward_norm")}
                             | {"seconds": round(rm_seconds, 1), "model": str(rm)})
    variants = {"ppo": a.ul_weight, "ppo-no-ul": 0.0}
    names = [f"{v}-seed{k}" for k in a.ppo_seeds for v in a.ppo_variants.split(",")]
    if "ppo" in stages:
        rm = RewardModel.load(out / "reward/model")
        for name in names:
            model, seconds = run_ppo(a, out, name, variants[name.rsplit("-seed", 1)[0]],
                                     int(name.rsplit("-seed", 1)[1]))
            write_json(out / name / "demo_eval.json", ppo_summary(out / name, seconds)
                       | evaluate_policy(model, out / "sft/model", records, rm))
            print(f"{name}: done in {seconds:.0f} s", flush=True)
    if "ppo-report" in stages:
        summary["ppo"] = ppo_report(out, records, RewardModel.load(out / "reward/model"), names)
    write_json(summary_file, summary)
    print(json.dumps(summary, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
