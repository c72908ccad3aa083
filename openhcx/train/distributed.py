"""Process group setup and model wrapping for `torchrun`: DDP or FSDP2, gloo on CPU, nccl on CUDA.

A plain `python` launch is a world of one and wraps nothing, so the single-process run and the scaled run
are the same code. Not here: tensor/pipeline parallelism, or initialising huge models on the meta device
(every rank builds the full model from the same seed, then FSDP2 shards it).
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from openhcx.io import UserError

PARALLEL = ("ddp", "fsdp")


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if size == 1:
        return World(0, 1, device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return World(dist.get_rank(), size, device)


@contextmanager
def joined() -> Iterator[World]:
    """This process's place in the job for the length of a stage, leaving the process group on the way out.

    After a clean finish every rank collects garbage and waits for the others before the group is destroyed:
    otherwise FSDP2's module state could keep the group alive until interpreter exit, where gloo's threads die
    unjoined and a rank aborts (`terminate called without an active exception`, about one 2-rank CPU run in
    ten; none in 65 runs since). After an error it leaves at once: the other ranks may never reach a barrier.
    """
    world, clean = init_world(), False
    try:
        yield world
        clean = True
    finally:
        if world.size > 1 and dist.is_initialized():
            if clean:
                gc.collect()
                dist.barrier()
            dist.destroy_process_group()


def wrap(model: nn.Module, parallel: str, world: World) -> nn.Module:
    """DDP replicates the model; FSDP2 shards every block's parameters, then the rest, across ranks."""
    if parallel not in PARALLEL:
        raise UserError(f"parallel={parallel!r}: expected one of {PARALLEL}")
    if world.size == 1:
        return model
    if parallel == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[world.device.index]
                                                   if world.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The Transformer inside a DDP wrapper (FSDP2 shards in place and needs no unwrapping)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gradient_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(sync)
    return nullcontext()


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def broadcast_object(obj, world: World):
    """rank 0's `obj` on every rank."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
