"""Train the morpheme-aware byte-level BPE (RECIPE §2), or the plain byte-level BPE it is compared with.

Morpheme awareness lives entirely in what the trainer sees: each Korean document arrives as its morpheme
pieces, and HF's BPE trainer never merges across pieces, so no learned merge crosses a morpheme boundary.
The byte alphabet is always complete, so every string stays encodable. Not a BPE implementation of our own.

Memory: documents stream through; the trainer keeps one count per distinct pre-tokenized word (a morpheme
piece, an English word, a code identifier), about 1.1-1.3 KB each at its peak (measured: 1.5 million distinct
words, 1.6 GB; the demo corpus's 18,000, 24 MB), so a corpus larger than memory trains as long as its distinct
words fit. When they do not, train on a sample: `labels` picks segments and `max_docs` keeps the first
documents in reading order (the labels in the order given, each label's shard files in order), which is a fair
sample only of a corpus built from shuffled input, and fills one label before the next.

The morpheme analysis is the slow part (tens of thousands of characters a second per core): `workers`
spreads it over processes here, `cluster` over a Ray cluster (one task per shard file); training itself
runs on this machine either way.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

from openhcx.data.cluster import Cluster, Task, run_tasks, summaries_table, work_folder
from openhcx.io import UserError, atomic_dir, text_lines, write_json, write_manifest
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
    cluster: Cluster | None = None,
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
        workers: Processes running the Korean analyzer on this machine (without `cluster`).
        model_max_length: Context length recorded in tokenizer_config.json.
        overwrite: Replace an existing output directory.
        cluster: Run the morpheme analysis on Ray (docs/scale.md), one task per train shard file read; this
            machine then trains on the tasks' pieces in the same order, so tokenizer.json is byte-identical to
            the one built here. The work folder holds the pieces (about the corpus's size) until the end; a
            rerun after a failure runs only unfinished tasks. Allowed with morpheme_aware=false, but then
            the tasks only pass the texts through (plain BPE pre-tokenizes in the trainer).
    """
    if vocab_size < MIN_VOCAB:
        raise UserError(
            f"vocab_size={vocab_size} is smaller than the {len(BYTE_ALPHABET)} byte tokens plus "
            f"{len(SPECIAL_TOKENS)} specials ({MIN_VOCAB})"
        )
    config = dict(vocab_size=vocab_size, morpheme_aware=morpheme_aware, min_frequency=min_frequency,
                  labels=labels, max_docs=max_docs, model_max_length=model_max_length)
    with atomic_dir(out, overwrite) as tmp:
        if cluster is None:
            from openhcx.data.corpus import iter_documents

            stats = {"documents": 0, "characters": 0}
            texts = (d.text for d in islice(iter_documents(corpus, "train", labels), max_docs))
            sequences = _sequences(tqdm(texts, desc="tokenizer: reading", unit="doc", disable=None), stats,
                                   morpheme_aware, workers)
            tok = _train(sequences, vocab_size, min_frequency)  # `stats` is counted as the trainer reads
            extra = {}
        else:
            work = work_folder(cluster, out)
            tasks, summaries = _segment_on_cluster(corpus, labels, max_docs, morpheme_aware, work, cluster)
            stats = {k: sum(s[k] for s in summaries.values()) for k in ("documents", "characters")}
            tok = _train(_stored(work / "tasks" / t.key / PIECES for t in tasks), vocab_size, min_frequency)
            extra = {"tasks": summaries_table(summaries)}
        if stats["documents"] == 0:
            raise UserError(f"{corpus}: no training documents" + (f" with labels {labels}" if labels else ""))
        tok.save(str(tmp / "tokenizer.json"))
        write_json(tmp / "tokenizer_config.json", tokenizer_config(model_max_length, morpheme_aware))
        write_json(tmp / "special_tokens_map.json", {"eos_token": EOT, "pad_token": PAD})
        write_manifest(tmp, "tokenizer", config, {"corpus": str(corpus)}, morpheme_aware=morpheme_aware,
                       actual_vocab_size=tok.get_vocab_size(), special_tokens=SPECIAL_TOKENS, **stats, **extra)
    if cluster is not None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"tokenizer: {out} ({tok.get_vocab_size():,} tokens, {'morpheme-aware' if morpheme_aware else 'plain'} "
          f"BPE, trained on {stats['documents']:,} documents, {stats['characters']:,} characters)")
    return Path(out)


