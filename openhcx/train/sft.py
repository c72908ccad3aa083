"""Supervised fine-tuning (RECIPE §5): maximise the likelihood of assistant turns given the conversation.

`sft` is the `openhcx sft` command. Conversations (chat, Alpaca, ShareGPT or Q/A CSV) render through the
chat template to (ids, mask); the loss is taken only where the mask is 1 (assistant content and its closing
`<|endofturn|>`). Batches group conversations of similar length under a maximum number of (padded) tokens,
so the batch size varies. A held-out split gives the evaluation loss before, during and after training.
Everything a user can get wrong (files, formats, over-long conversations, settings) is checked before any
output is written; checkpoints, resume, metrics, progress and MLflow are the one training loop's callbacks.
The held-out evaluation callback and the plan-to-loop wiring here serve the reward stage too.
Not here: the loop (trainer.py), rendering and readers (openhcx.data.chat), packing several conversations
into one row (rows are padded instead, so attention never crosses conversations).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from openhcx.data.chat import Format, Sample, read_conversations, show, tokenize
from openhcx.io import UserError, require_file, write_manifest
from openhcx.model.hf import load_checkpoint, save_checkpoint
from openhcx.model.transformer import ModelConfig
from openhcx.pipeline.tracking import MLflowLogger
from openhcx.tokenizer.tokenizer import PAD, Tokenizer
from openhcx.train.batching import EpochLoader, Shape, TokenBudgetTrainer, pad_right, token_budget_batches
from openhcx.pipeline.evaluation import checkpoint_callbacks
from openhcx.train.callbacks import LossCurve, MetricsLog, ProgressBar, read_metrics
from openhcx.train.checkpoint import FULL, Checkpointer, drop_temporaries, latest_valid, restore
from openhcx.train.distributed import PARALLEL, World, broadcast_object, joined, wrap
from openhcx.train.losses import IGNORE_INDEX
from openhcx.train.trainer import Callback, StepMetrics, TrainConfig, Trainer, measured_peak_flops, to_device


@dataclass(frozen=True)
class SFTBatch:
    inputs: Tensor  # (B, T) token ids, right-padded
    targets: Tensor  # (B, T) the next token where it is trained, IGNORE_INDEX elsewhere (prompt, padding)


def shift(ids: Sequence[int], mask: Sequence[int]) -> tuple[list[int], list[int]]:
    """(inputs, targets) for next-token prediction: target t is token t+1 when the mask trains it."""
    return list(ids[:-1]), [tok if m else IGNORE_INDEX for tok, m in zip(ids[1:], mask[1:])]


def collate_samples(samples: Sequence[Sample], pad_id: int) -> tuple[SFTBatch, Shape]:
    pairs = [shift(s.ids, s.mask) for s in samples]
    inputs, attn = pad_right([p[0] for p in pairs], pad_id)
    targets, _ = pad_right([p[1] for p in pairs], pad_id, fill=IGNORE_INDEX)
    return SFTBatch(inputs, targets), Shape(int(attn.sum()), inputs.numel(), inputs.shape[1])


def sft_loss(model: nn.Module, batch: SFTBatch) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy over trained (assistant) tokens, and their count. Right padding needs no mask."""
    return model(batch.inputs, targets=batch.targets)


def heldout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: a seeded `fraction` of n items (at least one when fraction > 0 and n > 1)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(n - 1, max(1, round(n * fraction))) if fraction > 0 and n > 1 else 0
    return sorted(order[k:]), sorted(order[:k])


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Sequence, loss_fn: Callable, device: torch.device) -> float:
    """Loss per scored item (token or pair) over fixed batches, weighted like one big batch."""
    total, count = 0.0, 0
    for batch in batches:
        s, c = loss_fn(model, to_device(batch, device))
        total, count = total + s.item(), count + int(c)
    return total / max(count, 1)


