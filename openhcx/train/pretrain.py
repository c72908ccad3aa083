"""Pretraining (RECIPE §3-4): next-token prediction over packed token shards, FIM already in the data.

`pretrain` is the `openhcx pretrain` command. It checks everything a user could get wrong (preset, model
keys, context lengths against the model's RoPE range, shards built with another tokenizer) before any output
is written, then runs the one training loop with checkpoints, metrics, progress and MLflow as callbacks.
The same command runs under `torchrun` (DDP or FSDP2 by `parallel`). Not here: the loop (trainer.py), the
data format (openhcx.data.shards), FIM (applied when shards are built).

Context-length schedule (the report's 4k -> 32k): `seq_len` for the first (1 - long_fraction) of the steps,
`long_seq_len` after, with tokens per step kept equal (fewer, longer sequences). RoPE: the model's
`max_seq_len` must cover `long_seq_len` (the tables are built once for max_seq_len positions) and `rope_theta`
stays fixed for the whole run; raise it (e.g. 500000) in `model_overrides` for long contexts.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from openhcx.io import UserError, require_file, write_manifest
from openhcx.model.hf import save_checkpoint
from openhcx.model.transformer import ModelConfig, Transformer, model_config
from openhcx.pipeline.evaluation import checkpoint_callbacks
from openhcx.train.callbacks import LossCurve, MetricsLog, ProgressBar, read_metrics
from openhcx.train.checkpoint import FULL, Checkpointer, drop_temporaries, latest_valid, restore
from openhcx.train.distributed import PARALLEL, World, broadcast_object, joined, wrap
from openhcx.train.trainer import TrainConfig, Trainer, measured_peak_flops


@dataclass(frozen=True)
class PretrainPlan:
    """Everything `run_pretraining` needs, validated."""

    model: ModelConfig
    train: TrainConfig
    tokenizer: str
    out: Path
    parallel: str
    doc_masking: bool
    seed: int
    checkpoint_every: int
    keep_checkpoints: int
    peak_flops: float | None
    mlflow: bool
    experiment: str
    progress: bool
    resume: bool
    args: dict  # the command's arguments, recorded in manifests and MLflow


def pretrain(
    shards: str,
    tokenizer: str,
    out: str,
    model: str = "tiny",
    model_overrides: dict[str, Any] | None = None,
    steps: int = 200,
    batch_size: int = 16,
    micro_batch_size: int = 8,
    seq_len: int = 256,
    long_seq_len: int | None = None,
    long_fraction: float = 0.1,
    lr: float = 1e-3,
    min_lr: float = 1e-4,
    warmup_steps: int = 20,
    weight_decay: float = 0.1,
    beta1: float = 0.9,
    beta2: float = 0.95,
    grad_clip: float = 1.0,
    doc_masking: bool = True,
    parallel: Literal["ddp", "fsdp"] = "fsdp",
    compile: bool = False,
    seed: int = 0,
    checkpoint_every: int = 50,
    keep_checkpoints: int = 3,
    peak_flops: float | None = None,
    mlflow: bool = True,
    experiment: str = "openhcx-pretrain",
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Pretrain a base model on token shards; writes <out>/model (a HF model directory) and resumes by itself.

    Args:
        shards: Token shard directory (built with `tokenizer`).
        tokenizer: Tokenizer directory; its files are copied into every checkpoint.
        out: Run directory: checkpoints/, model/, metrics.jsonl, loss.png, mlflow.db, manifest.json.
        model: Model preset (tiny, 125m, 350m, 1b, 3b, 7b, 14b).
        model_overrides: Model fields to change, e.g. {max_seq_len: 32768, rope_theta: 500000}.
            vocab_size defaults to the tokenizer's size.
        steps: Optimizer steps.
        batch_size: Sequences per optimizer step over all ranks, at `seq_len`.
        micro_batch_size: Sequences per rank per forward/backward; the rest is gradient accumulation.
        seq_len: Context length for the first (1 - long_fraction) of the steps.
        long_seq_len: Context length for the last `long_fraction` of the steps (none: no switch).
        long_fraction: Share of steps at `long_seq_len` (the report: 0.1).
        lr: Peak learning rate, reached after warmup.
        min_lr: Floor of the cosine decay, reached at the last step.
        warmup_steps: Steps of linear warmup from lr/warmup_steps.
        weight_decay: AdamW decoupled weight decay on matrices (not on norms or embeddings).
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        grad_clip: Clip the global gradient norm to this (0: no clipping).
        doc_masking: Attention stays inside each packed document, positions restart per document.
        parallel: Under torchrun: "ddp" (replicate) or "fsdp" (FSDP2, shard parameters and optimizer state).
        compile: torch.compile each transformer block.
        seed: Seed for initialisation and data order.
        checkpoint_every: Steps between checkpoints (the last step is always saved).
        keep_checkpoints: How many recent checkpoints to keep.
        peak_flops: Peak FLOP/s of one device for MFU; default: datasheet bf16 for known GPUs, else measured.
        mlflow: Log to MLflow (MLFLOW_TRACKING_URI, else sqlite in `out`).
        experiment: MLflow experiment name.
        resume: Continue from the newest valid checkpoint in `out` (false: refuse an `out` with checkpoints).
        progress: Show a progress bar (on a terminal only).
    """
    args = {k: v for k, v in locals().items()}
    started = time.perf_counter()
    plan = plan_pretraining(args)
    from openhcx.data.shards import TokenLoader, check_compatible

    check_compatible(shards, tokenizer)
    with joined() as world:
        loader = TokenLoader(shards, split="train", seed=seed, rank=world.rank, world_size=world.size)
        path = run_pretraining(plan, loader, world)
        if world.is_main:
            print(summary(path, plan.out / "manifest.json", time.perf_counter() - started))
        return path


