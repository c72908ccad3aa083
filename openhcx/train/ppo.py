"""RLHF with PPO (RECIPE §5): reward-model score minus a per-token KL penalty, plus sequence-level unlikelihood.

`ppo` is the `openhcx ppo` command. Four models: the policy and the frozen reference start as the SFT model,
the reward model scores each response at its last token, and the value model (one value per token) starts
as the reward model. One step: the rollout producer (rollout.py) samples a batch of responses and scores
them; the learner here turns them into per-token rewards (k1 KL penalty, coefficient 0.04 by default, fixed
or adapted as in Ziegler et al. 2019), advantages by GAE, whitened, and runs several epochs of minibatches
of the clipped policy loss (plus `unlikelihood_weight` x the sequence-level unlikelihood of repeated 4-grams,
in the sampled responses and in greedy continuations of the same prompts) and the clipped value loss, with one optimizer per model. Every `eval_every` steps the policy answers the
held-out instruction set greedily; the mean of the scorer's length and format parts (length, language,
politeness) is the early-stopping signal: after `patience` evaluations in a row below the best, training
stops, and the written policy is the best-scoring one (the SFT policy itself if PPO never beat it), or the
last one with `keep="last"`.

PPO does not use the supervised loop in trainer.py (its step is sampling, then several epochs over two
models), but it reports through the same callbacks (metrics.jsonl, MLflow, an event per checkpoint) and writes
checkpoints in the same format, with the same helpers (checkpoint.py): `<out>/checkpoints/step-XXXXXXXX/` is
the policy as a HF model directory, and beside it, in trainer/, everything the next update depends on: the
value model, both optimizers, the RNG states (the minibatch order's generator among them), how many prompt
batches were used, the KL coefficient, the early-stopping state with the best policy, the evaluations, and
the weights of the last `lag` updates, which the producer still samples with. Batch k is sampled with seed +
k by the policy after exactly k - lag updates, so a killed run resumes and ends exactly as an uninterrupted one
(bit for bit on CPU; on CUDA, where some kernels are not deterministic, only as closely as two uninterrupted
runs agree). Early stopping reads the in-loop evaluation, never the pipeline's asynchronous evaluations of
checkpoints: those arrive at times no seed fixes, so acting on them would make runs unrepeatable and resume
inexact.
Not here: the math (losses.py), sampling and scoring (rollout.py), multi-process training.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from openhcx.align.scorer import PromptRecord, repetition_rate
from openhcx.align.scorer import score as score_response
from openhcx.data.chat import BadRecord, Message, check_turns, field_of, messages_of, read_jsonl, render_prompt
from openhcx.io import UserError, atomic_dir, atomic_file, require_file, write_json, write_manifest
from openhcx.model.generate import Sampling, generate
from openhcx.model.hf import load_checkpoint, read_weights, save_checkpoint, weights_for_saving, write_checkpoint
from openhcx.model.transformer import ModelConfig, Transformer
from openhcx.train.checkpoint import (
    FULL, STATE_DIR, checkpoint_path, drop_temporaries, join_optimizer_state, latest_valid, prune, rng_state,
    set_rng_state, sha256, split_optimizer_state,
)
from openhcx.train.losses import (
    KL_ESTIMATORS, gae, masked_mean, ppo_policy_loss, repeated_ngram_mask, rewards_with_kl_penalty,
    sequence_unlikelihood_loss, value_loss, whiten,
)
from openhcx.train.rollout import Continuations, Rollout, RolloutProducer, RolloutWorker, at_responses
from openhcx.train.rollout import response_logits, token_logprobs
from openhcx.train.trainer import adamw

CONSTRAINT_PARTS = ("length", "language", "polite")
"""Scorer parts that judge length and format (not content): the early-stopping signal."""


@dataclass(frozen=True)
class PPOConfig:
    """The learner's settings; `validate` names the key a user must fix."""

    steps: int = 50  # rollout batches, one learner update each
    batch_size: int = 16  # prompts per rollout batch
    minibatch_size: int = 8
    epochs: int = 4  # passes over each rollout batch
    lr: float = 1e-5
    value_lr: float = 1e-5
    kl_coef: float = 0.04
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    kl_target: float | None = None  # adaptive controller's target KL per response; None keeps kl_coef fixed
    kl_gain: float = 0.1  # K_beta of the adaptive controller
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    value_clip: float = 0.2
    grad_clip: float = 1.0
    unlikelihood_weight: float = 1.0  # 0 disables the unlikelihood term
    unlikelihood_n: int = 4
    seed: int = 0

    def validate(self) -> None:
        for key in ("steps", "batch_size", "minibatch_size", "epochs", "unlikelihood_n"):
            if getattr(self, key) <= 0:
                raise UserError(f"{key}={getattr(self, key)}: must be positive")
        if self.batch_size % self.minibatch_size:
            raise UserError(f"minibatch_size={self.minibatch_size}: must divide batch_size={self.batch_size}")
        for key in ("lr", "value_lr", "clip", "value_clip"):
            if getattr(self, key) <= 0:
                raise UserError(f"{key}={getattr(self, key)}: must be positive")
        for key in ("kl_coef", "unlikelihood_weight", "grad_clip", "kl_gain"):
            if getattr(self, key) < 0:
                raise UserError(f"{key}={getattr(self, key)}: must not be negative")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise UserError(f"gamma={self.gamma}, lam={self.lam}: both must lie in [0, 1]")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise UserError(f"kl_estimator={self.kl_estimator!r}: expected one of {', '.join(KL_ESTIMATORS)}")
        if self.kl_target is not None and self.kl_target <= 0:
            raise UserError(f"kl_target={self.kl_target}: must be positive (or null for a fixed coefficient)")


