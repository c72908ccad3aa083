"""The one training loop: AdamW, warmup + cosine schedule, gradient accumulation, clipping, precision.

Every stage that trains (pretraining, SFT, reward model) runs this loop with its own loss function; the
cross-cutting concerns (checkpoints, progress bar, metrics file, MLflow, loss curve) are callbacks, so the
loop itself stays one page. Scale-out is `torchrun` plus `distributed.wrap`; the loop only all-reduces token
counts, loss sums and FLOPs. Not here: data loading, checkpoint formats, logging backends.

Gradient accumulation weighs every scored token equally across micro-batches and ranks: each micro-batch
contributes loss_sum / (tokens in the whole global batch), times the world size because DDP and FSDP
average gradients over ranks. The result equals one large batch on one process.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from openhcx.io import UserError
from openhcx.model.transformer import ModelConfig
from openhcx.train.distributed import World, all_reduce_sum, gradient_sync, unwrap
from openhcx.train.losses import IGNORE_INDEX

# Dense bf16 tensor-core peaks (vendor datasheets) for MFU; other devices are measured (`measured_peak_flops`).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every stage; `validate` names the key a user must fix."""

    steps: int
    batch_size: int  # sequences per optimizer step, all ranks together, at `seq_len`
    micro_batch_size: int  # sequences per rank per forward/backward
    seq_len: int
    long_seq_len: int | None = None  # context-length schedule: the last `long_fraction` of steps
    long_fraction: float = 0.1
    lr: float = 3e-4
    min_lr: float = 3e-5  # the cosine decays to this floor
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still logged)
    compile: bool = False

    def validate(self, world_size: int, max_seq_len: int) -> None:
        for name in ("steps", "batch_size", "micro_batch_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name}={getattr(self, name)}: must be positive")
        if not 0 < self.lr or not 0 <= self.min_lr <= self.lr:
            raise UserError(f"min_lr={self.min_lr}, lr={self.lr}: need 0 <= min_lr <= lr and lr > 0")
        if not 0 <= self.long_fraction < 1:
            raise UserError(f"long_fraction={self.long_fraction}: must be in [0, 1)")
        for name in ("seq_len", "long_seq_len"):
            length = getattr(self, name)
            if length is not None and length > max_seq_len:
                raise UserError(f"{name}={length} exceeds model.max_seq_len={max_seq_len} (the RoPE tables cover "
                                f"max_seq_len positions): raise model_overrides.max_seq_len or shorten {name}")
        for step in {0, long_start(self)} - {self.steps}:
            p = phase_at(step, self)
            if p.batch_size % (p.micro_batch_size * world_size):
                key = "batch_size" if p.seq_len == self.seq_len else "long_seq_len"
                raise UserError(f"{key}: {p.batch_size} sequences of {p.seq_len} tokens per step do not split "
                                f"into micro-batches of {p.micro_batch_size} on {world_size} rank(s)")


@dataclass(frozen=True)
class Phase:
    """Shape of one step's global batch."""

    seq_len: int
    batch_size: int
    micro_batch_size: int


def long_start(config: TrainConfig) -> int:
    """First step of the long-context phase (`steps` when there is none)."""
    if config.long_seq_len is None:
        return config.steps
    return config.steps - round(config.steps * config.long_fraction)


