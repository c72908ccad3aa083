"""Checkpoints as Hugging Face model directories, and HF or GGUF Llama models into OpenHCX.

Our parameter names already are LlamaForCausalLM's, so a checkpoint is config.json (LlamaConfig fields),
model.safetensors and generation_config.json, plus the tokenizer files: `transformers` loads it with no
custom code, and a HF Llama directory loads back with the same code. Weights are read only from
safetensors, never from pickle. GGUF files go through transformers' GGUF reader (dequantised to fp32).
Not handled: other architectures (Qwen biases, Gemma norms), RoPE scaling variants, sharded writing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from openhcx.io import UserError, atomic_dir, require_file, write_json, write_manifest
from openhcx.model.transformer import ModelConfig, Transformer

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ARCHITECTURES = {"lm": "LlamaForCausalLM", "scalar": "LlamaForSequenceClassification"}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_config(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """config.json content: LlamaConfig fields, readable by transformers 4.x (rope_theta) and 5.x."""
    scalar = config.head == "scalar"
    out = {
        "architectures": [ARCHITECTURES[config.head]],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_embeddings and not scalar,
        "initializer_range": config.init_std,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }
    if scalar:
        out |= {"num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    return out


def config_from_hf(hf: dict, source: str | Path = "config.json") -> ModelConfig:
    """ModelConfig from a Llama config.json; refuses what our model cannot compute exactly."""

    def need(key):
        if key not in hf:
            raise UserError(f"{source}: missing key {key!r}")
        return hf[key]

    if hf.get("model_type") != "llama":
        raise UserError(f"{source}: model_type={hf.get('model_type')!r}, only 'llama' is supported")
    for key, want in (("attention_bias", False), ("mlp_bias", False), ("hidden_act", "silu")):
        if hf.get(key, want) != want:
            raise UserError(f"{source}: {key}={hf[key]!r} is not supported (need {want!r})")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UserError(f"{source}: rope_type={rope.get('rope_type', rope.get('type'))!r} is not supported")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    dim, n_heads = need("hidden_size"), need("num_attention_heads")
    if hf.get("head_dim") not in (None, dim // n_heads):
        raise UserError(f"{source}: head_dim={hf['head_dim']} differs from hidden_size/num_attention_heads")
    arch = (hf.get("architectures") or ["LlamaForCausalLM"])[0]
    head = "scalar" if arch == ARCHITECTURES["scalar"] else "lm"
    if head == "scalar" and hf.get("num_labels", len(hf.get("id2label", {0: 0}))) != 1:
        raise UserError(f"{source}: a scalar head needs num_labels=1")

    def token(key):
        value = hf.get(key)
        return value[0] if isinstance(value, list) else value  # several eos ids: the first is ours

    return ModelConfig(
        vocab_size=need("vocab_size"), dim=dim, n_layers=need("num_hidden_layers"), n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, ffn_dim=need("intermediate_size"),
        max_seq_len=hf.get("max_position_embeddings", 4096), rope_theta=float(theta),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        head=head, init_std=float(hf.get("initializer_range", 0.02)),
        bos_token_id=token("bos_token_id"), eos_token_id=token("eos_token_id"), pad_token_id=token("pad_token_id"),
    )


def weights_for_saving(model: Transformer | dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """HF's layout: a tied output matrix is stored once, as the embedding."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    if config.head == "lm" and config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def copy_tokenizer(tokenizer_dir: str | Path, directory: Path) -> list[str]:
    src = require_file(tokenizer_dir, "tokenizer directory")
    found = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if not any(name in found for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise UserError(f"{src}: no tokenizer.json, tokenizer.model or vocab.json to copy")
    for name in found:
        shutil.copyfile(src / name, directory / name)
    return found


def write_checkpoint(model: Transformer | dict[str, Tensor], config: ModelConfig, directory: str | Path,
                     tokenizer_dir: str | Path | None = None) -> None:
    """Write the HF files into an existing directory (a trainer adds its state beside them, atomically)."""
    directory = Path(directory)
    weights = weights_for_saving(model, config)
    dtype = next(iter(weights.values())).dtype
    save_file(weights, str(directory / WEIGHTS), metadata={"format": "pt"})
    write_json(directory / "config.json", hf_config(config, dtype))
    generation = {k: getattr(config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    write_json(directory / "generation_config.json", {k: v for k, v in generation.items() if v is not None})
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, directory)


def save_checkpoint(model: Transformer | dict[str, Tensor], config: ModelConfig, path: str | Path,
                    tokenizer_dir: str | Path | None = None, *, overwrite: bool = False,
                    stage: str = "checkpoint", inputs: dict | None = None, **results) -> Path:
    """A complete HF model directory with manifest.json at `path`, or nothing if anything fails.

    `model` may be the module or its full state dict (what FSDP gathers before saving).
    """
    with atomic_dir(path, overwrite=overwrite) as tmp:
        write_checkpoint(model, config, tmp, tokenizer_dir)
        write_manifest(tmp, stage, asdict(config), inputs or {}, **results)
    return Path(path)


def read_config(path: str | Path) -> ModelConfig:
    file = require_file(Path(path) / "config.json", "checkpoint config")
    try:
        hf = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{file}: line {e.lineno}: invalid JSON ({e.msg})") from e
    return config_from_hf(hf, file)


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """All tensors of model.safetensors, or of the shards its index names. Never unpickles anything."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        files = [path / WEIGHTS]
    elif (path / WEIGHTS_INDEX).is_file():
        index = json.loads((path / WEIGHTS_INDEX).read_text(encoding="utf-8"))
        files = [path / name for name in sorted(set(index["weight_map"].values()))]
    else:
        raise UserError(f"{path}: no {WEIGHTS} or {WEIGHTS_INDEX} (weights are loaded only from safetensors)")
    state = {}
    for file in files:
        with safe_open(str(require_file(file, "weights shard")), framework="pt") as f:
            state |= {name: f.get_tensor(name) for name in f.keys()}
    return state


def build_from_state(config: ModelConfig, state: dict[str, Tensor], source: str | Path,
                     head: str | None = None, dtype: torch.dtype | None = None,
                     device: str | torch.device = "cpu") -> tuple[Transformer, ModelConfig]:
    """A model holding exactly these tensors; only a head switched by `head` may be missing (it starts fresh)."""
    switched = head is not None and head != config.head
    config = config.replace(head=head) if switched else config
    state = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in state.items()}
    with torch.device("meta"):
        model = Transformer(config)
    tied = {"lm_head.weight"} if config.head == "lm" and config.tie_embeddings else set()
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in tied},
                                                strict=False, assign=True)
    replaced = {"lm_head.weight", "score.weight"} if switched else set()
    bad = sorted((set(missing) - tied - replaced) | (set(unexpected) - replaced))
    if bad:
        kind = "missing" if bad[0] in missing else "unexpected"
        raise UserError(f"{source}: weights do not match config.json ({kind} tensor {bad[0]!r})")
    model.tie_weights()
    for name in set(missing) - tied:
        module = getattr(model, name.split(".")[0])
        fresh = torch.empty_like(module.weight, device=device, dtype=model.model.norm.weight.dtype)
        module.weight = torch.nn.Parameter(fresh.normal_(0.0, config.init_std))
    model.init_rope()
    return model, config


def load_checkpoint(path: str | Path, *, head: str | None = None, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu") -> tuple[Transformer, ModelConfig]:
    """Model and config from a HF Llama directory (ours or anyone's), in its saved dtype unless `dtype`.

    head="scalar" on a language-model checkpoint gives the reward-model start: the SFT body plus a freshly
    initialised scalar head (seed torch beforehand for a reproducible head).
    """
    config = read_config(path)
    return build_from_state(config, read_weights(path), path, head=head, dtype=dtype, device=device)


def load_gguf(path: str | Path):
    """transformers' LlamaForCausalLM (dequantised to fp32) and tokenizer from a local GGUF file, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = require_file(path, "GGUF file")
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                        local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"{path}: cannot read as a Llama GGUF model ({e})") from e
    return hf_model, tokenizer


def from_transformers(hf_model) -> tuple[Transformer, ModelConfig]:
    """Our model with the weights of a transformers Llama model (the tensors are copied, not shared)."""
    config = config_from_hf(hf_model.config.to_dict(), f"{type(hf_model).__name__}.config")
    state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    return build_from_state(config, state, type(hf_model).__name__)


def import_hf(src: str, out: str, overwrite: bool = False) -> ModelConfig:
    """Import a local HF Llama directory or GGUF file as an OpenHCX checkpoint, keeping its tokenizer.

    Args:
        src: HF model directory (config.json, safetensors, tokenizer files) or a .gguf file.
        out: Checkpoint directory to write.
        overwrite: Replace an existing output directory.
    """
    src = require_file(src, "model to import")
    if src.is_dir():
        model, config = load_checkpoint(src)
        save_checkpoint(model, config, out, tokenizer_dir=src, overwrite=overwrite, stage="import-hf",
                        inputs={"source": str(src)})
        return config
    if src.suffix != ".gguf":
        raise UserError(f"{src}: expected a HF model directory or a .gguf file")
    hf_model, tokenizer = load_gguf(src)
    model, config = from_transformers(hf_model)
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer.save_pretrained(tok_dir)
        save_checkpoint(model, config, out, tokenizer_dir=tok_dir, overwrite=overwrite, stage="import-hf",
                        inputs={"source": str(src)})
    return config


def export(checkpoint: str, out: str, dtype: str = "bfloat16", tokenizer: str | None = None,
           overwrite: bool = False) -> ModelConfig:
    """Write a release copy of a checkpoint: HF files only (no trainer state), weights cast to `dtype`.

    Args:
        checkpoint: Checkpoint directory (ours, or any HF Llama directory with safetensors).
        out: Directory to write.
        dtype: Weight dtype: float32, bfloat16 or float16.
        tokenizer: Tokenizer directory to include; default: the checkpoint's own tokenizer files.
        overwrite: Replace an existing output directory.
    """
    if dtype not in DTYPES:
        raise UserError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    model, config = load_checkpoint(checkpoint, dtype=DTYPES[dtype])
    save_checkpoint(model, config, out, tokenizer_dir=tokenizer or checkpoint, overwrite=overwrite,
                    stage="export", inputs={"checkpoint": str(checkpoint), "tokenizer": tokenizer}, dtype=dtype)
    return config
