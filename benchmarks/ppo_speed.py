"""PPO throughput: TRL 1.12's PPO trainer (trl.experimental.ppo) and ours, side by side, same models.

One tiny Llama (policy = reference start, a scalar-head twin as reward and value start) is written once as HF
directories; TRL loads them with transformers, we load the same files. Both run the same settings (batch,
response length, PPO epochs, minibatches, KL coefficient, temperature 1, no stop token, so every response
has the full length; TRL's gradient checkpointing off, as ours has none) and the time of each rollout+update
step is taken after one warm-up step. Prints the median seconds per step, episodes (responses sampled and
learnt from) per second, and our speed-up. Needs `trl`.

    python benchmarks/ppo_speed.py [--steps 5] [--batch 16] [--response 32] [--epochs 4] [--minibatches 2]
        [--unlikelihood] [--skip-trl]

Ours runs without the unlikelihood term, as TRL has none; --unlikelihood also times the `openhcx ppo` default
(unlikelihood on sampled responses and on a greedy continuation of every prompt).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

from openhcx.model.generate import Sampling  # noqa: E402
from openhcx.model.hf import load_checkpoint, save_checkpoint  # noqa: E402
from openhcx.model.transformer import ModelConfig, Transformer  # noqa: E402
from openhcx.train.ppo import PPOConfig, PPOLearner, PPORun, prompt_batches  # noqa: E402
from openhcx.train.reward import RewardModel  # noqa: E402
from openhcx.train.rollout import RolloutProducer, RolloutWorker  # noqa: E402

MODEL = ModelConfig(vocab_size=2048, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=384, max_seq_len=256,
                    pad_token_id=0, eos_token_id=1)


def write_models(work: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    policy = save_checkpoint(Transformer(MODEL), MODEL, work / "policy", overwrite=True)
    scalar = MODEL.replace(head="scalar")
    reward = save_checkpoint(Transformer(scalar), scalar, work / "reward", overwrite=True)
    (reward / "reward_norm.json").write_text(json.dumps({"mean": 0.0, "std": 1.0, "clip": 1e6, "reference": "none",
                                                         "count": 0}))
    return policy, reward


def prompts(n: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(2, MODEL.vocab_size, (n, length), generator=g).tolist()


def run_ours(policy_dir: Path, reward_dir: Path, data: list[list[int]], args, device: torch.device,
             unlikelihood: bool = False) -> list[float]:
    policy, _ = load_checkpoint(policy_dir, device=device)
    value, _ = load_checkpoint(reward_dir, device=device)
    reward = RewardModel.load(reward_dir, device=device)
    worker = RolloutWorker(copy.deepcopy(policy), copy.deepcopy(policy).requires_grad_(False), reward,
                           Sampling(max_new_tokens=args.response, temperature=1.0), pad_id=0, greedy=unlikelihood)
    config = PPOConfig(steps=args.steps + 1, batch_size=args.batch, minibatch_size=args.batch // args.minibatches,
                       epochs=args.epochs, lr=1e-5, value_lr=1e-5, kl_coef=0.05,
                       unlikelihood_weight=1.0 if unlikelihood else 0.0)
    run = PPORun(PPOLearner(policy, value, config), RolloutProducer(worker, prompt_batches(data, args.batch, 0)))
    return [m.seconds for m in run.fit().metrics[1:]]


def run_trl(policy_dir: Path, reward_dir: Path, data: list[list[int]], args, work: Path) -> list[float]:
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast,
                              TrainerCallback)
    from trl.experimental.ppo import PPOConfig as TRLConfig
    from trl.experimental.ppo import PPOTrainer

    vocab = {f"t{i}": i for i in range(MODEL.vocab_size)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t2")),
                                  pad_token="t0", eos_token="t1")
    load = dict(dtype=torch.float32, local_files_only=True)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, **load)
    ref = AutoModelForCausalLM.from_pretrained(policy_dir, **load)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_dir, **load)
    value = AutoModelForSequenceClassification.from_pretrained(reward_dir, **load)
    dataset = Dataset.from_dict({"input_ids": data})
    config = TRLConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.batch,
                       gradient_accumulation_steps=1, num_mini_batches=args.minibatches, num_ppo_epochs=args.epochs,
                       response_length=args.response, total_episodes=args.batch * (args.steps + 1), temperature=1.0,
                       kl_coef=0.05, learning_rate=1e-5, num_sample_generations=0, report_to="none",
                       save_strategy="no", logging_steps=1000, disable_tqdm=True, seed=0, stop_token=None,
                       # TRL's default, on, recomputes activations and makes generate() decode without a KV cache
                       gradient_checkpointing=False,
                       use_cpu=not torch.cuda.is_available())

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = [time.perf_counter()]

        def on_step_end(self, *_, **__):
            self.marks.append(time.perf_counter())

    clock = Clock()
    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=dataset, value_model=value, eval_dataset=dataset, callbacks=[clock])
    clock.marks = [time.perf_counter()]
    trainer.train()
    steps = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    return steps[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    ap.add_argument("--response", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--minibatches", type=int, default=2)
    ap.add_argument("--unlikelihood", action="store_true",
                    help="also time ours with unlikelihood on sampled and greedy continuations (the `openhcx ppo` "
                         "default; TRL has no such term)")
    ap.add_argument("--skip-trl", action="store_true", help="time ours only")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        policy_dir, reward_dir = write_models(work)
        data = prompts(args.batch * (args.steps + 1), args.prompt)
        trl = None if args.skip_trl else run_trl(policy_dir, reward_dir, data, args, work)
        ours = run_ours(policy_dir, reward_dir, data, args, device)
        ours_ul = run_ours(policy_dir, reward_dir, data, args, device, unlikelihood=True) if args.unlikelihood else None
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {name}; model {MODEL.num_params() / 1e6:.2f}M params; batch {args.batch}, prompt {args.prompt}, "
          f"response {args.response}, {args.epochs} epochs x {args.minibatches} minibatches; "
          f"median of {args.steps} steps after one warm-up")
    rows = [("OpenHCX ppo", statistics.median(ours))]
    if ours_ul is not None:
        rows.append(("  + unlikelihood", statistics.median(ours_ul)))
    if trl is not None:
        rows.insert(0, ("TRL 1.12 PPOTrainer", statistics.median(trl)))
    print(f"{'':22} {'s/step':>8} {'episodes/s':>11}")
    for label, seconds in rows:
        print(f"{label:22} {seconds:8.3f} {args.batch / seconds:11.1f}")
    if trl is not None:
        print(f"speed-up (ours / TRL): {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