def next_kl_coef(coef: float, kl: float, target: float | None, gain: float = 0.1) -> float:
    """Ziegler et al. (2019): beta <- beta (1 + K_beta e), e = clip(KL / KL_target - 1, -0.2, 0.2)."""
    if target is None:
        return coef
    return coef * (1 + gain * min(max(kl / target - 1, -0.2), 0.2))


@dataclass(frozen=True)
class PPOStepMetrics:
    step: int
    reward_raw: float  # mean reward-model output
    reward: float  # mean normalised score (what the policy is rewarded with)
    kl: float  # mean over responses of the summed per-token KL estimate against the reference
    kl_coef: float
    entropy: float  # mean per response token
    response_length: float  # tokens
    repetition_rate: float  # share of responses repeating a word 4-gram
    greedy_repetition_rate: float  # share of the prompts' greedy continuations repeating a token n-gram
    clip_fraction: float
    approx_kl: float  # policy movement within the update
    policy_loss: float
    value_loss: float
    value_clip_fraction: float
    unlikelihood_loss: float
    heldout: float  # the latest held-out length/format score (-1 before the first evaluation)
    episodes_per_s: float  # responses sampled and learnt from per second
    seconds: float


def entropy_of(logits: Tensor) -> Tensor:
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


class PPOLearner:
    """Owns the trained policy and value model; `update` is one PPO step on one rollout batch."""

    def __init__(self, policy: Transformer, value: Transformer, config: PPOConfig):
        self.policy, self.value, self.config = policy.train(), value.train(), config
        device = policy.model.norm.weight.device
        self.policy_opt = adamw(policy.parameters(), device, config.lr)
        self.value_opt = adamw(value.parameters(), device, config.value_lr)
        self.kl_coef = config.kl_coef
        self.generator = torch.Generator().manual_seed(config.seed)

    def _step(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip)
        optimizer.step()

    def _greedy_unlikelihood(self, g: Continuations) -> Tensor:
        """Sequence-level unlikelihood on greedy continuations that repeat an n-gram (rows without one add 0)."""
        width = g.responses.shape[1]
        logp = token_logprobs(response_logits(self.policy, g.ids, g.attn_mask, g.prompt_lens, width), g.responses)
        return sequence_unlikelihood_loss(logp, g.responses, g.response_mask.float(), self.config.unlikelihood_n)

    def update(self, r: Rollout) -> dict[str, float]:
        c = self.config
        mask, width = r.response_mask.float(), r.responses.shape[1]
        with torch.no_grad():
            old_values = at_responses(self.value(r.ids, attn_mask=r.attn_mask), r.prompt_lens, width).float() * mask
        kl = KL_ESTIMATORS[c.kl_estimator](r.logprobs, r.ref_logprobs) * mask
        rewards, _ = rewards_with_kl_penalty(r.scores, kl, mask, self.kl_coef)
        advantages, returns = gae(rewards, old_values, mask, c.gamma, c.lam)
        advantages = whiten(advantages, mask)
        looping, greedy_repetition = None, 0.0
        if r.greedy is not None:
            repeats = repeated_ngram_mask(r.greedy.responses, r.greedy.response_mask, c.unlikelihood_n).any(1)
            greedy_repetition = float(repeats.float().mean())
            looping = r.greedy.rows(repeats.nonzero().squeeze(1)) if bool(repeats.any()) else None
        totals: dict[str, float] = {}

        def add(**values: Tensor) -> None:
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + float(value)

        passes = 0
        for _ in range(c.epochs):
            for mb in torch.randperm(len(mask), generator=self.generator).split(c.minibatch_size):
                mb = mb.to(mask.device)
                logits = response_logits(self.policy, r.ids[mb], r.attn_mask[mb], r.prompt_lens[mb], width)
                logp = token_logprobs(logits, r.responses[mb])
                policy = ppo_policy_loss(logp, r.logprobs[mb], advantages[mb], mask[mb], c.clip)
                unlikelihood = torch.zeros(())
                if c.unlikelihood_weight > 0:
                    unlikelihood = sequence_unlikelihood_loss(logp, r.responses[mb], mask[mb], c.unlikelihood_n)
                    if looping is not None:
                        unlikelihood = unlikelihood + self._greedy_unlikelihood(looping)
                self._step(self.policy, self.policy_opt, policy.loss + c.unlikelihood_weight * unlikelihood)
                values = at_responses(self.value(r.ids[mb], attn_mask=r.attn_mask[mb]), r.prompt_lens[mb], width)
                value = value_loss(values.float(), old_values[mb], returns[mb], mask[mb], c.value_clip)
                self._step(self.value, self.value_opt, value.loss)
                with torch.no_grad():
                    add(entropy=masked_mean(entropy_of(logits), mask[mb]), clip_fraction=policy.clip_fraction,
                        approx_kl=policy.approx_kl, policy_loss=policy.loss, value_loss=value.loss,
                        value_clip_fraction=value.clip_fraction, unlikelihood_loss=unlikelihood)
                passes += 1
        sequence_kl = float(kl.sum(1).mean())
        stats = {k: v / passes for k, v in totals.items()} | {"kl": sequence_kl, "kl_coef": self.kl_coef,
                                                              "greedy_repetition_rate": greedy_repetition}
        self.kl_coef = next_kl_coef(self.kl_coef, sequence_kl, c.kl_target, c.kl_gain)
        return stats


