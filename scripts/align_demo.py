"""Demo-scale SFT and reward model on the shipped alignment sets, scored without a learned judge.

Starts from the demo base model (`make demo` writes runs/demo/base/model), fine-tunes it on
data/demo/sft.jsonl, answers the held-out prompts greedily with the base and the SFT model and scores both
with the programmatic scorer, then trains the reward model on data/demo/preference.jsonl and reports its
held-out pairwise accuracy. Figures go to stdout and <out>/align_demo.json; docs/alignment.md quotes them.

    python scripts/align_demo.py [--base runs/demo/base/model] [--out runs/demo]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from openhcx.align.scorer import PromptRecord, repetition_rate, score
from openhcx.data.chat import render_prompt
from openhcx.io import write_json
from openhcx.model.generate import Sampling, generate
from openhcx.model.hf import load_checkpoint
from openhcx.tokenizer.tokenizer import ENDOFTURN, EOT
from openhcx.train.reward import train_reward
from openhcx.train.sft import load_tokenizer, sft

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data/demo"


def answer(model_dir: Path, records: list[PromptRecord], max_new_tokens: int = 48) -> list[str]:
    """Greedy responses, cut at the turn's end."""
    tok = load_tokenizer(model_dir)
    model, _ = load_checkpoint(model_dir)
    prompts = [render_prompt(r.messages, tok) for r in records]
    stops = (tok.id(ENDOFTURN), tok.id(EOT))
    done = generate(model.eval(), prompts, Sampling(max_new_tokens=max_new_tokens, stop_ids=stops), decode=tok.decode)
    return [c.text for c in done]


def judge(records: list[PromptRecord], responses: list[str]) -> dict:
    results = [score(r, text) for r, text in zip(records, responses)]
    parts = sorted({k for res in results for k in res.parts})
    return {"mean_score": sum(r.total for r in results) / len(results),
            "parts": {k: sum(r.parts[k] for r in results if k in r.parts) / sum(k in r.parts for r in results)
                      for k in parts},
            "repetition_rate": repetition_rate(responses), "examples": responses[:4]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="runs/demo/base/model")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--threads", type=int, default=2)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    start = time.perf_counter()
    sft_model = sft(a.base, [str(DEMO / "sft.jsonl")], str(out / "sft"), epochs=4, max_tokens=1024, lr=2e-3,
                    min_lr=2e-4, warmup_steps=10, heldout_fraction=0.1, checkpoint_every=50, show=1)
    sft_seconds = time.perf_counter() - start
    lines = (DEMO / "heldout_prompts.jsonl").read_text(encoding="utf-8").splitlines()
    records = [PromptRecord.from_json(json.loads(line), f"heldout_prompts.jsonl:{n}") for n, line in
               enumerate(lines, 1)]
    scores = {name: judge(records, answer(Path(path), records)) for name, path in
              (("base", a.base), ("sft", sft_model))}
    start = time.perf_counter()
    rm = train_reward(str(sft_model), [str(DEMO / "preference.jsonl")], str(out / "reward"), max_tokens=2048,
                      lr=3e-4, min_lr=3e-5, warmup_steps=5, heldout_fraction=0.1)
    rm_seconds = time.perf_counter() - start
    sft_manifest = json.loads((out / "sft/manifest.json").read_text(encoding="utf-8"))
    rm_manifest = json.loads((out / "reward/manifest.json").read_text(encoding="utf-8"))
    summary = {
        "sft": {k: sft_manifest[k] for k in ("steps", "heldout_loss_start", "heldout_loss_end", "trained_tokens")}
        | {"seconds": round(sft_seconds, 1)},
        "heldout_prompts": len(records), "base": scores["base"], "sft_scores": scores["sft"],
        "reward": {k: rm_manifest[k] for k in ("steps", "heldout_accuracy_start", "heldout_accuracy",
                                               "heldout_pairs", "reward_norm")} | {"seconds": round(rm_seconds, 1),
                                                                                   "model": str(rm)},
    }
    write_json(out / "align_demo.json", summary)
    print(json.dumps(summary, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
