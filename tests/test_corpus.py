"""Corpus building: readers, exact manifest counts, stable held-out split, errors, flat memory."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openhcx.data.corpus import Source, build_corpus, clean_text, in_heldout, iter_documents
from openhcx.io import UserError

ROOT = Path(__file__).resolve().parents[1]



def prose(seed: int, n_words: int = 30) -> str:
    """A document every filter keeps: distinct words, no keywords, over 100 characters."""
    return " ".join(f"d{seed}w{j}" for j in range(n_words))


def write_jsonl(path: Path, records: list[dict], gz: bool = False) -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def all_docs(corpus: Path) -> list:
    return [d for split in ("train", "heldout") for d in iter_documents(corpus, split)]


CODE = "\n".join(["int f(int x) {", "    if (x > 0) {", "        return x;", "    }", "    return 0;", "}"] * 3)


@pytest.fixture
def sources(tmp_path) -> tuple[list[Source], dict[str, set[str]]]:
    """One source per reader and option, and the texts each label must end up with."""
    txt = tmp_path / "txt"
    (txt / "sub").mkdir(parents=True)
    (txt / "a.txt").write_text(prose(1) + "\n", encoding="utf-8")
    (txt / "b.txt").write_text("짧은 글\n", encoding="utf-8")  # too_short
    (txt / "sub" / "c.txt").write_bytes(b"\xef\xbb\xbf" + prose(2).encode() + b"\r\n")  # BOM, CRLF
    (txt / ".hidden.txt").write_text("never read", encoding="utf-8")
    paras = tmp_path / "paras.txt"
    paras.write_text(f"{prose(3)}\n\n{prose(4)}\n \n\nshort\n", encoding="utf-8")
    repeated = "\n".join([prose(6, 5)] * 5)  # duplicate_lines
    pii = prose(5) + " 문의 hong.gildong@naver.com 또는 010-1234-5678"
    jsonl = write_jsonl(tmp_path / "ko.jsonl", [{"body": pii}, {}, {"body": repeated}, {"body": prose(7), "x": 1}])
    jsonl.write_text(jsonl.read_text(encoding="utf-8").replace("{}", " "), encoding="utf-8")  # a blank line
    gz = write_jsonl(tmp_path / "en.jsonl.gz", [{"text": prose(8)}, {"text": "Call +1 415 555 0123 now. " + prose(9)}], gz=True)
    parquet = tmp_path / "en.parquet"
    texts = [prose(10 + i) for i in range(4)] + ["tiny"]
    pq.write_table(pa.table({"text": texts, "n": list(range(5))}), parquet, row_group_size=2)
    code = write_jsonl(tmp_path / "code.jsonl", [{"text": CODE}, {"text": "x = 1"}])
    decomposed = tmp_path / "nfd.txt"
    decomposed.write_text(unicodedata.normalize("NFD", "한국어 문서입니다. ") + prose(14), encoding="utf-8")
    srcs = [
        Source(str(txt), "ko"),
        Source(str(paras), "ko", split_blank_lines=True),
        Source(str(jsonl), "ko", text_field="body"),
        Source(str(decomposed), "ko"),
        Source(str(gz), "en"),
        Source(str(parquet), "en"),
        Source(str(code), "code"),
    ]
    expected = {
        "ko": {prose(1), prose(2), prose(3), prose(4), prose(5) + " 문의 <EMAIL>@naver.com 또는", prose(7), "한국어 문서입니다. " + prose(14)},
        "en": {prose(8), "Call  now. " + prose(9), *texts[:4]},
        "code": {CODE},
    }
    return srcs, expected


def test_build_reads_every_format_and_counts_exactly(sources, tmp_path):
    srcs, expected = sources
    out = tmp_path / "corpus"
    manifest = build_corpus(srcs, str(out), heldout_fraction=0.0)
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8")) == manifest

    docs = all_docs(out)
    assert {label: {d.text for d in docs if d.label == label} for label in expected} == expected
    assert len(docs) == sum(map(len, expected.values()))
    assert {d.source for d in docs if d.label == "en"} == {srcs[4].path, srcs[5].path}
    assert str(tmp_path / "txt" / "sub" / "c.txt") in {d.source for d in docs}

    counts = [(s["read"], s["kept"], {k: v for k, v in s["dropped"].items() if v}, s["emails"], s["phones"]) for s in manifest["sources"]]
    assert counts == [
        (3, 2, {"too_short": 1}, 0, 0),  # a.txt, b.txt, sub/c.txt; .hidden.txt skipped
        (3, 2, {"too_short": 1}, 0, 0),  # two paragraphs and "short"
        (3, 2, {"duplicate_lines": 1}, 1, 1),  # blank line skipped
        (1, 1, {}, 0, 0),
        (2, 2, {}, 0, 1),
        (5, 4, {"too_short": 1}, 0, 0),
        (2, 1, {"too_short": 1}, 0, 0),  # the code document keeps its repeated lines
    ]
    labels = manifest["labels"]
    assert list(labels) == ["code", "en", "ko"]
    assert [labels[l]["read"] for l in ("code", "en", "ko")] == [2, 7, 10]
    assert [labels[l]["kept"] for l in ("code", "en", "ko")] == [1, 6, 7]
    assert labels["ko"]["dropped"] == {
        "too_short": 2, "duplicate_lines": 1, "duplicate_line_chars": 0, "top_ngram": 0,
        "duplicate_ngram": 0, "advertising": 0, "hate_speech": 0,
    }
    for label, texts in expected.items():
        assert labels[label]["chars"] == sum(map(len, texts))
        assert (labels[label]["train"], labels[label]["heldout"]) == (len(texts), 0)
    assert manifest["totals"]["read"] == 19 and manifest["totals"]["kept"] == 14
    assert (manifest["totals"]["emails"], manifest["totals"]["phones"]) == (1, 2)
    assert manifest["shards"] == {
        "train": {"code": ["train/code-00000.jsonl.gz"], "en": ["train/en-00000.jsonl.gz"], "ko": ["train/ko-00000.jsonl.gz"]},
        "heldout": {},
    }
    assert manifest["inputs"][srcs[0].path] == {"files": 3, "bytes": sum(p.stat().st_size for p in (tmp_path / "txt").rglob("[!.]*.txt"))}
    assert manifest["stage"] == "corpus" and manifest["config"]["filters"]["min_chars"] == 100
    assert [d.label for d in iter_documents(out, labels=["en"])] == ["en"] * 6


def test_clean_text_normalises():
    assert clean_text(unicodedata.normalize("NFD", " 한글\r\n둘째\x00줄\r ")) == "한글\n둘째줄"


def test_heldout_split_is_stable_and_order_independent(tmp_path):
    texts = [prose(i) for i in range(200)]
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])
    back = write_jsonl(tmp_path / "reversed.jsonl", [{"text": t} for t in reversed(texts)])
    heldout = lambda corpus: sorted(d.text for d in iter_documents(corpus, "heldout"))  # noqa: E731

    first = build_corpus([Source(str(path), "en")], str(tmp_path / "a"), heldout_fraction=0.2)
    build_corpus([Source(str(path), "en")], str(tmp_path / "b"), heldout_fraction=0.2)
    build_corpus([Source(str(back), "en")], str(tmp_path / "c"), heldout_fraction=0.2)
    expected = sorted(t for t in texts if in_heldout(t, 0.2))
    assert heldout(tmp_path / "a") == heldout(tmp_path / "b") == heldout(tmp_path / "c") == expected
    assert first["totals"]["heldout"] == len(expected) == 34  # 0.2 of 200 is 40 +- 5.7
    assert first["totals"]["train"] == 166
    # The hash is fixed: changing it would silently move documents between splits.
    assert [in_heldout(t, 0.5) for t in ("a", "b", "c", "d")] == [True, False, True, False]
    assert not in_heldout("a", 0.0)


def test_shards_rotate_every_shard_docs(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": prose(i)} for i in range(5)])
    manifest = build_corpus([Source(str(path), "ko-KR")], str(tmp_path / "out"), heldout_fraction=0.0, shard_docs=2)
    shards = manifest["shards"]["train"]["ko-KR"]
    assert shards == [f"train/ko-KR-0000{i}.jsonl.gz" for i in range(3)]
    sizes = [len(gzip.decompress((tmp_path / "out" / s).read_bytes()).splitlines()) for s in shards]
    assert sizes == [2, 2, 1]
    assert [d.text for d in iter_documents(tmp_path / "out")] == [prose(i) for i in range(5)]


def test_glob_source(tmp_path):
    for i in range(3):
        write_jsonl(tmp_path / f"part{i}.jsonl.gz", [{"text": prose(i)}], gz=True)
    (tmp_path / "notes.md").write_text("not a source")
    manifest = build_corpus([Source(str(tmp_path / "part*.jsonl.gz"), "en")], str(tmp_path / "out"), heldout_fraction=0.0)
    assert manifest["inputs"][str(tmp_path / "part*.jsonl.gz")]["files"] == 3
    assert manifest["totals"]["kept"] == 3


def bad_input_cases(tmp_path: Path) -> list[tuple[Source, str]]:
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "ok"}\n{"text": "caf\xe9"}\n')
    (tmp_path / "latin1.txt").write_bytes(b"first line\ncaf\xe9\n")
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": "unterminated}\n')
    (tmp_path / "list.jsonl").write_text('["text"]\n')
    (tmp_path / "nokey.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    (tmp_path / "number.jsonl").write_text('{"text": 5}\n')
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "data.csv").write_text("text\nhello\n")
    (tmp_path / "truncated.jsonl.gz").write_bytes(gzip.compress(b'{"text": "ok"}\n' * 100)[:-20])
    (tmp_path / "fake.parquet").write_text("not parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    pq.write_table(pa.table({"text": ["x", None]}), tmp_path / "null.parquet")
    (tmp_path / "emptydir").mkdir()
    d = str(tmp_path)
    return [
        (Source(f"{d}/latin1.jsonl", "ko"), r"latin1.jsonl:3: not valid UTF-8 \(byte 0xe9 at column 14\)"),
        (Source(f"{d}/latin1.txt", "ko"), r"latin1.txt:2: not valid UTF-8 \(byte 0xe9 at column 4\)"),
        (Source(f"{d}/broken.jsonl", "ko"), r"broken.jsonl:2: malformed JSON"),
        (Source(f"{d}/list.jsonl", "ko"), r"list.jsonl:1: expected a JSON object, got list"),
        (Source(f"{d}/nokey.jsonl", "ko"), r"nokey.jsonl:2: missing text field 'text' \(keys: body\)"),
        (Source(f"{d}/number.jsonl", "ko"), r"number.jsonl:1: text field 'text' is int, not a string"),
        (Source(f"{d}/empty.jsonl", "ko"), r"empty.jsonl: no documents"),
        (Source(f"{d}/missing.jsonl", "ko"), r"missing.jsonl: source not found"),
        (Source(f"{d}/missing-*.jsonl", "ko"), r"missing-\*.jsonl: no files match"),
        (Source(f"{d}/emptydir", "ko"), r"emptydir: directory holds no files"),
        (Source(f"{d}/data.csv", "ko"), r"data.csv: unknown format"),
        (Source(f"{d}/data.csv", "ko", format="csv"), r"unknown format 'csv'"),
        (Source(f"{d}/truncated.jsonl.gz", "ko"), r"truncated.jsonl.gz:\d+: corrupt gzip data"),
        (Source(f"{d}/fake.parquet", "ko"), r"fake.parquet: not a readable parquet file"),
        (Source(f"{d}/nocol.parquet", "ko"), r"nocol.parquet: missing text field 'text' \(columns: body\)"),
        (Source(f"{d}/null.parquet", "ko"), r"null.parquet: row 2: missing text field 'text' \(null\)"),
        (Source(f"{d}/broken.jsonl", "ko/x"), r"sources\[1\].label: 'ko/x'"),
    ]


def test_bad_input_names_file_and_line_and_leaves_no_output(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": prose(i)} for i in range(3)])
    out = tmp_path / "out" / "corpus"
    for bad, message in bad_input_cases(tmp_path):
        # The good source is fully written into the temporary directory before the bad one fails.
        with pytest.raises(UserError, match=message):
            build_corpus([Source(str(good), "en"), bad], str(out), shard_docs=1)
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_failed_rebuild_keeps_the_previous_corpus(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": prose(i)} for i in range(3)])
    out = tmp_path / "corpus"
    build_corpus([Source(str(good), "en")], str(out))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(UserError, match="already exists"):
        build_corpus([Source(str(good), "en")], str(out))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        build_corpus([Source(str(good), "en"), Source(str(tmp_path / "bad.jsonl"), "ko")], str(out), overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "corpus", "good.jsonl"]


def test_everything_filtered_out_and_bad_arguments(tmp_path):
    short = write_jsonl(tmp_path / "short.jsonl", [{"text": "hi"}, {"text": "there"}])
    with pytest.raises(UserError, match=r"all 2 documents were dropped by the filters \(too_short: 2\)"):
        build_corpus([Source(str(short), "en")], str(tmp_path / "out"))
    with pytest.raises(UserError, match="no sources"):
        build_corpus([], str(tmp_path / "out"))
    with pytest.raises(UserError, match=r"heldout_fraction: 1.0 is not in \[0, 1\)"):
        build_corpus([Source(str(short), "en")], str(tmp_path / "out"), heldout_fraction=1.0)
    assert not (tmp_path / "out").exists()


def test_iter_documents_errors(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": prose(1)}])
    build_corpus([Source(str(path), "en")], str(tmp_path / "c"))
    with pytest.raises(UserError, match="not a corpus directory"):
        next(iter_documents(tmp_path))
    with pytest.raises(UserError, match="split: 'dev'"):
        next(iter_documents(tmp_path / "c", "dev"))
    with pytest.raises(UserError, match=r"labels: ko not in .* \(it has en\)"):
        next(iter_documents(tmp_path / "c", labels=["ko"]))
    assert list(iter_documents(tmp_path / "c", "heldout")) == []


def test_real_petitions_mostly_kept(tmp_path, shared_path):
    path = shared_path("corpora", "korean-petitions", "petitions_2019-04")
    manifest = build_corpus([Source(str(path), "ko", text_field="content", format="jsonl")], str(tmp_path / "c"))
    totals = manifest["totals"]
    dropped = {k: v for k, v in totals["dropped"].items() if v}
    print(f"petitions_2019-04: read {totals['read']}, kept {totals['kept']}, dropped {dropped}, "
          f"e-mails {totals['emails']}, phones {totals['phones']}, chars {totals['chars']}")
    assert totals["read"] == 494
    assert totals["kept"] / totals["read"] > 0.95  # real prose passes; only very short or repetitive ones go
    assert totals["dropped"]["advertising"] == totals["dropped"]["hate_speech"] == 0


def random_texts(docs: int, seed: int = 0):
    """Documents of 100 random words of 10 to 20 letters (about 1.6 kB) that every filter keeps."""
    import random

    rng = random.Random(seed)
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(10, 20))) for _ in range(20000)]
    return (" ".join(rng.choices(vocab, k=100)) for _ in range(docs))


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest) across exec.
PEAK_RSS = """
import re, sys
from pathlib import Path
from openhcx.data.corpus import Source, build_corpus
manifest = build_corpus([Source(sys.argv[1], "en")], sys.argv[2], shard_docs=1000)
peak_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(manifest["totals"]["chars"] / 2**20, peak_kib / 1024)
"""


def test_memory_stays_flat_as_input_grows(tmp_path):
    """Peak RSS of a whole build (read, clean, filter, write shards) does not grow with the input."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS is read from /proc/self/status (Linux only)")
    runs = []
    for docs in (1000, 10000):
        path = tmp_path / f"in{docs}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in random_texts(docs))
        result = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, str(path), str(tmp_path / f"out{docs}")],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )
        runs.append(tuple(map(float, result.stdout.splitlines()[-1].split())))  # after the summary line
    (small, small_rss), (big, big_rss) = runs
    print(f"text {small:.1f} MiB -> peak RSS {small_rss:.1f} MiB; text {big:.1f} MiB -> peak RSS {big_rss:.1f} MiB")
    assert big - small > 13
    # Holding the documents would add the 13+ MiB of extra text; streaming adds allocator noise only.
    assert big_rss - small_rss < 2


ARROW_PEAK = """
import sys
import pyarrow as pa
from pathlib import Path
from openhcx.data.corpus import read_parquet
chars = sum(len(t) for t in read_parquet(Path(sys.argv[1])))
print(chars / 2**20, pa.default_memory_pool().max_memory() / 2**20)
"""


def test_parquet_reader_holds_a_batch_not_the_file(tmp_path):
    """One 15 MiB row group: arrow's default read-ahead would buffer all of it."""
    path = tmp_path / "one-group.parquet"
    pq.write_table(pa.table({"text": list(random_texts(10000))}), path, row_group_size=10**6)
    result = subprocess.run([sys.executable, "-c", ARROW_PEAK, str(path)], capture_output=True, text=True, check=True, cwd=ROOT)
    text_mib, arrow_peak_mib = map(float, result.stdout.split())
    print(f"parquet text {text_mib:.1f} MiB in one row group -> arrow peak {arrow_peak_mib:.1f} MiB")
    assert text_mib > 14
    assert arrow_peak_mib < text_mib / 2