@dataclass(frozen=True)
class HeldoutSet:
    """Prompts with known expectations, rendered; `evaluate` answers them greedily and scores length/format."""

    records: list[PromptRecord]
    prompts: list[list[int]]
    decode: Callable[[list[int]], str]
    stop_ids: tuple[int, ...]
    pad_id: int
    max_new_tokens: int

    @torch.no_grad()
    def evaluate(self, policy: Transformer) -> dict[str, float]:
        was_training = policy.training
        policy.eval()
        done = generate(policy, self.prompts, Sampling(max_new_tokens=self.max_new_tokens, stop_ids=self.stop_ids),
                        pad_id=self.pad_id)
        policy.train(was_training)
        texts = [self.decode([t for t in c.ids if t not in self.stop_ids]) for c in done]
        results = [score_response(rec, text) for rec, text in zip(self.records, texts)]
        constraint = [sum(r.parts[p] for p in CONSTRAINT_PARTS if p in r.parts)
                      / sum(p in r.parts for p in CONSTRAINT_PARTS) for r in results]
        return {"constraints": sum(constraint) / len(results), "score": sum(r.total for r in results) / len(results),
                "length_chars": sum(len(t) for t in texts) / len(texts), "repetition_rate": repetition_rate(texts)}


@dataclass
class EarlyStopping:
    """Stop after `patience` evaluations in a row below the best; remembers the best policy's weights."""

    patience: int
    best: float = -math.inf
    best_step: int = 0
    worse: int = 0
    best_state: dict[str, Tensor] | None = None

    def observe(self, step: int, value: float, model: nn.Module) -> bool:
        """Record an evaluation; True when training should stop."""
        if value >= self.best:
            self.best, self.best_step, self.worse = value, step, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.worse += 1
        return self.worse >= self.patience


@dataclass(frozen=True)
class PPOResult:
    steps: int  # updates run, resumed ones included
    stopped_early: bool
    best_step: int  # the update after which the written policy was taken
    evaluations: list[dict]
    metrics: list[PPOStepMetrics]  # the updates this call ran (metrics.jsonl holds them all)
    policy_state: dict[str, Tensor]


