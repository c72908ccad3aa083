"""Reward model (RECIPE §5): the SFT model plus a fresh linear scalar head, trained on preference pairs.

`train_reward` is the `openhcx reward` command. Loss: Bradley-Terry, -log sigmoid(r_chosen - r_rejected),
one epoch by default (more overfits). Batches are built from whole prompt groups under the SFT stage's
max-token budget, so every comparison of one prompt lands in the same optimisation step. A sequence's score
is the head's value at its final real token (rows are right-padded; padding is never read), exactly where
transformers' LlamaForSequenceClassification reads it, so the saved directory loads there with no custom code.

Normalisation: preference sources differ in their reward scales, so after training the raw score's mean and
standard deviation are measured on a reference set, the *training pairs' chosen responses* (prompt plus
preferred answer, up to `norm_samples` of them): a normalised reward of 0 is a typical preferred answer.
The statistics and the clip bound sit in reward_norm.json, in config.json (key `reward_norm`) and in the
manifest; `RewardModel.score` returns raw and normalised-then-clipped scores (what PPO consumes).
Held-out pairwise accuracy (a seeded share of prompts, never trained on) is logged before and after training.
Not here: the loop (trainer.py), pair reading and validation (openhcx.data.preference), PPO.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from openhcx.data.chat import BadRecord
from openhcx.data.preference import PromptGroup, group_by_prompt, read_pairs, render_pair
from openhcx.io import UserError, atomic_dir, require_file, write_json, write_manifest
from openhcx.model.hf import load_checkpoint, read_config, write_checkpoint
from openhcx.model.transformer import Transformer, last_real
from openhcx.tokenizer.tokenizer import PAD, Tokenizer
from openhcx.train.batching import EpochLoader, Shape, pad_right, token_budget_batches
from openhcx.train.callbacks import read_metrics
from openhcx.train.distributed import World, joined
from openhcx.train.losses import IGNORE_INDEX, bradley_terry_loss
from openhcx.train.sft import (RunPlan, check_run_args, final_weights, heldout_split, run_plan,
                               train_config)
from openhcx.train.trainer import Trainer, to_device

NORM_FILE = "reward_norm.json"


@dataclass(frozen=True)
class RenderedGroup:
    """One prompt's pairs as token ids; `source` names its first pair's file:line."""

    pairs: list[tuple[list[int], list[int]]]
    source: str

    @property
    def longest(self) -> int:
        return max(len(s) for pair in self.pairs for s in pair)

    @property
    def rows(self) -> int:
        return 2 * len(self.pairs)


@dataclass(frozen=True)
class PairBatch:
    ids: Tensor  # (2P, T): row 2i is pair i's chosen sequence, row 2i+1 its rejected one; right-padded
    attn_mask: Tensor  # (2P, T), 1 on real tokens
    targets: Tensor  # (2P, 1): 0 on chosen rows, IGNORE_INDEX on rejected ones, so the loop counts pairs


@dataclass(frozen=True)
class RewardNorm:
    """normalised = clamp((raw - mean) / std, -clip, clip)."""

    mean: float
    std: float
    clip: float
    reference: str  # what the statistics were measured on
    count: int


def collate_groups(groups: Sequence[RenderedGroup], pad_id: int) -> tuple[PairBatch, Shape]:
    seqs = [s for g in groups for pair in g.pairs for s in pair]
    ids, attn = pad_right(seqs, pad_id)
    targets = torch.full((len(seqs), 1), IGNORE_INDEX, dtype=torch.long)
    targets[0::2] = 0
    return PairBatch(ids, attn, targets), Shape(int(attn.sum()), ids.numel(), ids.shape[1])


def sequence_scores(model: nn.Module, ids: Tensor, attn_mask: Tensor) -> Tensor:
    """(B,) the scalar head's value at each row's last real token."""
    return last_real(model(ids), attn_mask).float()


def pair_loss(model: nn.Module, batch: PairBatch) -> tuple[Tensor, Tensor]:
    scores = sequence_scores(model, batch.ids, batch.attn_mask)
    return bradley_terry_loss(scores[0::2], scores[1::2])


@torch.no_grad()
def pair_metrics(model: nn.Module, batches: Sequence[PairBatch], device: torch.device) -> dict[str, float]:
    """Pairwise accuracy (chosen scored strictly higher), mean Bradley-Terry loss and mean margin."""
    margins = []
    for batch in batches:
        b = to_device(batch, device)
        scores = sequence_scores(model, b.ids, b.attn_mask)
        margins.append(scores[0::2] - scores[1::2])
    m = torch.cat(margins)
    return {"accuracy": (m > 0).float().mean().item(), "loss": -torch.nn.functional.logsigmoid(m).mean().item(),
            "margin": m.mean().item(), "pairs": m.numel()}


def normalise(raw: Tensor, norm: RewardNorm) -> Tensor:
    return ((raw - norm.mean) / norm.std).clamp(-norm.clip, norm.clip)


@torch.no_grad()
def score_sequences(model: nn.Module, seqs: Sequence[Sequence[int]], pad_id: int, max_tokens: int,
                    device: torch.device) -> Tensor:
    """Raw scores of variable-length sequences, in their order, batched by length under `max_tokens`."""
    out = torch.empty(len(seqs))
    for idx in token_budget_batches([len(s) for s in seqs], max(max_tokens, max(map(len, seqs))), shuffle=False):
        ids, attn = pad_right([seqs[i] for i in idx], pad_id)
        out[idx] = sequence_scores(model, ids.to(device), attn.to(device)).cpu()
    return out


class RewardModel:
    """A trained reward model for inference (PPO): raw scores and normalised, clipped ones."""

    def __init__(self, model: Transformer, norm: RewardNorm, pad_id: int, max_tokens: int = 8192):
        if model.config.head != "scalar":
            raise UserError("RewardModel needs a scalar-head model")
        self.model, self.norm, self.pad_id, self.max_tokens = model.eval(), norm, pad_id, max_tokens

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
             max_tokens: int = 8192) -> "RewardModel":
        path = require_file(path, "reward model")
        norm_file = require_file(Path(path) / NORM_FILE, "reward normalisation file")
        norm = RewardNorm(**json.loads(norm_file.read_text(encoding="utf-8")))
        model, config = load_checkpoint(path, dtype=dtype, device=device)
        if config.head != "scalar":
            raise UserError(f"{path}: config.json is not a sequence-classification (scalar head) model")
        return cls(model, norm, config.pad_token_id or 0, max_tokens)

    def score(self, ids_batch: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """(raw, normalised) scores (B,) of full sequences (prompt + response, ending with <|endofturn|>)."""
        device = self.model.model.norm.weight.device
        raw = score_sequences(self.model, ids_batch, self.pad_id, self.max_tokens, device)
        return raw, normalise(raw, self.norm)


@dataclass(frozen=True)
class PairData:
    train: list[RenderedGroup]
    heldout: list[RenderedGroup]
    skipped: dict[str, int]
    pairs: int


def render_groups(groups: Sequence[PromptGroup], tokenizer: Tokenizer, max_len: int,
                  skip_bad: bool, skipped: dict[str, int]) -> list[RenderedGroup]:
    """Token ids of every pair; a sequence over the context is refused (file:line, length, limit) or skipped."""
    out = []
    for group in groups:
        pairs = []
        for pair in group.pairs:
            chosen, rejected = render_pair(pair, tokenizer)
            longest = max(len(chosen), len(rejected))
            if longest > max_len:
                if not skip_bad:
                    raise BadRecord("too_long", f"pair is {longest} tokens, longer than the limit of {max_len}",
                                    pair.source)
                skipped["too_long"] = skipped.get("too_long", 0) + 1
                continue
            pairs.append((chosen, rejected))
        if pairs:
            out.append(RenderedGroup(pairs, group.pairs[0].source))
    return out


def load_pair_data(data: Sequence[str], tokenizer: Tokenizer, max_len: int, max_tokens: int, skip_bad: bool,
                   heldout_fraction: float, seed: int) -> PairData:
    if not data:
        raise UserError("data: no preference file given")
    pairs, skipped = [], {}
    for path in data:
        loaded = read_pairs(path, skip_bad=skip_bad)
        pairs += loaded.records
        for reason, n in loaded.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    groups = render_groups(group_by_prompt(pairs), tokenizer, max_len, skip_bad, skipped)
    for g in groups:
        if g.rows * g.longest > max_tokens:
            raise UserError(f"{g.source}: the {len(g.pairs)} pair(s) of this prompt need {g.rows} x {g.longest} "
                            f"padded tokens, more than max_tokens={max_tokens} (all pairs of one prompt share "
                            "a step): raise max_tokens")
    if len(groups) < 2:
        raise UserError(f"data: {len(groups)} usable prompt(s) in {', '.join(data)}; need at least 2")
    train, heldout = heldout_split(len(groups), heldout_fraction, seed)
    return PairData([groups[i] for i in train], [groups[i] for i in heldout], skipped,
                    sum(len(g.pairs) for g in groups))


def group_batches(groups: Sequence[RenderedGroup], max_tokens: int, seed: int,
                  shuffle: bool = True) -> list[list[int]]:
    return token_budget_batches([g.longest for g in groups], max_tokens, seed, rows=[g.rows for g in groups],
                                shuffle=shuffle)


def train_reward(
    sft: str,
    data: list[str],
    out: str,
    tokenizer: str | None = None,
    skip_bad: bool = False,
    max_tokens: int = 8192,
    epochs: int = 1,
    lr: float = 1e-5,
    min_lr: float = 1e-6,
    warmup_steps: int = 10,
    weight_decay: float = 0.0,
    beta1: float = 0.9,
    beta2: float = 0.95,
    grad_clip: float = 1.0,
    heldout_fraction: float = 0.05,
    eval_every: int = 0,
    clip: float = 5.0,
    norm_samples: int = 2000,
    parallel: Literal["ddp", "fsdp"] = "fsdp",
    compile: bool = False,
    seed: int = 0,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 2,
    peak_flops: float | None = None,
    mlflow: bool = True,
    experiment: str = "openhcx-reward",
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Train a reward model from an SFT checkpoint on preference pairs; writes <out>/model.

    Args:
        sft: SFT checkpoint directory (its body initialises the reward model; the scalar head starts fresh).
        data: Preference files: {prompt, chosen, rejected} or HH-RLHF jsonl(.gz).
        out: Run directory: checkpoints/, model/, metrics.jsonl, eval.jsonl, loss.png, mlflow.db, manifest.json.
        tokenizer: Tokenizer directory; default: the SFT checkpoint's own tokenizer files.
        skip_bad: Skip (and count) malformed, identical or over-long pairs instead of stopping at the first.
        max_tokens: Padded tokens per batch per rank; whole prompt groups only, so one prompt's pairs share a step.
        epochs: Passes over the pairs (the report: one; more overfits).
        lr: Peak learning rate, reached after warmup.
        min_lr: Floor of the cosine decay, reached at the last step.
        warmup_steps: Steps of linear warmup.
        weight_decay: AdamW decoupled weight decay on matrices.
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        grad_clip: Clip the global gradient norm to this (0: no clipping).
        heldout_fraction: Share of prompts (with all their pairs) held out for pairwise accuracy (0: none).
        eval_every: Steps between held-out evaluations (0: only before and after training).
        clip: Bound on the normalised reward at inference, in standard deviations.
        norm_samples: Most training chosen responses to measure the normalisation mean and std on.
        parallel: Under torchrun: "ddp" or "fsdp" (FSDP2).
        compile: torch.compile each transformer block.
        seed: Seed for the scalar head, the held-out split and batch order.
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
    with joined() as world:
        path = run_reward(args, world)
        if world.is_main:
            print(summary(path, Path(out) / "manifest.json", time.perf_counter() - started))
        return path


def summary(path: Path, manifest: Path, seconds: float) -> str:
    """The line the command ends with: where the model is and the run's figures (from its manifest)."""
    m = json.loads(manifest.read_text(encoding="utf-8"))
    heldout = (f", held-out accuracy {m['heldout_accuracy_start']:.1%} -> {m['heldout_accuracy']:.1%} on "
               f"{m['heldout_pairs']} pairs" if m["heldout_accuracy_start"] is not None else "")
    return f"reward: {path} ({m['steps']} steps, loss {m['final_loss']:.3f}{heldout}, {seconds:.0f} s)"