class HeldOutEval(Callback):
    """Evaluates at the start, every `every` steps and at the last step; rows go to eval.jsonl and MLflow.

    Every rank runs the evaluation (FSDP's forward is collective); rank 0 records it.
    """

    def __init__(self, evaluate: Callable[[nn.Module], dict[str, float]], every: int, path: Path,
                 mlflow: MLflowLogger | None = None):
        self.evaluate, self.every, self.path, self.mlflow = evaluate, every, Path(path), mlflow

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.world.is_main and self.path.is_file():  # a resumed run keeps rows up to its step
            kept = [r for r in read_metrics(self.path) if r["step"] < trainer.step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            for row in kept:  # MLflow skips the ones it has; a kill may have kept the others from it
                self._log(row)
        self._run(trainer)

    def on_step_end(self, trainer: Trainer, metrics: StepMetrics) -> None:
        if (self.every and trainer.step % self.every == 0) or trainer.step == trainer.config.steps:
            self._run(trainer)

    def _run(self, trainer: Trainer) -> None:
        trainer.model.eval()
        values = self.evaluate(trainer.model)
        trainer.model.train()
        if not trainer.world.is_main:
            return
        row = {"step": trainer.step, **values}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self._log(row)

    def _log(self, row: dict) -> None:
        if self.mlflow is not None:
            self.mlflow.log({f"heldout_{k}": v for k, v in row.items() if k != "step"}, row["step"])


@dataclass(frozen=True)
class RunPlan:
    """What a fine-tuning stage (SFT or reward model) needs to run the loop, validated."""

    stage: str
    model: ModelConfig
    train: TrainConfig
    out: Path
    parallel: str
    seed: int
    checkpoint_every: int
    keep_checkpoints: int
    eval_every: int
    peak_flops: float | None
    mlflow: bool
    experiment: str
    progress: bool
    resume: bool
    args: dict  # the command's arguments, recorded in manifests and MLflow
    inputs: dict


def train_config(args: dict, steps: int, max_tokens: int, world_size: int, max_seq_len: int) -> TrainConfig:
    """A TrainConfig for budget batches: one micro-batch per step, as many rows as the budget could hold."""
    config = TrainConfig(steps=steps, batch_size=max_tokens * world_size, micro_batch_size=max_tokens,
                         seq_len=max_seq_len, **{k: args[k] for k in OPTIM_KEYS})
    config.validate(world_size, max_seq_len)
    return config


OPTIM_KEYS = ("lr", "min_lr", "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip", "compile")


def check_run_args(args: dict) -> None:
    """Settings both fine-tuning stages share; raises UserError naming the key."""
    if args["parallel"] not in PARALLEL:
        raise UserError(f"parallel={args['parallel']!r}: expected one of {PARALLEL}")
    for key, low in (("checkpoint_every", 0), ("keep_checkpoints", 1), ("eval_every", 0), ("epochs", 1),
                     ("max_tokens", 1)):
        if args[key] < low:
            raise UserError(f"{key}={args[key]}: must be at least {low}")
    if not 0 <= args["heldout_fraction"] < 1:
        raise UserError(f"heldout_fraction={args['heldout_fraction']}: must be in [0, 1)")
    out = Path(args["out"])
    if not args["resume"] and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise UserError(f"{out}: holds checkpoints of an earlier run; pass resume=true or choose another out")


def run_plan(plan: RunPlan, model: nn.Module, loader: EpochLoader, loss_fn: Callable, world: World,
             evaluate: Callable[[nn.Module], dict[str, float]] | None) -> Trainer:
    """Train `model` (already on the device, not yet wrapped) from the plan, resuming from `<out>/checkpoints`."""
    out, root = plan.out, plan.out / "checkpoints"
    if plan.train.compile:
        for block in model.model.layers:
            block.compile()
    model = wrap(model, plan.parallel, world)
    callbacks: list[Callback] = [MetricsLog(out / "metrics.jsonl"),
                                 LossCurve(out / "metrics.jsonl", out / "loss.png", f"{plan.stage} loss")]
    if plan.progress:
        callbacks.append(ProgressBar())
    tracker = None
    if plan.mlflow:
        tracker = MLflowLogger(out, plan.experiment, out.name, plan.args, artifacts=(out / "loss.png",),
                               stage=plan.stage, inputs=plan.inputs)
        callbacks.append(tracker)
    if evaluate is not None:
        callbacks.append(HeldOutEval(evaluate, plan.eval_every, out / "eval.jsonl", tracker))
    # Last: a step's rows are recorded before its checkpoint tells MLflow to write up to that step.
    callbacks.append(Checkpointer(root, plan.checkpoint_every, plan.keep_checkpoints, plan.model,
                                  plan.inputs["tokenizer"], plan.args, plan.inputs, plan.stage))
    callbacks += checkpoint_callbacks()  # inside `openhcx run`: each checkpoint queued for evaluation
    trainer = TokenBudgetTrainer(model, plan.train, loader, loss_fn, world, model_config=plan.model,
                                 peak_flops=plan.peak_flops or measured_peak_flops(world.device), callbacks=callbacks)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        drop_temporaries(root)
    start = broadcast_object(str(latest_valid(root) or "") if plan.resume and world.is_main else "", world)
    if start:
        restore(trainer, Path(start), plan.model)
    trainer.fit()
    return trainer


def final_weights(trainer: Trainer) -> dict[str, Tensor]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(trainer.inner_model, options=FULL)


@dataclass(frozen=True)
class SFTData:
    train: list[Sample]
    heldout: list[Sample]
    skipped: dict[str, int]


def load_sft_data(data: Sequence[str], tokenizer: Tokenizer, max_len: int, max_tokens: int, format: Format,
                  skip_bad: bool, heldout_fraction: float, seed: int) -> SFTData:
    """Read and render every file; a conversation over the context is refused (file:line, length, limit)."""
    if not data:
        raise UserError("data: no conversation file given")
    samples: list[Sample] = []
    skipped: dict[str, int] = {}
    for path in data:
        convs = read_conversations(path, format, skip_bad=skip_bad)
        loaded = tokenize(convs.records, tokenizer, max_tokens=max_len, skip_bad=skip_bad)
        samples += loaded.records
        for counter in (convs.skipped, loaded.skipped):
            for reason, n in counter.items():
                skipped[reason] = skipped.get(reason, 0) + n
    if len(samples) < 2:
        raise UserError(f"data: {len(samples)} usable conversation(s) in {', '.join(data)}; need at least 2")
    longest = max(samples, key=lambda s: len(s.ids))
    if len(longest.ids) - 1 > max_tokens:
        raise UserError(f"max_tokens={max_tokens} is below the longest conversation ({len(longest.ids)} tokens, "
                        f"{longest.source}): raise max_tokens")
    train, heldout = heldout_split(len(samples), heldout_fraction, seed)
    return SFTData([samples[i] for i in train], [samples[i] for i in heldout], skipped)


def sft_batches(samples: Sequence[Sample], max_tokens: int, seed: int, shuffle: bool = True) -> list[list[int]]:
    return token_budget_batches([len(s.ids) - 1 for s in samples], max_tokens, seed, shuffle=shuffle)


def sft(
    base: str,
    data: list[str],
    out: str,
    tokenizer: str | None = None,
    format: Format = "auto",
    skip_bad: bool = False,
    max_tokens: int = 8192,
    epochs: int = 3,
    lr: float = 5e-5,
    min_lr: float = 5e-6,
    warmup_steps: int = 10,
    weight_decay: float = 0.0,
    beta1: float = 0.9,
    beta2: float = 0.95,
    grad_clip: float = 1.0,
    heldout_fraction: float = 0.05,
    eval_every: int = 0,
    parallel: Literal["ddp", "fsdp"] = "fsdp",
    compile: bool = False,
    seed: int = 0,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 2,
    peak_flops: float | None = None,
    mlflow: bool = True,
    experiment: str = "openhcx-sft",
    resume: bool = True,
    progress: bool = True,
    show: int = 0,
) -> Path:
    """Fine-tune a base model on conversations (loss on assistant turns only); writes <out>/model.

    Args:
        base: Base model checkpoint (a HF Llama directory, e.g. <pretrain out>/model).
        data: Conversation files: chat/Alpaca/ShareGPT jsonl(.gz) or Q/A CSV.
        out: Run directory: checkpoints/, model/, metrics.jsonl, eval.jsonl, loss.png, mlflow.db, manifest.json.
        tokenizer: Tokenizer directory; default: the base checkpoint's own tokenizer files.
        format: Input format of every file (auto: from the file).
        skip_bad: Skip (and count) malformed or over-long conversations instead of stopping at the first.
        max_tokens: Padded tokens per batch per rank: similar lengths are grouped, the batch size varies.
        epochs: Passes over the training conversations.
        lr: Peak learning rate, reached after warmup.
        min_lr: Floor of the cosine decay, reached at the last step.
        warmup_steps: Steps of linear warmup.
        weight_decay: AdamW decoupled weight decay on matrices.
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        grad_clip: Clip the global gradient norm to this (0: no clipping).
        heldout_fraction: Share of conversations held out for the evaluation loss (0: none).
        eval_every: Steps between held-out evaluations (0: only before and after training).
        parallel: Under torchrun: "ddp" or "fsdp" (FSDP2).
        compile: torch.compile each transformer block.
        seed: Seed for the held-out split and batch order.
        checkpoint_every: Steps between checkpoints (the last step is always saved).
        keep_checkpoints: How many recent checkpoints to keep.
        peak_flops: Peak FLOP/s of one device for MFU; default: datasheet bf16 for known GPUs, else measured.
        mlflow: Log to MLflow (MLFLOW_TRACKING_URI, else sqlite in `out`).
        experiment: MLflow experiment name.
        resume: Continue from the newest valid checkpoint in `out` (false: refuse an `out` with checkpoints).
        progress: Show a progress bar (on a terminal only).
        show: Print this many rendered training samples, trained tokens bracketed, before training.
    """
    args = {k: v for k, v in locals().items()}
    started = time.perf_counter()
    with joined() as world:
        path = run_sft(args, world)
        if world.is_main:
            print(summary(path, Path(out) / "manifest.json", time.perf_counter() - started))
        return path


def summary(path: Path, manifest: Path, seconds: float) -> str:
    """The line the command ends with: where the model is and the run's figures (from its manifest)."""
    m = json.loads(manifest.read_text(encoding="utf-8"))
    heldout = (f", held-out loss {m['heldout_loss_start']:.2f} -> {m['heldout_loss_end']:.2f}"
               if m["heldout_loss_start"] is not None else "")
    return f"sft: {path} ({m['steps']} steps, loss {m['final_loss']:.2f}{heldout}, {seconds:.0f} s)"


def run_sft(args: dict, world: World) -> Path:
    check_run_args(args)
    tok_dir = args["tokenizer"] or args["base"]
    tok = Tokenizer.load(tok_dir)
    model, config = load_checkpoint(require_file(args["base"], "base checkpoint"), head="lm", dtype=torch.float32)
    if tok.vocab_size > config.vocab_size:
        raise UserError(f"{tok_dir}: tokenizer has {tok.vocab_size} tokens, the model {config.vocab_size}")
    data = load_sft_data(args["data"], tok, config.max_seq_len, args["max_tokens"], args["format"],
                         args["skip_bad"], args["heldout_fraction"], args["seed"])
    pad = tok.id(PAD)
    per_epoch = len(sft_batches(data.train, args["max_tokens"], args["seed"])) // world.size
    if per_epoch == 0:
        raise UserError(f"data: {len(data.train)} conversations fill fewer batches than there are ranks")
    train = train_config(args, per_epoch * args["epochs"], args["max_tokens"], world.size, config.max_seq_len)
    if world.is_main:
        for sample in data.train[: args["show"]]:
            print(f"--- {sample.source} ({len(sample.ids)} tokens, {sum(sample.mask)} trained)")
            print(show(sample.ids, sample.mask, tok))
    inputs = {"base": str(args["base"]), "tokenizer": str(tok_dir), "data": [str(p) for p in args["data"]]}
    plan = RunPlan(stage="sft", model=config, train=train, out=Path(args["out"]), parallel=args["parallel"],
                   seed=args["seed"], checkpoint_every=args["checkpoint_every"],
                   keep_checkpoints=args["keep_checkpoints"], eval_every=args["eval_every"],
                   peak_flops=args["peak_flops"], mlflow=args["mlflow"], experiment=args["experiment"],
                   progress=args["progress"], resume=args["resume"],
                   args={**args, "model_config": asdict(config)}, inputs=inputs)
    loader = EpochLoader(lambda epoch: sft_batches(data.train, args["max_tokens"], args["seed"] + epoch),
                         lambda idx: collate_samples([data.train[i] for i in idx], pad), world.rank, world.size)
    fixed = [collate_samples([data.heldout[i] for i in idx], pad)[0]
             for idx in sft_batches(data.heldout, args["max_tokens"], 0, shuffle=False)]
    evaluate = (lambda m: {"loss": mean_loss(m, fixed, sft_loss, world.device)}) if fixed else None
    trainer = run_plan(plan, model.to(world.device), loader, sft_loss, world, evaluate)
    return write_sft(trainer, plan, data, tok)


def write_sft(trainer: Trainer, plan: RunPlan, data: SFTData, tok: Tokenizer) -> Path:
    """<out>/model (HF directory with tokenizer files) and the run's manifest, written by rank 0."""
    weights = final_weights(trainer)
    path = plan.out / "model"
    if trainer.world.is_main:
        rows, evals = read_metrics(plan.out / "metrics.jsonl"), read_metrics(plan.out / "eval.jsonl")
        results = {"steps": trainer.step, "final_loss": rows[-1]["loss"] if rows else None,
                   "train_conversations": len(data.train), "heldout_conversations": len(data.heldout),
                   "skipped": data.skipped, "trained_tokens": sum(r["tokens"] for r in rows),
                   "heldout_loss_start": evals[0]["loss"] if evals else None,
                   "heldout_loss_end": evals[-1]["loss"] if evals else None,
                   "morpheme_aware": tok.morpheme_aware}
        save_checkpoint(weights, plan.model, path, plan.inputs["tokenizer"], overwrite=True, stage="sft",
                        inputs=plan.inputs, **results)
        write_manifest(plan.out, "sft", plan.args, plan.inputs, model=str(path), **results)
    trainer.manifest_written(plan.out / "manifest.json")
    return path