def _sequences(texts: Iterable[str], stats: dict, morpheme_aware: bool, workers: int = 1) -> Iterator[str | list[str]]:
    """What the trainer sees of each text: its morpheme pieces, or the text itself; counts documents and
    characters into `stats` as they pass."""
    def counted(it: Iterable[str]) -> Iterator[str]:
        for t in it:
            stats["documents"] += 1
            stats["characters"] += len(t)
            yield t

    return segment_many(counted(texts), workers) if morpheme_aware else counted(texts)


def _train(sequences: Iterable[str | list[str]], vocab_size: int, min_frequency: int) -> HFTokenizer:
    tok = empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=BYTE_ALPHABET,
        show_progress=sys.stderr.isatty(),  # its bars print to stdout even when that is a log file
    )
    tok.train_from_iterator(sequences, trainer=trainer)
    return tok


# ---------------------------------------------------------------- on a cluster

PIECES = "pieces.jsonl.gz"  # a task's output: what the trainer sees of each document, one JSON value a line


def _segment_on_cluster(corpus: str, labels: list[str] | None, max_docs: int | None, morpheme_aware: bool,
                        work: Path, cluster: Cluster) -> tuple[list[Task], dict[str, dict]]:
    """One task per train shard file read, in reading order, each writing its PIECES into `work`."""
    from openhcx.data.corpus import iter_documents

    next(iter_documents(corpus, "train", labels), None)  # its checks: a corpus directory, known labels
    manifest = json.loads((Path(corpus) / "manifest.json").read_text(encoding="utf-8"))
    if "documents" not in manifest:
        raise UserError(f"{corpus}: its manifest has no documents per shard file (built by an older version); "
                        "rebuild the corpus to train on a cluster")
    shards = _train_shards(manifest, manifest["labels"] if labels is None else labels, max_docs)
    tasks = [Task(f"{i:05d}-{Path(name).name.removesuffix('.jsonl.gz')}", (Path(corpus) / name).stat().st_size,
                  (str(Path(corpus) / name), take, morpheme_aware)) for i, (name, take) in enumerate(shards)]
    # Keyed to the corpus build, not to its files' times: a shard file fixed by hand reruns only its task.
    job = {"corpus": str(Path(corpus).resolve()), "built": manifest["created"], "morpheme_aware": morpheme_aware,
           "shards": shards}
    return tasks, run_tasks("tokenizer", _segment_shard, tasks, work, cluster, job)


def _train_shards(manifest: dict, labels: list[str], max_docs: int | None) -> list[tuple[str, int]]:
    """The train shard files iter_documents reads, in its order, each with the documents to take from it."""
    shards, left = [], max_docs
    for label in labels:
        for name, n in zip(manifest["shards"]["train"].get(label, []), manifest["documents"]["train"].get(label, [])):
            if left == 0:
                return shards
            shards.append((name, n if left is None else min(n, left)))
            left = None if left is None else left - shards[-1][1]
    return shards


def _segment_shard(args: tuple, out: Path) -> dict:
    """A cluster task: what the trainer sees of the first `take` documents of one corpus shard file."""
    from openhcx.data.corpus import read_shard

    path, take, morpheme_aware = args
    stats = {"documents": 0, "characters": 0}
    with gzip.open(out / PIECES, "wt", encoding="utf-8", compresslevel=1) as f:
        texts = (doc.text for doc in read_shard(Path(path)))
        for sequence in _sequences(islice(texts, take), stats, morpheme_aware):
            f.write(json.dumps(sequence, ensure_ascii=False) + "\n")
    return stats


def _stored(files: Iterable[Path]) -> Iterator[str | list[str]]:
    """The tasks' PIECES, in task order: the sequences the single-machine build feeds the trainer."""
    for path in files:
        for _, line in text_lines(path):
            yield json.loads(line)