def phase_at(step: int, config: TrainConfig) -> Phase:
    """Short sequences first, long ones for the last steps; tokens per step stay the same across phases."""
    if step < long_start(config):
        return Phase(config.seq_len, config.batch_size, config.micro_batch_size)
    ratio = config.long_seq_len / config.seq_len
    return Phase(config.long_seq_len, max(1, round(config.batch_size / ratio)),
                 max(1, round(config.micro_batch_size / ratio)))


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to `lr` over `warmup_steps`, then cosine decay to `min_lr` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - 1 - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: norms and embeddings are left alone (decay would shrink rare tokens' rows)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            skip = p.ndim < 2 or name.endswith("norm.weight") or "embed_tokens" in name
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(params, device: torch.device, lr: float, betas: tuple[float, float] = (0.9, 0.95),
          weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW as every stage builds it: the fused kernel where the device has one (one pass per tensor, 5-8x
    faster than foreach on CPU; HF Trainer's default on torch >= 2.8)."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=1e-8, weight_decay=weight_decay,
                             fused=device.type in ("cpu", "cuda"))


def measured_peak_flops(device: torch.device) -> float:
    """Peak FLOP/s of one device, the denominator of MFU: the datasheet bf16 figure for known GPUs, else measured.

    Measured as the fastest square matmul (fp32 on CPU, where training computes in fp32; bf16 on other GPUs),
    doubling the size while it gets faster (one thread peaks on cache-sized blocks, many threads only on large
    ones) up to runs of 50 ms. Each size is warmed up, then repeated, keeping its best run. On CPU this uses
    `torch.get_num_threads()` threads, the ones the run computes with, so call it after the thread count is set.
    The best and not a typical run, because a peak taken low (another process on the cores for a moment, a size
    too small for the threads) would let MFU pass 100%.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_BF16_FLOPS.items():
            if key in name:
                return flops
    n, largest, dtype = (256, 8192, torch.float32) if device.type == "cpu" else (2048, 16384, torch.bfloat16)
    best = 0.0
    while n <= largest:
        flops = matmul_flops(n, dtype, device)
        if flops <= best:  # past the size where this device peaks
            break
        best = flops
        if 2 * n**3 / flops > 0.05:  # runs of 50 ms hide call overheads; the next size's take 8x as long
            break
        n *= 2
    return best


def matmul_flops(n: int, dtype: torch.dtype, device: torch.device) -> float:
    """Best FLOP/s of an (n x n) @ (n x n) product: one warm-up run, then about 2 GFLOP of timed runs (at least 5)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)
    best = math.inf
    for i in range(1 + max(5, 2**31 // n**3)):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # run 0 is the warm-up: thread pool start, kernel choice, first touch of the memory
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def training_flops(config: ModelConfig, seq_len: int, tokens: int, scored: float) -> float:
    """Training FLOPs (forward + backward) of `tokens` tokens in rows of `seq_len`, `scored` of them scored.

    `ModelConfig.flops_per_token` (PaLM's convention) less work this model does not do, so that MFU stays a
    true fraction of the peak: the lm head on tokens whose target is IGNORE_INDEX (prompts, padding: the
    fused loss skips them), and the attention of a query to the keys after it (causal: query t meets t keys,
    (seq_len + 1) / 2 on average, where the convention counts seq_len).
    """
    attention = 12.0 * config.n_layers * config.n_heads * config.head_dim
    head = 6.0 * config.vocab_size * config.dim if config.head == "lm" else 0.0
    rest = config.flops_per_token(seq_len) - attention * seq_len - head
    return (rest + attention * (seq_len + 1) / 2) * tokens + head * scored


@dataclass(frozen=True)
class Shape:
    """What one rank's batch computed: real (unpadded) tokens, padded tokens, and the width of its rows."""

    real: int
    padded: int
    width: int


@dataclass(frozen=True)
class StepMetrics:
    step: int  # optimizer steps completed
    loss: float  # mean per scored token over the global batch
    lr: float
    grad_norm: float  # before clipping
    seq_len: int
    tokens: int  # scored tokens in the global batch
    tokens_per_s: float
    mfu: float  # model FLOPs utilisation (`training_flops`) against `peak_flops` per device
    seconds: float


class Callback:
    """Hooks the loop calls on every rank; override the ones needed (rank-0-only work checks `trainer.world`)."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, metrics: StepMetrics) -> None: ...

    def on_checkpoint(self, trainer: Trainer, path) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...

    def on_manifest(self, trainer: Trainer, path) -> None: ...


LossFn = Callable[[nn.Module, object], tuple[Tensor, Tensor]]  # (model, micro-batch) -> (loss sum, tokens)


class Trainer:
    """Owns the model, optimizer and data position; `fit` runs steps from `self.step` to `config.steps`.

    `loader.next_batch(rows, seq_len)` returns this rank's `rows` of the step's global batch: a dataclass
    of (rows, T) tensors with a `targets` field (IGNORE_INDEX where no loss is taken); `state_dict` and
    `load_state_dict` make its position part of a checkpoint. `model_config` sizes the FLOPs behind MFU.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, loader, loss_fn: LossFn, world: World,
                 model_config: ModelConfig, peak_flops: float, callbacks: Sequence[Callback] = ()):
        self.model, self.config, self.loader, self.loss_fn, self.world = model, config, loader, loss_fn, world
        self.model_config, self.peak_flops, self.callbacks = model_config, peak_flops, list(callbacks)
        self.optimizer = adamw(param_groups(model, config.weight_decay), world.device, config.lr,
                               (config.beta1, config.beta2))
        self.step = 0
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if world.device.type == "cuda"
                         else contextlib.nullcontext())

    def fit(self) -> None:
        self._emit("on_train_start")
        while self.step < self.config.steps:
            metrics = self.train_step()
            self._emit("on_step_end", metrics)
        self._emit("on_train_end")

    def checkpoint_saved(self, path) -> None:
        """Called by whoever wrote a checkpoint, so other callbacks (tracking, eval triggers) can react."""
        self._emit("on_checkpoint", path)

    def manifest_written(self, path) -> None:
        """Called by the stage once its manifest is written (after training ended), e.g. to attach it to MLflow."""
        self._emit("on_manifest", path)

    def batch_shape(self, phase: Phase) -> Shape:
        """This rank's share of the step: the phase's full rows (a loader of variable batches overrides it)."""
        tokens = phase.batch_size // self.world.size * phase.seq_len
        return Shape(real=tokens, padded=tokens, width=phase.seq_len)

    def train_step(self) -> StepMetrics:
        start = time.perf_counter()
        phase = phase_at(self.step, self.config)
        batch = self.loader.next_batch(phase.batch_size // self.world.size, phase.seq_len)
        micro = [to_device(m, self.world.device) for m in split_rows(batch, phase.micro_batch_size)]
        scored = sum((m.targets != IGNORE_INDEX).sum() for m in micro).to(torch.float64)
        count = all_reduce_sum(scored.clone(), self.world)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.world.device)
        for i, m in enumerate(micro):
            with gradient_sync(self.model, sync=i == len(micro) - 1):
                with self.autocast:
                    total, _ = self.loss_fn(self.model, m)
                (total * (self.world.size / count.float())).backward()
            loss_sum += total.detach().double()
        lr = lr_at(self.step, self.config)
        grad_norm = self._clip()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        shape = self.batch_shape(phase)
        flops = training_flops(self.model_config, shape.width, shape.padded, scored.item())
        local = torch.tensor([shape.real, flops], dtype=torch.float64, device=loss_sum.device)
        loss_sum, real, flops = all_reduce_sum(torch.cat([loss_sum.view(1), local]), self.world).tolist()
        count = count.item()
        self.step += 1
        seconds = time.perf_counter() - start
        return StepMetrics(step=self.step, loss=loss_sum / max(count, 1), lr=lr, grad_norm=grad_norm,
                           seq_len=shape.width, tokens=int(count), tokens_per_s=real / seconds,
                           mfu=flops / seconds / (self.peak_flops * self.world.size), seconds=seconds)

    def _clip(self) -> float:
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor reduced across ranks
            norm = norm.full_tensor()
        return norm.item()

    def _emit(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    @property
    def inner_model(self) -> nn.Module:
        """The Transformer itself (inside a DDP wrapper, or the FSDP2-sharded module)."""
        return unwrap(self.model)


def split_rows(batch, rows: int) -> list:
    """Consecutive slices of `rows` rows of every tensor field of a batch dataclass."""
    names = [f.name for f in fields(batch)]
    n = getattr(batch, names[0]).shape[0]
    return [replace(batch, **{k: getattr(batch, k)[i:i + rows] for k in names}) for i in range(0, n, rows)]


def to_device(batch, device: torch.device):
    return replace(batch, **{f.name: getattr(batch, f.name).to(device, non_blocking=True) for f in fields(batch)})
