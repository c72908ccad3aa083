"""Train the morpheme-aware byte-level BPE (RECIPE §2), or the plain byte-level BPE it is compared with.

Morpheme awareness lives entirely in what the trainer sees: each Korean document arrives as its morpheme
pieces, and HF's BPE trainer never merges across pieces, so no learned merge crosses a morpheme boundary.
The byte alphabet is always complete, so every string stays encodable. Not a BPE implementation of our own.
"""

from __future__ import annotations

import sys

from itertools import islice
from pathlib import Path
from typing import Iterator

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

from openhcx.io import UserError, atomic_dir, write_json, write_manifest
from openhcx.tokenizer.morphemes import segment_many
from openhcx.tokenizer.tokenizer import (
    ASSISTANT, CHAT_TEMPLATE, ENDOFTURN, EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, PAD, SPECIAL_TOKENS,
    SPLIT_PATTERN, USER,
)

BYTE_ALPHABET = pre_tokenizers.ByteLevel.alphabet()
MIN_VOCAB = len(SPECIAL_TOKENS) + len(BYTE_ALPHABET)


def empty_tokenizer() -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def tokenizer_config(max_length: int, morpheme_aware: bool) -> dict:
    """tokenizer_config.json for `transformers.AutoTokenizer`, chat template included (RECIPE §5).

    `morpheme_aware` is ours (transformers ignores it): exact-mode encoding needs it wherever the files go.
    """
    added = {
        str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                 "normalized": False, "single_word": False}
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": EOT,
        "pad_token": PAD,
        "additional_special_tokens": [USER, ASSISTANT, ENDOFTURN, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX],
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "morpheme_aware": morpheme_aware,
    }


def train_tokenizer(
    corpus: str,
    out: str,
    vocab_size: int = 100_000,
    morpheme_aware: bool = True,
    min_frequency: int = 2,
    labels: list[str] | None = None,
    max_docs: int | None = None,
    workers: int = 1,
    model_max_length: int = 4096,
    overwrite: bool = False,
) -> Path:
    """Train a tokenizer on a built corpus and write a Hugging Face tokenizer directory.

    Args:
        corpus: Corpus directory written by `openhcx corpus build` (its train split is read).
        out: Output directory (tokenizer.json, tokenizer_config.json, manifest.json).
        vocab_size: Target vocabulary including the 32 reserved specials and 256 byte tokens.
        morpheme_aware: Pre-segment Korean into morphemes so that no merge crosses a morpheme boundary.
        min_frequency: Minimum pair count for a merge.
        labels: Only documents with these corpus labels (default: all).
        max_docs: Stop after this many documents (default: all).
        workers: Processes running the Korean analyzer.
        model_max_length: Context length recorded in tokenizer_config.json.
        overwrite: Replace an existing output directory.
    """
    from openhcx.data.corpus import iter_documents

    if vocab_size < MIN_VOCAB:
        raise UserError(
            f"vocab_size={vocab_size} is smaller than the {len(BYTE_ALPHABET)} byte tokens plus "
            f"{len(SPECIAL_TOKENS)} specials ({MIN_VOCAB})"
        )
    texts = (d.text for d in islice(iter_documents(corpus, "train", labels), max_docs))
    stats = {"documents": 0, "characters": 0}

    def counted(it: Iterator[str]) -> Iterator[str]:
        for t in tqdm(it, desc="tokenizer: reading", unit="doc", disable=None):
            stats["documents"] += 1
            stats["characters"] += len(t)
            yield t

    sequences = segment_many(counted(texts), workers) if morpheme_aware else counted(texts)
    tok = empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=BYTE_ALPHABET,
        show_progress=sys.stderr.isatty(),  # its bars print to stdout even when that is a log file
    )
    with atomic_dir(out, overwrite) as tmp:
        tok.train_from_iterator(sequences, trainer=trainer)
        if stats["documents"] == 0:
            raise UserError(f"{corpus}: no training documents" + (f" with labels {labels}" if labels else ""))
        tok.save(str(tmp / "tokenizer.json"))
        write_json(tmp / "tokenizer_config.json", tokenizer_config(model_max_length, morpheme_aware))
        write_json(tmp / "special_tokens_map.json", {"eos_token": EOT, "pad_token": PAD})
        config = dict(vocab_size=vocab_size, morpheme_aware=morpheme_aware, min_frequency=min_frequency,
                      labels=labels, max_docs=max_docs, model_max_length=model_max_length)
        write_manifest(tmp, "tokenizer", config, {"corpus": str(corpus)}, morpheme_aware=morpheme_aware,
                       actual_vocab_size=tok.get_vocab_size(), special_tokens=SPECIAL_TOKENS, **stats)
    print(f"tokenizer: {out} ({tok.get_vocab_size():,} tokens, {'morpheme-aware' if morpheme_aware else 'plain'} "
          f"BPE, trained on {stats['documents']:,} documents, {stats['characters']:,} characters)")
    return Path(out)