def summary(path: Path, manifest: Path, seconds: float) -> str:
    """The line the command ends with: where the model is and the run's figures (from its manifest)."""
    m = json.loads(manifest.read_text(encoding="utf-8"))
    return f"pretrain: {path} ({m['steps']} steps, loss {m['final_loss']:.2f}, {m['tokens']:,} tokens, {seconds:.0f} s)"


def plan_pretraining(args: dict, world_size: int | None = None) -> PretrainPlan:
    """Validate the command's arguments into a plan; raises UserError naming the bad key or file."""
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    special = tokenizer_ids(args["tokenizer"])
    overrides = {**special, **(args["model_overrides"] or {})}
    config = model_config(args["model"], **overrides)
    if config.vocab_size < special["vocab_size"]:
        raise UserError(f"model_overrides.vocab_size={config.vocab_size} is smaller than the tokenizer's "
                        f"{special['vocab_size']} ({args['tokenizer']})")
    train = TrainConfig(**{k: args[k] for k in TRAIN_KEYS})
    train.validate(world_size, config.max_seq_len)
    if args["parallel"] not in PARALLEL:
        raise UserError(f"parallel={args['parallel']!r}: expected one of {PARALLEL}")
    for key, low in (("checkpoint_every", 0), ("keep_checkpoints", 1)):
        if args[key] < low:
            raise UserError(f"{key}={args[key]}: must be at least {low}")
    out = Path(args["out"])
    if not args["resume"] and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise UserError(f"{out}: holds checkpoints of an earlier run; pass resume=true or choose another out")
    record = {**args, "model_config": asdict(config)}
    return PretrainPlan(model=config, train=train, tokenizer=args["tokenizer"], out=out,
                        parallel=args["parallel"], doc_masking=args["doc_masking"], seed=args["seed"],
                        checkpoint_every=args["checkpoint_every"], keep_checkpoints=args["keep_checkpoints"],
                        peak_flops=args["peak_flops"], mlflow=args["mlflow"], experiment=args["experiment"],
                        progress=args["progress"], resume=args["resume"], args=record)


TRAIN_KEYS = ("steps", "batch_size", "micro_batch_size", "seq_len", "long_seq_len", "long_fraction", "lr", "min_lr",
              "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip", "compile")