def run_reward(args: dict, world: World) -> Path:
    check_run_args(args)
    if args["clip"] <= 0 or args["norm_samples"] < 2:
        raise UserError(f"clip={args['clip']}, norm_samples={args['norm_samples']}: need clip > 0, samples >= 2")
    tok_dir = args["tokenizer"] or args["sft"]
    tok = Tokenizer.load(tok_dir)
    config = read_config(require_file(args["sft"], "SFT checkpoint"))
    data = load_pair_data(args["data"], tok, config.max_seq_len, args["max_tokens"], args["skip_bad"],
                          args["heldout_fraction"], args["seed"])
    torch.manual_seed(args["seed"])  # the fresh scalar head
    model, config = load_checkpoint(args["sft"], head="scalar", dtype=torch.float32)
    pad = tok.id(PAD)
    per_epoch = len(group_batches(data.train, args["max_tokens"], args["seed"])) // world.size
    if per_epoch == 0:
        raise UserError(f"data: {len(data.train)} prompts fill fewer batches than there are ranks")
    train = train_config(args, per_epoch * args["epochs"], args["max_tokens"], world.size, config.max_seq_len)
    inputs = {"sft": str(args["sft"]), "tokenizer": str(tok_dir), "data": [str(p) for p in args["data"]]}
    plan = RunPlan(stage="reward", model=config, train=train, out=Path(args["out"]), parallel=args["parallel"],
                   seed=args["seed"], checkpoint_every=args["checkpoint_every"],
                   keep_checkpoints=args["keep_checkpoints"], eval_every=args["eval_every"],
                   peak_flops=args["peak_flops"], mlflow=args["mlflow"], experiment=args["experiment"],
                   progress=args["progress"], resume=args["resume"],
                   args={**args, "model_config": asdict(config)}, inputs=inputs)
    loader = EpochLoader(lambda epoch: group_batches(data.train, args["max_tokens"], args["seed"] + epoch),
                         lambda idx: collate_groups([data.train[i] for i in idx], pad), world.rank, world.size)
    fixed = [collate_groups([data.heldout[i] for i in idx], pad)[0]
             for idx in group_batches(data.heldout, args["max_tokens"], 0, shuffle=False)]
    evaluate = (lambda m: pair_metrics(m, fixed, world.device)) if fixed else None
    trainer = run_plan(plan, model.to(world.device), loader, pair_loss, world, evaluate)
    norm = measure_norm(trainer.model, data.train, pad, args, world.device)
    return write_reward(trainer, plan, data, tok, norm)


