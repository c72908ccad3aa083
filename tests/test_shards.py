"""Token shards: exact encoding, FIM and mixture shares as measured, bad input, flat memory, the loader."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from openhcx.data.corpus import iter_documents
from openhcx.data.fim import EOT_ID, MID_ID, PRE_ID, SUF_ID, FimConfig
from openhcx.data.shards import TokenLoader, build_shards, check_compatible
from openhcx.io import UserError
from openhcx.tokenizer.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(demo_corpus, demo_tokenizer, tmp_path_factory) -> Path:
    """The three labels mixed evenly, FIM at the paper's defaults, several shard files per split."""
    out = tmp_path_factory.mktemp("shards") / "shards"
    build_shards(str(demo_corpus), str(demo_tokenizer), str(out), mode="portable", shard_tokens=30_000,
                 max_tokens=120_000, seed=3)
    return out


def split_tokens(shard_dir: Path, split: str) -> np.ndarray:
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    dtype = np.dtype(manifest["dtype"])
    files = manifest["splits"][split]["shards"]
    return np.concatenate([np.fromfile(shard_dir / f["file"], dtype=dtype) for f in files]).astype(np.int64)


def documents(tokens: np.ndarray) -> list[list[int]]:
    ends = np.flatnonzero(tokens == EOT_ID)
    assert ends[-1] == len(tokens) - 1, "the stream ends with <|endoftext|>"
    return [seg.tolist() for seg in np.split(tokens, ends + 1)[:-1]]


