"""SFT training throughput: OpenHCX's loop against TRL's SFTTrainer, side by side in one process.

Same model (our checkpoint is a HF Llama directory, which TRL loads as is), same rendered conversations
(ids and assistant mask from our chat template, given to TRL pre-tokenised with `assistant_masks`), same
optimiser settings and thread count. Ours batches by a max-token budget; TRL gets a fixed batch size equal
to our mean rows per batch and transformers' `group_by_length` sampler, its closest equivalent. Each side's
per-step real (unpadded) tokens per second is recorded after warm-up steps; medians and their ratio print.

    python benchmarks/sft_speed.py [--base runs/demo/base/model] [--threads 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from openhcx.data.chat import read_conversations, tokenize
from openhcx.model.hf import load_checkpoint
from openhcx.tokenizer.tokenizer import PAD, Tokenizer
from openhcx.train.batching import EpochLoader, TokenBudgetTrainer
from openhcx.train.distributed import World
from openhcx.train.sft import collate_samples, sft_batches, sft_loss, train_config

ROOT = Path(__file__).resolve().parents[1]
OPTIM = {"lr": 1e-4, "min_lr": 1e-4, "warmup_steps": 0, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999,
         "grad_clip": 1.0, "compile": False}


def ours(base: str, samples, max_tokens: int, warmup: int, steps: int) -> list[float]:
    model, config = load_checkpoint(base, dtype=torch.float32)
    pad = Tokenizer.load(base).id(PAD)
    loader = EpochLoader(lambda e: sft_batches(samples, max_tokens, e),
                         lambda idx: collate_samples([samples[i] for i in idx], pad))
    train = train_config({**OPTIM, "steps": warmup + steps}, warmup + steps, max_tokens, 1, config.max_seq_len)
    trainer = TokenBudgetTrainer(model, train, loader, sft_loss, World(0, 1, torch.device("cpu")),
                                 model_config=config, peak_flops=1e12)
    return [trainer.train_step().tokens_per_s for _ in range(warmup + steps)][warmup:]


def trl(base: str, samples, batch_size: int, warmup: int, steps: int, threads: int) -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    data = Dataset.from_dict({"input_ids": [s.ids for s in samples], "assistant_masks": [s.mask for s in samples]})
    inner = DataCollatorForLanguageModeling(pad_token_id=Tokenizer.load(base).id(PAD))
    tokens: list[int] = []

    def collate(features):
        batch = inner(features)
        tokens.append(int(batch["attention_mask"].sum()) - len(features))  # inputs, as ours counts them
        return batch

    seconds: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            seconds.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, per_device_train_batch_size=batch_size, max_steps=warmup + steps,
                           learning_rate=OPTIM["lr"], lr_scheduler_type="constant", weight_decay=0.0,
                           max_grad_norm=OPTIM["grad_clip"], adam_beta2=OPTIM["beta2"], save_strategy="no",
                           report_to=[], use_cpu=True, dataloader_num_workers=0, logging_steps=10_000,
                           train_sampling_strategy="group_by_length", max_length=None, bf16=False,
                           disable_tqdm=True, seed=0)
        trainer = SFTTrainer(model=model, args=config, train_dataset=data, data_collator=collate,
                             callbacks=[Timer()])
        torch.set_num_threads(threads)  # the trainer's setup must not change the thread count
        trainer.train()
    return [t / s for t, s in zip(tokens[warmup:], seconds[warmup:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="runs/demo/base/model")
    parser.add_argument("--data", default=str(ROOT / "data/demo/sft.jsonl"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    tok = Tokenizer.load(a.base)
    samples = tokenize(read_conversations(a.data).records, tok).records
    batches = sft_batches(samples, a.max_tokens, 0)
    rows = round(len(samples) / len(batches))
    print(f"{len(samples)} conversations, {sum(len(s.ids) - 1 for s in samples)} input tokens; ours: max_tokens="
          f"{a.max_tokens} ({len(batches)} batches, mean {rows} rows); TRL: batch size {rows}, group_by_length; "
          f"{a.threads} threads, {a.steps} timed steps after {a.warmup} warm-up")
    results = {"openhcx": ours(a.base, samples, a.max_tokens, a.warmup, a.steps),
               "trl": trl(a.base, samples, rows, a.warmup, a.steps, a.threads)}
    medians = {name: statistics.median(v) for name, v in results.items()}
    for name, value in medians.items():
        print(f"{name:8s} median {value:10,.0f} tokens/s over {len(results[name])} steps")
    print(f"ratio openhcx / trl: {medians['openhcx'] / medians['trl']:.2f}")


if __name__ == "__main__":
    main()