@dataclass(frozen=True)
class PPOCheckpoints:
    """Where `PPORun` saves checkpoints, how often, and what their manifests record."""

    root: Path
    every: int  # updates between checkpoints; 0: only the last update's
    keep: int  # the newest ones kept
    model_config: ModelConfig  # the policy's
    tokenizer_dir: str | Path | None  # copied into each checkpoint, so that it loads as a HF model
    run_config: dict
    inputs: dict

    def due(self, step: int, last: bool) -> bool:
        return last or (self.every > 0 and step % self.every == 0)


def policy_weights(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """A policy state dict as read from safetensors, with the tied output matrix (stored once) put back."""
    if config.head == "lm" and config.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


class PPORun:
    """The loop: one rollout batch from the producer, one learner update, weights back, callbacks, checkpoints."""

    def __init__(self, learner: PPOLearner, producer: RolloutProducer, heldout: HeldoutSet | None = None,
                 eval_every: int = 5, patience: int = 3, callbacks: Sequence = (), progress: bool = False,
                 world=None, keep_best: bool = True, checkpoints: PPOCheckpoints | None = None):
        from openhcx.train.distributed import World

        self.learner, self.producer, self.heldout = learner, producer, heldout
        self.eval_every, self.stopping = eval_every, EarlyStopping(patience)
        self.callbacks, self.progress, self.keep_best = list(callbacks), progress, keep_best
        self.world = world or World(0, 1, learner.policy.model.norm.weight.device)
        self.checkpoints = checkpoints
        self.step = 0
        self.stopped = False
        self.evaluations: list[dict] = []
        # (version, weights) of the last `lag` updates before this one: batches still to come are sampled with them
        self.sampling_weights: deque[tuple[int, dict[str, Tensor]]] = deque(maxlen=producer.lag)

    def _evaluate(self) -> bool:
        values = self.heldout.evaluate(self.learner.policy)
        self.evaluations.append({"step": self.step, **values})
        for cb in self.callbacks:
            if hasattr(cb, "log"):
                cb.log({f"heldout_{key}": float(value) for key, value in values.items()}, self.step)
        return self.stopping.observe(self.step, values["constraints"], self.learner.policy)

    def fit(self) -> PPOResult:
        """Run updates from `self.step` (0, or where `restore` left it) to the configured steps or an early stop."""
        from tqdm import tqdm

        for cb in self.callbacks:
            cb.on_train_start(self)
        steps = self.learner.config.steps
        bar = tqdm(total=steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=None if self.progress else True)
        metrics: list[PPOStepMetrics] = []
        self.producer.start()
        try:
            if self.step == 0 and self.heldout is not None:
                self.stopped = self._evaluate()
            while not self.stopped and self.step < steps:
                start = time.perf_counter()
                rollout = self.producer.get()
                if rollout is None:
                    break
                stats = self.learner.update(rollout)
                self.step += 1
                published = self.producer.publish(self.step, self.learner.policy.state_dict())
                if self.heldout is not None and (self.step % self.eval_every == 0 or self.step == steps):
                    self.stopped = self._evaluate()
                seconds = time.perf_counter() - start
                row = PPOStepMetrics(
                    step=self.step, reward_raw=float(rollout.scores_raw.mean()), reward=float(rollout.scores.mean()),
                    response_length=float(rollout.response_mask.sum(1).float().mean()),
                    repetition_rate=repetition_rate(rollout.texts),
                    heldout=self.evaluations[-1]["constraints"] if self.evaluations else -1.0,
                    episodes_per_s=len(rollout.texts) / seconds, seconds=seconds, **stats)
                metrics.append(row)
                for cb in self.callbacks:
                    cb.on_step_end(self, row)
                if self.checkpoints is not None and self.checkpoints.due(self.step, self.stopped or self.step == steps):
                    path = self.save(checkpoint_path(self.checkpoints.root, self.step))
                    prune(self.checkpoints.root, self.checkpoints.keep)
                    for cb in self.callbacks:
                        cb.on_checkpoint(self, path)
                self.sampling_weights.append((self.step, published))
                bar.set_postfix(reward=f"{row.reward:.3f}", kl=f"{row.kl:.3f}", len=f"{row.response_length:.1f}",
                                rep=f"{row.repetition_rate:.2f}", refresh=False)
                bar.update(1)
        finally:
            self.producer.close()
            bar.close()
        for cb in self.callbacks:
            cb.on_train_end(self)
        if self.keep_best and self.stopping.best_state is not None:
            state, kept = self.stopping.best_state, self.stopping.best_step
        else:
            state, kept = {k: v.detach().clone() for k, v in self.learner.policy.state_dict().items()}, self.step
        return PPOResult(self.step, self.stopped, kept, self.evaluations, metrics, state)

    def _optimizers(self) -> tuple[tuple[str, nn.Module, torch.optim.Optimizer], ...]:
        learner = self.learner
        return ("policy", learner.policy, learner.policy_opt), ("value", learner.value, learner.value_opt)

    def save(self, path: Path) -> Path:
        """Write a checkpoint of the current step (complete, or not at all) as the module docstring lays out."""
        config, stop, state_dir = self.checkpoints.model_config, self.stopping, Path(STATE_DIR)
        with atomic_dir(path, overwrite=True) as tmp:
            (tmp / state_dir).mkdir()
            write_checkpoint(self.learner.policy, config, tmp, self.checkpoints.tokenizer_dir)
            save_file({k: v.detach().contiguous().cpu() for k, v in self.learner.value.state_dict().items()},
                      str(tmp / state_dir / "value.safetensors"))
            for name, model, optimizer in self._optimizers():
                tensors, meta = split_optimizer_state(get_optimizer_state_dict(model, optimizer, options=FULL))
                save_file(tensors, str(tmp / state_dir / f"{name}_optimizer.safetensors"))
                write_json(tmp / state_dir / f"{name}_optimizer.json", meta)
            if self.keep_best and stop.best_state is not None and stop.best_step < self.step:
                save_file(weights_for_saving(stop.best_state, config), str(tmp / state_dir / "best_policy.safetensors"))
            for version, weights in self.sampling_weights:
                save_file(weights_for_saving(weights, config),
                          str(tmp / state_dir / f"sampler-{version:08d}.safetensors"))
            write_json(tmp / state_dir / "state.json", {
                "step": self.step, "stopped": self.stopped, "prompt_batches_used": self.step,
                "rng": rng_state(), "minibatch_order": self.learner.generator.get_state().tolist(),
                "kl_coef": self.learner.kl_coef,
                "early_stopping": {"best": stop.best if math.isfinite(stop.best) else None,
                                   "best_step": stop.best_step, "worse": stop.worse},
                "evaluations": self.evaluations, "sampling_versions": [v for v, _ in self.sampling_weights]})
            files = {p.relative_to(tmp).as_posix(): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            write_manifest(tmp, "ppo-checkpoint", self.checkpoints.run_config, self.checkpoints.inputs, step=self.step,
                           world_size=self.world.size, files=files)
        return path

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint written by `save` (before `fit`; the producer must not have started)."""
        config, stop, state_dir = self.checkpoints.model_config, self.stopping, Path(path) / STATE_DIR
        state = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
        self.learner.policy.load_state_dict(policy_weights(read_weights(path), config))
        self.learner.value.load_state_dict(load_file(str(state_dir / "value.safetensors")))
        for name, model, optimizer in self._optimizers():
            meta = json.loads((state_dir / f"{name}_optimizer.json").read_text(encoding="utf-8"))
            tensors = load_file(str(state_dir / f"{name}_optimizer.safetensors"))
            set_optimizer_state_dict(model, optimizer, join_optimizer_state(tensors, meta), options=FULL)
        set_rng_state(state["rng"])
        self.learner.generator.set_state(torch.tensor(state["minibatch_order"], dtype=torch.uint8))
        self.learner.kl_coef = state["kl_coef"]
        self.step, self.stopped, self.evaluations = state["step"], state["stopped"], state["evaluations"]
        early = state["early_stopping"]
        stop.best = -math.inf if early["best"] is None else early["best"]
        stop.best_step, stop.worse = early["best_step"], early["worse"]
        if (state_dir / "best_policy.safetensors").is_file():
            stop.best_state = policy_weights(load_file(str(state_dir / "best_policy.safetensors")), config)
        elif early["best"] is not None and stop.best_step == self.step:
            stop.best_state = {k: v.detach().clone() for k, v in self.learner.policy.state_dict().items()}
        elif early["best"] is not None and self.keep_best:
            raise UserError(f"{path}: written with keep=last, so it holds no best policy; resume with keep=last")
        self.producer.skip(state["prompt_batches_used"])
        for version in state["sampling_versions"]:
            weights = policy_weights(load_file(str(state_dir / f"sampler-{version:08d}.safetensors")), config)
            self.sampling_weights.append((version, self.producer.publish(version, weights)))
        self.sampling_weights.append((self.step, self.producer.publish(self.step, self.learner.policy.state_dict())))


# ---- the command ------------------------------------------------------------------------------------------


def read_prompts(paths: Sequence[str]) -> list[list[Message]]:
    """Conversations to continue, from jsonl files with `messages` (a final assistant turn is dropped)."""
    out = []
    for path in paths:
        for where, obj in read_jsonl(require_file(path, "prompt file")):
            try:
                if isinstance(obj, BadRecord):
                    raise obj
                messages = messages_of(field_of(obj, "messages", list))
                if messages and messages[-1].role == "assistant":
                    messages = messages[:-1]
                check_turns(messages, "user")
            except BadRecord as e:
                raise e.at(where) from None
            out.append(messages)
    if not out:
        raise UserError(f"{', '.join(paths)}: no prompts")
    return out


def read_heldout(path: str) -> list[PromptRecord]:
    records = []
    for where, obj in read_jsonl(require_file(path, "held-out prompt file")):
        if isinstance(obj, BadRecord):
            raise obj.at(where)
        records.append(PromptRecord.from_json(obj, where))
    if not records:
        raise UserError(f"{path}: no held-out prompts")
    return records


def prompt_batches(prompts: Sequence[list[int]], batch_size: int, seed: int) -> Iterator[tuple[list[int], list]]:
    """Endless batches of (indices, prompt ids), a fresh shuffle per pass over the prompts."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(prompts)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            index = order[i:i + batch_size]
            yield index, [prompts[j] for j in index]


RESUME_MAY_CHANGE = frozenset({"out", "steps", "keep", "checkpoint_every", "keep_checkpoints", "resume", "overwrite",
                               "mlflow", "experiment", "progress"})
"""Arguments a resumed run may change; any other change would make it a different run."""


def check_resumable(path: Path, args: dict) -> None:
    """Refuse to continue a checkpoint written with settings that change training, naming the first one."""
    saved = json.loads((path / "manifest.json").read_text(encoding="utf-8"))["config"]
    for key, value in args.items():
        if key not in RESUME_MAY_CHANGE and saved.get(key) != value:
            raise UserError(f"{path}: written with {key}={saved.get(key)!r}, this run has {key}={value!r}; resume "
                            f"with the same settings, or remove {path.parent} to start over")


def summary_line(path: Path, result: PPOResult, rows: list[dict], resumed_at: int, seconds: float) -> str:
    """`ppo: <model> (20 updates, reward 0.12 -> 0.34, KL 0.95, held-out 0.81 at step 15, 212 s)`."""
    parts = [f"{result.steps} updates"]
    if resumed_at:
        parts.append(f"resumed at step {resumed_at}")
    if rows:
        parts += [f"reward {rows[0]['reward']:.3f} -> {rows[-1]['reward']:.3f}", f"KL {rows[-1]['kl']:.3f}"]
    if result.evaluations:
        best = max(result.evaluations, key=lambda e: (e["constraints"], e["step"]))
        parts.append(f"held-out {best['constraints']:.3f} at step {best['step']}")
    if result.stopped_early:
        parts.append("stopped early")
    return f"ppo: {path} ({', '.join(parts)}, {seconds:.0f} s)"


def ppo(
    sft: str,
    reward: str,
    prompts: list[str],
    out: str,
    heldout: str = "data/demo/heldout_prompts.jsonl",
    steps: int = 50,
    batch_size: int = 16,
    minibatch_size: int = 8,
    epochs: int = 4,
    max_new_tokens: int = 64,
    max_prompt_tokens: int = 256,
    lr: float = 1e-5,
    value_lr: float = 1e-5,
    kl_coef: float = 0.04,
    kl_estimator: Literal["k1", "k2", "k3"] = "k1",
    kl_target: float | None = None,
    kl_gain: float = 0.1,
    gamma: float = 1.0,
    lam: float = 0.95,
    clip: float = 0.2,
    value_clip: float = 0.2,
    grad_clip: float = 1.0,
    unlikelihood_weight: float = 1.0,
    unlikelihood_n: int = 4,
    greedy_unlikelihood: bool = True,
    eval_every: int = 5,
    patience: int = 3,
    keep: Literal["best", "last"] = "best",
    eval_prompts: int = 64,
    lag: int = 0,
    seed: int = 0,
    checkpoint_every: int = 10,
    keep_checkpoints: int = 2,
    resume: bool = True,
    mlflow: bool = True,
    experiment: str = "openhcx-ppo",
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Align an SFT model with PPO against a reward model; writes <out>/model (a HF model directory).

    Args:
        sft: SFT checkpoint: the policy's start and the frozen reference; its tokenizer is used and copied.
        reward: Reward-model checkpoint (scalar head): scores responses and initialises the value model.
        prompts: jsonl files of conversations (`messages`; a final assistant turn is dropped) to answer.
        out: Run directory: checkpoints/, model/, metrics.jsonl, heldout.jsonl, mlflow.db, manifest.json.
        heldout: Held-out instruction set (prompt records) judged on length and format for early stopping.
        steps: Rollout batches, one PPO update each.
        batch_size: Prompts per rollout batch.
        minibatch_size: Responses per gradient step; must divide batch_size.
        epochs: Passes over each rollout batch.
        max_new_tokens: Longest response sampled.
        max_prompt_tokens: Prompts longer than this are skipped (and counted in the manifest).
        lr: Policy learning rate (AdamW, constant).
        value_lr: Value-model learning rate.
        kl_coef: KL penalty coefficient (the report's 0.04); the start value when kl_target is set.
        kl_estimator: Per-token KL estimate in the reward: k1 (log p - log p_ref), k2 or k3 (Schulman).
        kl_target: Target KL per response for the adaptive controller; null keeps kl_coef fixed.
        kl_gain: The adaptive controller's K_beta.
        gamma: Discount in GAE.
        lam: GAE lambda.
        clip: Policy ratio clip range.
        value_clip: Value clip range around the rollout's values.
        grad_clip: Max gradient norm per model (0: no clipping).
        unlikelihood_weight: Weight of sequence-level unlikelihood on repeated n-grams (0 disables it).
        unlikelihood_n: n of the repeated n-grams the unlikelihood term penalises.
        greedy_unlikelihood: Also continue every rollout prompt greedily and apply unlikelihood to the greedy
            continuations that repeat an n-gram (sampled responses rarely loop; greedy ones do). Logs
            greedy_repetition_rate either way.
        eval_every: Updates between held-out evaluations (one also runs before the first update).
        patience: Stop after this many evaluations in a row below the best.
        keep: Which policy to write: the best-evaluated one, or the last (to compare runs at equal steps).
        eval_prompts: Held-out prompts used per evaluation (the file's first ones).
        lag: Rollout batches the sampler runs ahead of the learner: batch k is sampled by the policy after
            k - lag updates (0: strictly on-policy).
        seed: Seed for sampling, minibatch order and prompt order.
        checkpoint_every: Updates between checkpoints (the last update is always saved; 0: only the last).
        keep_checkpoints: How many recent checkpoints to keep.
        resume: Continue from the newest valid checkpoint in `out` (false: refuse an `out` with checkpoints).
            Only steps, keep, and the checkpoint, output and logging options may differ from the killed run.
        mlflow: Log to MLflow (MLFLOW_TRACKING_URI, else sqlite in `out`).
        experiment: MLflow experiment name.
        progress: Show a progress bar.
        overwrite: Replace an existing <out>/model.
    """
    args = {k: v for k, v in locals().items()}
    started = time.perf_counter()
    config = PPOConfig(steps=steps, batch_size=batch_size, minibatch_size=minibatch_size, epochs=epochs, lr=lr,
                       value_lr=value_lr, kl_coef=kl_coef, kl_estimator=kl_estimator, kl_target=kl_target,
                       kl_gain=kl_gain, gamma=gamma, lam=lam, clip=clip, value_clip=value_clip, grad_clip=grad_clip,
                       unlikelihood_weight=unlikelihood_weight, unlikelihood_n=unlikelihood_n, seed=seed)
    config.validate()
    for key, low in (("eval_every", 1), ("patience", 1), ("eval_prompts", 1), ("max_new_tokens", 1),
                     ("max_prompt_tokens", 1), ("lag", 0), ("checkpoint_every", 0), ("keep_checkpoints", 1)):
        if args[key] < low:
            raise UserError(f"{key}={args[key]}: must be at least {low}")
    out_dir, root = Path(out), Path(out) / "checkpoints"
    if (out_dir / "model").exists() and not overwrite:
        raise UserError(f"{out_dir / 'model'}: output already exists (pass overwrite=true to replace it)")
    if not resume and root.is_dir() and any(root.iterdir()):
        raise UserError(f"{out_dir}: holds checkpoints of an earlier run; pass resume=true or choose another out")
    start = latest_valid(root) if resume else None
    if start is not None:
        check_resumable(start, args)
    from openhcx.tokenizer.tokenizer import ENDOFTURN, EOT, PAD, Tokenizer
    from openhcx.train.distributed import init_world
    from openhcx.train.reward import RewardModel

    tok = Tokenizer.load(sft)
    conversations = read_prompts(prompts)
    records = read_heldout(heldout)[:eval_prompts]
    rendered = [render_prompt(m, tok) for m in conversations]
    train_prompts = [p for p in rendered if len(p) <= max_prompt_tokens]
    if len(train_prompts) < batch_size:
        raise UserError(f"prompts: {len(train_prompts)} prompts of at most max_prompt_tokens={max_prompt_tokens} "
                        f"tokens, fewer than batch_size={batch_size}")
    torch.manual_seed(seed)
    world = init_world()
    policy, model_config = load_checkpoint(sft, device=world.device)
    if model_config.head != "lm":
        raise UserError(f"{sft}: not a language model (its config.json has a scalar head)")
    if model_config.vocab_size < tok.vocab_size:
        raise UserError(f"{sft}: model has {model_config.vocab_size} tokens, its tokenizer {tok.vocab_size}")
    reference = copy.deepcopy(policy).requires_grad_(False)
    value, _ = load_checkpoint(reward, head="scalar", device=world.device)
    scorer = RewardModel.load(reward, device=world.device)
    stops, pad = (tok.id(ENDOFTURN), tok.id(EOT)), tok.id(PAD)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=1.0, stop_ids=stops)
    worker = RolloutWorker(copy.deepcopy(policy), reference, scorer, sampling, pad, decode=tok.decode,
                           greedy=greedy_unlikelihood)
    producer = RolloutProducer(worker, prompt_batches(train_prompts, batch_size, seed), lag=lag, seed=seed)
    held = HeldoutSet(records, [render_prompt(r.messages, tok) for r in records], tok.decode, stops, pad,
                      max_new_tokens)
    from openhcx.train.callbacks import MetricsLog, read_metrics

    out_dir.mkdir(parents=True, exist_ok=True)
    drop_temporaries(root)
    if start is None:  # a new run: no rows or MLflow run of an earlier one carry over
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)
        (out_dir / "mlflow_run.json").unlink(missing_ok=True)
    from openhcx.pipeline.evaluation import checkpoint_callbacks

    inputs = {"sft": str(sft), "reward": str(reward), "prompts": [str(p) for p in prompts], "heldout": str(heldout)}
    callbacks: list = [MetricsLog(out_dir / "metrics.jsonl"), *checkpoint_callbacks()]
    run_config = {**args, "config": asdict(config)}
    if mlflow:
        from openhcx.pipeline.tracking import MLflowLogger

        callbacks.append(MLflowLogger(out_dir, experiment, out_dir.name, run_config, stage="ppo", inputs=inputs))
    run = PPORun(PPOLearner(policy, value, config), producer, held, eval_every, patience, callbacks, progress, world,
                 keep_best=keep == "best", checkpoints=PPOCheckpoints(root, checkpoint_every, keep_checkpoints,
                                                                      model_config, sft, run_config, inputs))
    if start is not None:
        run.restore(start)
    resumed_at = run.step
    result = run.fit()
    with atomic_file(out_dir / "heldout.jsonl", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in result.evaluations)
    summary = {"steps": result.steps, "stopped_early": result.stopped_early, "best_step": result.best_step,
               "skipped_long_prompts": len(rendered) - len(train_prompts),
               "heldout_first": result.evaluations[0] if result.evaluations else None,
               "heldout_best": next((e for e in result.evaluations if e["step"] == result.best_step), None)}
    path = save_checkpoint(result.policy_state, model_config, out_dir / "model", tokenizer_dir=sft,
                           overwrite=overwrite, stage="ppo", inputs=inputs, **summary)
    write_manifest(out_dir, "ppo", run_config, inputs, model=str(path), **summary)
    for cb in callbacks:  # e.g. MLflow attaches the manifest
        cb.on_manifest(run, out_dir / "manifest.json")
    print(summary_line(path, result, read_metrics(out_dir / "metrics.jsonl"), resumed_at,
                       time.perf_counter() - started))
    return path