def within_binomial(k: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(k - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def unfim(ids: list[int], tok: Tokenizer) -> str:
    """The text of a PSM or SPM sample in document order (an empty-prefix PSM reads the same as SPM)."""
    body = ids[:-1]
    mid = body.index(MID_ID)
    if body[1] == SUF_ID:
        return tok.decode(body[mid + 1 :]) + tok.decode(body[2:mid])
    suf = body.index(SUF_ID)
    return tok.decode(body[1:suf]) + tok.decode(body[mid + 1 :]) + tok.decode(body[suf + 1 : mid])


def test_manifest_records_tokenizer_config_and_counts(shards, demo_tokenizer):
    m = json.loads((shards / "manifest.json").read_text())
    assert m["stage"] == "shards"
    assert m["tokenizer"]["sha256"] == hashlib.sha256((demo_tokenizer / "tokenizer.json").read_bytes()).hexdigest()
    assert m["tokenizer"]["vocab_size"] == 6000 and m["dtype"] == "<u2" and m["eot_id"] == 0
    assert m["config"]["fim"] == {"rate": 0.5, "spm_rate": 0.5, "split": "random"}
    assert m["config"]["mixture"] == pytest.approx({"code": 1 / 3, "en": 1 / 3, "ko": 1 / 3})
    for split in ("train", "heldout", "heldout_fim"):
        s = m["splits"][split]
        tokens = split_tokens(shards, split)
        assert len(tokens) == s["tokens"] == sum(c["tokens"] for c in s["labels"].values())
        assert (tokens == EOT_ID).sum() == s["documents"] == sum(c["documents"] for c in s["labels"].values())
        assert all(f["tokens"] <= 30_000 for f in s["shards"])
    assert len(m["splits"]["train"]["shards"]) == 5  # 120k tokens and a little more, 30k per file
    # Stops at the first document boundary at or after max_tokens.
    assert 120_000 <= m["splits"]["train"]["tokens"] < 120_000 + 20_000


def test_heldout_is_every_heldout_document_encoded_exactly(shards, demo_corpus, demo_tokenizer):
    tok = Tokenizer.load(demo_tokenizer)
    m = json.loads((shards / "manifest.json").read_text())
    docs = list(iter_documents(demo_corpus, "heldout", list(m["config"]["mixture"])))
    expected = [tok.encode(d.text, "portable") + [EOT_ID] for d in docs]
    assert documents(split_tokens(shards, "heldout")) == expected
    assert m["splits"]["heldout"]["fim"] == 0


def test_train_documents_are_corpus_documents_with_fim_as_measured(shards, demo_corpus, demo_tokenizer):
    tok = Tokenizer.load(demo_tokenizer)
    m = json.loads((shards / "manifest.json").read_text())["splits"]["train"]
    corpus = {d.text for d in iter_documents(demo_corpus, "train")}
    docs = documents(split_tokens(shards, "train"))
    fim = [d for d in docs if d[0] == PRE_ID]
    assert len(fim) == m["fim"] and sum(d[1] == 7 for d in fim) >= m["spm"]
    assert all(tok.decode(d[:-1]) in corpus for d in docs if d[0] != PRE_ID)
    assert all(unfim(d, tok) in corpus for d in fim)
    assert within_binomial(m["fim"], m["documents"], 0.5) and within_binomial(m["spm"], m["fim"], 0.5)
    assert m["fim_rate"] == m["fim"] / m["documents"] and m["spm_share"] == m["spm"] / m["fim"]
    print(f"train: {m['documents']} documents, FIM rate {m['fim_rate']:.3f}, SPM share {m['spm_share']:.3f}")


def test_mixture_shares_follow_the_weights(shards):
    labels = json.loads((shards / "manifest.json").read_text())["splits"]["train"]["labels"]
    for label, c in labels.items():
        assert c["share"] == pytest.approx(1 / 3, abs=0.03), (label, c)  # about one document of slack
        assert c["target_share"] == pytest.approx(1 / 3)
    print("train shares", {label: round(c["share"], 4) for label, c in labels.items()})


def test_weighted_mixture_upsamples_up_to_the_cap(demo_corpus, demo_tokenizer, tmp_path):
    # ko is the smaller label in tokens here: it is repeated until en has been read in full.
    m = build_shards(str(demo_corpus), str(demo_tokenizer), str(tmp_path / "a"), mixture={"ko": 1, "en": 1},
                     mode="portable")["splits"]["train"]["labels"]
    assert m["en"]["passes"] == 1.0 and 1.0 < m["ko"]["passes"] <= 4.0
    assert m["ko"]["share"] == pytest.approx(0.5, abs=0.02) and "code" not in m
    capped = build_shards(str(demo_corpus), str(demo_tokenizer), str(tmp_path / "b"), mixture={"ko": 1, "en": 1},
                          mode="portable", max_repeats=1)["splits"]["train"]["labels"]
    assert capped["ko"]["passes"] == 1.0 and capped["en"]["passes"] == 1.0
    assert capped["ko"]["share"] < 0.5 - 0.02  # the cap binds: ko falls short of its weight, as recorded
    assert capped["ko"]["tokens"] == pytest.approx(m["ko"]["tokens"] / m["ko"]["passes"], rel=0.02)
    print(f"ko passes {m['ko']['passes']:.2f} share {m['ko']['share']:.3f}; capped share {capped['ko']['share']:.3f}")


def test_infill_set_is_the_heldout_code(shards, demo_corpus):
    m = json.loads((shards / "manifest.json").read_text())
    records = [json.loads(line) for line in (shards / "infill.jsonl").read_text().splitlines()]
    code = [d.text for d in iter_documents(demo_corpus, "heldout", ["code"])]
    assert [r["prefix"] + r["middle"] + r["suffix"] for r in records] == code
    assert m["infill"]["documents"] == len(code) == m["splits"]["heldout_fim"]["fim"]


def test_exact_mode_and_seed_reach_the_shards(demo_corpus, demo_tokenizer, tmp_path):
    tok = Tokenizer.load(demo_tokenizer)
    kwargs = dict(mixture={"code": 1}, max_tokens=5_000, fim=FimConfig(rate=0.5, split="thirds"))
    build_shards(str(demo_corpus), str(demo_tokenizer), str(tmp_path / "a"), mode="exact", **kwargs)
    build_shards(str(demo_corpus), str(demo_tokenizer), str(tmp_path / "b"), mode="exact", **kwargs)
    build_shards(str(demo_corpus), str(demo_tokenizer), str(tmp_path / "c"), mode="exact", seed=1, **kwargs)
    docs = [d.text for d in iter_documents(demo_corpus, "heldout", ["code"])]
    assert documents(split_tokens(tmp_path / "a", "heldout")) == [tok.encode(t, "exact") + [EOT_ID] for t in docs]
    a, b, c = (split_tokens(tmp_path / x, "train") for x in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ---------------------------------------------------------------- bad input


def test_unknown_label_in_mixture_names_the_key(demo_corpus, demo_tokenizer, tmp_path):
    with pytest.raises(UserError, match=r"mixture\.ja: label not in the corpus \(it has code, en, ko\)"):
        build_shards(str(demo_corpus), str(demo_tokenizer), str(tmp_path / "s"), mixture={"ko": 1, "ja": 1})
    with pytest.raises(UserError, match=r"mixture\.ko: weight -1"):
        build_shards(str(demo_corpus), str(demo_tokenizer), str(tmp_path / "s"), mixture={"ko": -1})
    assert not (tmp_path / "s").exists()


def test_missing_inputs_name_the_file(demo_corpus, demo_tokenizer, tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'nope'}: not a corpus directory"):
        build_shards(str(tmp_path / "nope"), str(demo_tokenizer), str(tmp_path / "s"))
    with pytest.raises(UserError, match=f"{tmp_path / 'notok' / 'tokenizer.json'}: tokenizer.json not found"):
        build_shards(str(demo_corpus), str(tmp_path / "notok"), str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def test_existing_output_is_kept(shards, demo_corpus, demo_tokenizer):
    before = (shards / "manifest.json").read_bytes()
    with pytest.raises(UserError, match="already exists"):
        build_shards(str(demo_corpus), str(demo_tokenizer), str(shards))
    assert (shards / "manifest.json").read_bytes() == before


def test_shards_from_another_tokenizer_are_refused(shards, demo_tokenizer, tmp_path):
    check_compatible(shards, demo_tokenizer)  # the tokenizer they were built with
    other = tmp_path / "other"
    shutil.copytree(demo_tokenizer, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:-1]  # a different (still valid) tokenizer
    (other / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match=f"{shards / 'manifest.json'}: shards were encoded with a tokenizer .*"
                                        f"{other / 'tokenizer.json'}"):
        check_compatible(shards, other)
    with pytest.raises(UserError, match="not a shard directory"):
        check_compatible(tmp_path, demo_tokenizer)


# ---------------------------------------------------------------- memory


@pytest.mark.slow
def test_memory_is_flat_in_corpus_size(demo_corpus, demo_tokenizer, tmp_path):
    """Peak memory of a build over a corpus 7 times larger: Python's peak is the same, RSS grows by less
    than the extra token ids alone would take."""
    script = textwrap.dedent("""
        import re, sys, tracemalloc
        from openhcx.data.shards import build_shards
        tracemalloc.start()
        build_shards(sys.argv[1], sys.argv[2], sys.argv[3], mixture={"en": 1}, mode="portable", seed=0)
        # VmHWM is this process's own peak (ru_maxrss would carry the forking parent's peak across exec).
        hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
        print(int(hwm) * 1024, tracemalloc.get_traced_memory()[1])
    """)
    rss, traced, tokens = {}, {}, {}
    # The smaller build already fills the tokenizer's word cache and the allocator's arenas (a one-off ~3 MB).
    for k in (2, 14):
        corpus = bigger_corpus(demo_corpus, tmp_path / f"corpus{k}", k)
        out = tmp_path / f"shards{k}"
        run = subprocess.run([sys.executable, "-c", script, str(corpus), str(demo_tokenizer), str(out)],
                             capture_output=True, text=True, cwd=ROOT, timeout=300,
                             env={**os.environ, "RAYON_NUM_THREADS": "1"})  # no per-thread arenas
        assert run.returncode == 0, run.stderr
        rss[k], traced[k] = map(int, run.stdout.split()[-2:])
        tokens[k] = json.loads((out / "manifest.json").read_text())["splits"]["train"]["tokens"]
    assert tokens[14] == pytest.approx(7 * tokens[2], rel=0.01)  # FIM draws differ between passes
    # Holding the documents would cost ~4 bytes a token as text, 2 as uint16 ids, 36 as Python ints.
    extra = tokens[14] - tokens[2]
    print(f"tokens {tokens[2]} -> {tokens[14]}: peak RSS {rss[2] / 2**20:.1f} -> {rss[14] / 2**20:.1f} MiB, "
          f"Python peak {traced[2] / 2**20:.2f} -> {traced[14] / 2**20:.2f} MiB")
    assert abs(traced[14] - traced[2]) < 0.05 * extra
    assert rss[14] - rss[2] < 2 * extra


def bigger_corpus(corpus: Path, out: Path, k: int) -> Path:
    """The same corpus with its English shards listed k times: k times the documents, no more disk."""
    shutil.copytree(corpus, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"]["train"]["en"] *= k
    manifest["labels"]["en"]["train"] *= k
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


# ---------------------------------------------------------------- loader


def batches(loader: TokenLoader, n: int, batch_size: int, seq_len: int):
    return [loader.next_batch(batch_size, seq_len) for _ in range(n)]


def same(a, b) -> bool:
    fields = ("inputs", "targets", "doc_ids")
    return all(torch.equal(getattr(x, f), getattr(y, f)) for x, y in zip(a, b) for f in fields)


def test_batches_are_deterministic_shifted_and_int64(shards):
    a = batches(TokenLoader(shards, seed=1, chunk_tokens=1000), 5, 4, 64)
    b = batches(TokenLoader(shards, seed=1, chunk_tokens=1000), 5, 4, 64)
    c = batches(TokenLoader(shards, seed=2, chunk_tokens=1000), 5, 4, 64)
    assert same(a, b) and not same(a, c)
    for batch in a:
        assert batch.inputs.shape == batch.targets.shape == batch.doc_ids.shape == (4, 64)
        assert batch.inputs.dtype == batch.targets.dtype == batch.doc_ids.dtype == torch.int64
        assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])


def test_without_reordering_windows_are_the_stream_and_seq_len_can_change(shards):
    stream = split_tokens(shards, "train")
    loader = TokenLoader(shards, chunk_tokens=len(stream) + 1)  # one chunk: the epoch order is the file order
    first, second = loader.next_batch(2, 32), loader.next_batch(2, 64)
    windows = [stream[0:33], stream[32:65], stream[64:129], stream[128:193]]
    rows = [*zip(first.inputs, first.targets), *zip(second.inputs, second.targets)]
    for (inputs, targets), window in zip(rows, windows):
        assert inputs.tolist() == window[:-1].tolist() and targets.tolist() == window[1:].tolist()
    assert loader.state_dict()["offset"] == 192


def test_rank_slices_stack_into_the_single_process_batch(shards):
    single = TokenLoader(shards, seed=5, chunk_tokens=700)
    ranks = [TokenLoader(shards, seed=5, rank=r, world_size=3, chunk_tokens=700) for r in range(3)]
    for seq_len in (48, 48, 96, 16):
        whole = single.next_batch(6, seq_len)
        parts = [loader.next_batch(2, seq_len) for loader in ranks]
        for field in ("inputs", "targets", "doc_ids"):
            assert torch.equal(torch.cat([getattr(p, field) for p in parts]), getattr(whole, field))
    assert all(loader.state_dict() == single.state_dict() for loader in ranks)


def test_resume_gives_the_same_batches_across_epochs(shards):
    loader = TokenLoader(shards, split="heldout", seed=9, chunk_tokens=512)
    tokens = loader.tokens
    steps = math.ceil(tokens / (8 * 100)) + 2  # enough to cross into the second epoch
    batches(loader, steps // 2, 8, 100)
    state = json.loads(json.dumps(loader.state_dict()))  # survives a JSON round trip
    expected = batches(loader, steps, 8, 100) + [loader.next_batch(3, 300)]
    assert loader.state_dict()["epoch"] >= 1
    resumed = TokenLoader(shards, split="heldout", seed=9, chunk_tokens=512)
    resumed.load_state_dict(state)
    assert same(batches(resumed, steps, 8, 100) + [resumed.next_batch(3, 300)], expected)
    with pytest.raises(UserError, match="loader state: seed is 9, this loader has 10"):
        TokenLoader(shards, split="heldout", seed=10, chunk_tokens=512).load_state_dict(state)


def test_an_epoch_reads_every_token_once(shards):
    stream = split_tokens(shards, "heldout")
    seq_len = 100
    loader = TokenLoader(shards, split="heldout", seed=4, chunk_tokens=333)
    n_windows = (len(stream) - 1) // seq_len
    seen = [loader.next_batch(1, seq_len) for _ in range(n_windows)]
    assert loader.state_dict()["epoch"] == 0
    loader.next_batch(1, seq_len)
    assert loader.state_dict()["epoch"] == 1
    read = np.concatenate([seen[0].inputs[0, :1].numpy()] + [b.targets[0].numpy() for b in seen])
    left_out = Counter(stream.tolist()) - Counter(read.tolist())
    assert not Counter(read.tolist()) - Counter(stream.tolist())  # nothing read twice or invented
    assert sum(left_out.values()) == len(stream) - (n_windows * seq_len + 1) < seq_len


def test_doc_ids_start_a_run_after_each_eot_and_at_chunk_edges(shards):
    chunk, seq_len = 150, 128
    loader = TokenLoader(shards, seed=6, chunk_tokens=chunk)
    for step in range(20):
        offset = loader.state_dict()["offset"]
        batch = loader.next_batch(4, seq_len)
        for row in range(4):
            inputs, ids = batch.inputs[row].tolist(), batch.doc_ids[row].tolist()
            start = offset + row * seq_len
            new_run = [t > 0 and (inputs[t - 1] == EOT_ID or (start + t) % chunk == 0) for t in range(seq_len)]
            assert ids == np.cumsum(new_run).tolist()
    # A document's own <|endoftext|> stays in its run: it is the document's last input.
    batch = TokenLoader(shards, chunk_tokens=10**9).next_batch(1, 4096)
    inputs, ids = batch.inputs[0], batch.doc_ids[0]
    eots = (inputs == EOT_ID).nonzero().flatten().tolist()
    assert eots and all(ids[t] == ids[t - 1] if t else ids[t] == 0 for t in eots)
    assert all(ids[t + 1] == ids[t] + 1 for t in eots if t + 1 < 4096)


def test_loader_bad_arguments(shards):
    with pytest.raises(UserError, match="split: 'dev' not in"):
        TokenLoader(shards, split="dev")
    with pytest.raises(UserError, match="rank: 2 is not in"):
        TokenLoader(shards, rank=2, world_size=2)
    with pytest.raises(UserError, match="exceed the"):
        TokenLoader(shards, split="heldout_fim").next_batch(1, 10**7)