def measure_norm(model: nn.Module, groups: Sequence[RenderedGroup], pad_id: int, args: dict,
                 device: torch.device) -> RewardNorm:
    """Mean and std of raw scores over (a seeded sample of) the distinct training chosen sequences."""
    chosen = list({tuple(c): None for g in groups for c, _ in g.pairs})
    random.Random(args["seed"]).shuffle(chosen)
    sample = chosen[: args["norm_samples"]]
    model.eval()
    raw = score_sequences(model, sample, pad_id, args["max_tokens"], device)
    std = raw.std().item() if len(sample) > 1 else 1.0
    return RewardNorm(mean=raw.mean().item(), std=max(std, 1e-6), clip=float(args["clip"]),
                      reference="training chosen responses", count=len(sample))


def write_reward(trainer: Trainer, plan: RunPlan, data: PairData, tok: Tokenizer, norm: RewardNorm) -> Path:
    """<out>/model: a LlamaForSequenceClassification directory plus reward_norm.json; the run's manifest."""
    weights = final_weights(trainer)
    path = plan.out / "model"
    if not trainer.world.is_main:
        return path
    evals = read_metrics(plan.out / "eval.jsonl")
    rows = read_metrics(plan.out / "metrics.jsonl")
    results = {"steps": trainer.step, "final_loss": rows[-1]["loss"] if rows else None, "pairs": data.pairs,
               "train_prompts": len(data.train), "heldout_prompts": len(data.heldout), "skipped": data.skipped,
               "heldout_accuracy_start": evals[0]["accuracy"] if evals else None,
               "heldout_accuracy": evals[-1]["accuracy"] if evals else None,
               "heldout_pairs": evals[-1]["pairs"] if evals else 0,
               "reward_norm": asdict(norm), "morpheme_aware": tok.morpheme_aware}
    with atomic_dir(path, overwrite=True) as tmp:
        write_checkpoint(weights, plan.model, tmp, plan.inputs["tokenizer"])
        config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        write_json(tmp / "config.json", {**config, "reward_norm": asdict(norm)})
        write_json(tmp / NORM_FILE, asdict(norm))
        write_manifest(tmp, "reward", asdict(plan.model), plan.inputs, **results)
    write_manifest(plan.out, "reward", plan.args, plan.inputs, model=str(path), **results)
    trainer.manifest_written(plan.out / "manifest.json")
    return path
