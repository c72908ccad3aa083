"""Training checkpoints: a Hugging Face model directory plus the trainer state for an exact resume.

Layout of `<out>/checkpoints/step-00000100/`:
    config.json, model.safetensors, generation_config.json, tokenizer files   (the HF model, full weights)
    trainer/optimizer.safetensors + trainer/optimizer.json                  (AdamW moments; hyperparameters)
    trainer/rank-<r>.json                                                     (RNG states, data loader position)
    manifest.json                                                             (step, config, sha256 of every file)

The directory appears only when complete (written under a temporary name, then renamed). A directory whose
files do not match the manifest's checksums is named in a warning and skipped, and resume falls back to the
newest one that verifies. The learning-rate schedule is a pure function of the step, so the step is its whole
state. No pickle anywhere: tensors go to safetensors, the rest to JSON.
Not here: sharded (per-rank) weight files, resuming on a different world size (refused: the data loader's
per-rank positions would not line up), asynchronous writing.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from openhcx.io import UserError, atomic_dir, write_json, write_manifest
from openhcx.model.hf import read_weights, write_checkpoint
from openhcx.model.transformer import ModelConfig
from openhcx.train.distributed import barrier, broadcast_object
from openhcx.train.trainer import Callback, StepMetrics, Trainer

STATE_DIR = "trainer"
NAME = re.compile(r"^step-(\d{8})$")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def checkpoint_path(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories under `root`, oldest first (temporary ones are never listed)."""
    root = Path(root)
    found = [p for p in root.iterdir() if p.is_dir() and NAME.match(p.name)] if root.is_dir() else []
    return sorted(found, key=lambda p: p.name)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def problem(path: Path) -> str | None:
    """Why `path` is not a usable checkpoint, or None when every file matches its recorded checksum."""
    manifest = path / "manifest.json"
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return "manifest.json is missing"
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
        return "manifest.json is unreadable or lists no files"
    for rel, digest in files.items():
        file = path / rel
        if not file.is_file():
            return f"{rel} is missing"
        if sha256(file) != digest:
            return f"{rel} does not match its sha256 (truncated or corrupted)"
    return None


def latest_valid(root: str | Path) -> Path | None:
    """The newest checkpoint whose files verify; newer broken ones are named in a warning and skipped."""
    found = checkpoints(root)
    for path in reversed(found):
        reason = problem(path)
        if reason is None:
            return path
        warnings.warn(f"{path}: not a valid checkpoint ({reason}); falling back to an older one", stacklevel=2)
    if found:
        raise UserError(f"{Path(root)}: none of the {len(found)} checkpoints verifies; remove them to start over")
    return None


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (keyed 'param/name') for safetensors; everything else for JSON."""
    tensors, scalars = {}, {}
    for param, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(param, {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict] = {param: dict(values) for param, values in meta["scalars"].items()}
    for key, value in tensors.items():
        param, name = key.rsplit("/", 1)
        state.setdefault(param, {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save(trainer: Trainer, path: Path, model_config: ModelConfig, tokenizer_dir: str | Path | None,
         run_config: dict, inputs: dict, stage: str) -> Path:
    """Write a checkpoint of the trainer's current step (collective: every rank must call it).

    stage: the training stage that writes it (pretrain, sft, reward); the manifest says "<stage>-checkpoint".
    """
    world, model = trainer.world, trainer.inner_model
    weights = get_model_state_dict(model, options=FULL)  # gathered from FSDP shards on every rank
    optimizer = get_optimizer_state_dict(model, trainer.optimizer, options=FULL)
    local = {"rng": rng_state(), "loader": trainer.loader.state_dict()}
    if not world.is_main:
        tmp = Path(broadcast_object(None, world))
        write_json(tmp / STATE_DIR / f"rank-{world.rank}.json", local)
        barrier(world)
        barrier(world)
        return path
    with atomic_dir(path, overwrite=True) as tmp:
        (tmp / STATE_DIR).mkdir()
        broadcast_object(str(tmp), world)
        write_json(tmp / STATE_DIR / "rank-0.json", local)
        write_checkpoint(weights, model_config, tmp, tokenizer_dir)
        tensors, meta = split_optimizer_state(optimizer)
        save_file(tensors, str(tmp / STATE_DIR / "optimizer.safetensors"))
        write_json(tmp / STATE_DIR / "optimizer.json", meta)
        barrier(world)  # the other ranks' files are in place
        files = {p.relative_to(tmp).as_posix(): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_manifest(tmp, f"{stage}-checkpoint", run_config, inputs, step=trainer.step, world_size=world.size,
                       files=files)
    barrier(world)
    return path


def restore(trainer: Trainer, path: Path, model_config: ModelConfig) -> None:
    """Load weights, optimizer, RNG and data position written by `save`; continue from its step."""
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    if manifest["world_size"] != trainer.world.size:
        raise UserError(f"{path}: written by {manifest['world_size']} rank(s), this run has {trainer.world.size}; "
                        "resume with the same --nproc_per_node x nodes")
    saved = ModelConfig(**manifest["config"]["model_config"])
    if saved != model_config:
        key = next(k for k in vars(saved) if getattr(saved, k) != getattr(model_config, k))
        raise UserError(f"{path}: model.{key}={getattr(saved, key)!r} in the checkpoint, "
                        f"{getattr(model_config, key)!r} now")
    model = trainer.inner_model
    weights = read_weights(path)
    if model_config.head == "lm" and model_config.tie_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    set_model_state_dict(model, weights, options=FULL)
    meta = json.loads((path / STATE_DIR / "optimizer.json").read_text(encoding="utf-8"))
    tensors = load_file(str(path / STATE_DIR / "optimizer.safetensors"))
    set_optimizer_state_dict(model, trainer.optimizer, join_optimizer_state(tensors, meta), options=FULL)
    local = json.loads((path / STATE_DIR / f"rank-{trainer.world.rank}.json").read_text(encoding="utf-8"))
    set_rng_state(local["rng"])
    trainer.loader.load_state_dict(local["loader"])
    trainer.step = manifest["step"]


def prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints (at least one)."""
    for path in checkpoints(root)[:-max(1, keep)]:
        shutil.rmtree(path, ignore_errors=True)


def drop_temporaries(root: Path) -> None:
    """Half-written checkpoints a killed run left behind (only call while no save is running)."""
    for tmp in Path(root).glob(".step-*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


class Checkpointer(Callback):
    """Saves every `every` steps and at the last step, then tells the other callbacks."""

    def __init__(self, root: Path, every: int, keep: int, model_config: ModelConfig,
                 tokenizer_dir: str | Path | None, run_config: dict, inputs: dict, stage: str):
        self.root, self.every, self.keep, self.stage = Path(root), every, keep, stage
        self.model_config, self.tokenizer_dir, self.run_config, self.inputs = (model_config, tokenizer_dir,
                                                                                run_config, inputs)

    def on_step_end(self, trainer: Trainer, metrics: StepMetrics) -> None:
        due = self.every > 0 and trainer.step % self.every == 0
        if not (due or trainer.step == trainer.config.steps):
            return
        path = save(trainer, checkpoint_path(self.root, trainer.step), self.model_config, self.tokenizer_dir,
                    self.run_config, self.inputs, self.stage)
        if trainer.world.is_main:
            prune(self.root, self.keep)
        trainer.checkpoint_saved(path)