def tokenizer_ids(tokenizer_dir: str | Path) -> dict:
    """Vocabulary size and special token ids of a tokenizer directory, as ModelConfig fields."""
    from tokenizers import Tokenizer

    directory = require_file(tokenizer_dir, "tokenizer directory")
    file = require_file(Path(directory) / "tokenizer.json", "tokenizer.json")
    tok = Tokenizer.from_file(str(file))
    config_file = Path(directory) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    ids = {f"{name}_token_id": tok.token_to_id(config[f"{name}_token"])
           for name in ("bos", "eos", "pad") if isinstance(config.get(f"{name}_token"), str)}
    return {"vocab_size": tok.get_vocab_size(with_added_tokens=True), **ids}


def next_token_loss(model: nn.Module, batch, doc_masking: bool) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy of each next token, and the count of scored tokens."""
    return model(batch.inputs, doc_ids=batch.doc_ids if doc_masking else None, targets=batch.targets)


def build_model(plan: PretrainPlan, world: World) -> nn.Module:
    """Same seed on every rank, so replicas start equal and FSDP2 shards identical weights."""
    torch.manual_seed(plan.seed)
    random.seed(plan.seed)
    np.random.seed(plan.seed)
    model = Transformer(plan.model).to(world.device)
    if plan.train.compile:
        for block in model.model.layers:
            block.compile()
    return wrap(model, plan.parallel, world)


def run_pretraining(plan: PretrainPlan, loader, world: World) -> Path:
    """Train from scratch or from the newest valid checkpoint in `plan.out`; returns <out>/model."""
    out, root = plan.out, plan.out / "checkpoints"
    model = build_model(plan, world)
    inputs = {"tokenizer": str(plan.tokenizer), "shards": str(plan.args.get("shards"))}
    callbacks = [MetricsLog(out / "metrics.jsonl"),
                 LossCurve(out / "metrics.jsonl", out / "loss.png", "pretraining loss")]
    if plan.progress:
        callbacks.append(ProgressBar())
    if plan.mlflow:
        from openhcx.pipeline.tracking import MLflowLogger

        callbacks.append(MLflowLogger(out, plan.experiment, out.name, plan.args, artifacts=(out / "loss.png",),
                                      stage="pretrain", inputs=inputs))
    # Last: a step's rows are recorded before its checkpoint tells MLflow to write up to that step.
    callbacks.append(Checkpointer(root, plan.checkpoint_every, plan.keep_checkpoints, plan.model, plan.tokenizer,
                                  plan.args, inputs, "pretrain"))
    callbacks += checkpoint_callbacks()  # inside `openhcx run`: each checkpoint queued for evaluation
    trainer = Trainer(model, plan.train, loader, partial(next_token_loss, doc_masking=plan.doc_masking), world,
                      model_config=plan.model, peak_flops=plan.peak_flops or measured_peak_flops(world.device),
                      callbacks=callbacks)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        drop_temporaries(root)
    start = broadcast_object(str(latest_valid(root) or "") if plan.resume and world.is_main else "", world)
    if start:
        restore(trainer, Path(start), plan.model)
    trainer.fit()
    return write_final(trainer, plan, inputs)


def write_final(trainer: Trainer, plan: PretrainPlan, inputs: dict) -> Path:
    """<out>/model: the trained weights as a plain HF directory, and the run's manifest (rank 0 writes)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    weights = get_model_state_dict(trainer.inner_model, options=FULL)
    path = plan.out / "model"
    if trainer.world.is_main:
        rows = read_metrics(plan.out / "metrics.jsonl")
        results = {"steps": trainer.step, "final_loss": rows[-1]["loss"] if rows else None,
                   "tokens": sum(r["tokens"] for r in rows)}
        save_checkpoint(weights, plan.model, path, plan.tokenizer, overwrite=True, stage="pretrain",
                        inputs=inputs, **results)
        write_manifest(plan.out, "pretrain", plan.args, inputs, model=str(path), **results)
    trainer.manifest_written(plan.out / "manifest.json")
    return path
