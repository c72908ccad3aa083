"""Tokenizer training on a Ray cluster: the same tokenizer.json as on one machine, bad shards named, reruns resumed."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from openhcx.data.cluster import Cluster, work_folder
from openhcx.data.corpus import Source, build_corpus
from openhcx.io import UserError
from openhcx.tokenizer.train import train_tokenizer


@pytest.fixture(scope="module")
def sharded_corpus(demo_corpus, tmp_path_factory) -> Path:
    """The demo corpus's train documents, 50 to a shard file: several tasks per label."""
    manifest = json.loads((demo_corpus / "manifest.json").read_text())
    sources = [Source(str(demo_corpus / name), label) for label, names in manifest["shards"]["train"].items()
               for name in names]
    out = tmp_path_factory.mktemp("sharded") / "corpus"
    build_corpus(sources, str(out), heldout_fraction=0.0, shard_docs=50)
    return out


def train_both(corpus: Path, tmp_path: Path, **config) -> tuple[Path, Path]:
    here = train_tokenizer(str(corpus), str(tmp_path / "here"), vocab_size=3000, **config)
    there = train_tokenizer(str(corpus), str(tmp_path / "there"), vocab_size=3000, cluster=Cluster(), **config)
    return here, there


def manifest(tok: Path) -> dict:
    return json.loads((tok / "manifest.json").read_text())


def test_same_tokenizer_as_on_one_machine(ray_cluster, demo_corpus, tmp_path):
    here, there = train_both(demo_corpus, tmp_path)
    assert (here / "tokenizer.json").read_bytes() == (there / "tokenizer.json").read_bytes()
    assert manifest(here)["morpheme_aware"] and manifest(here)["documents"] > 400
    for key in ("documents", "characters", "config"):
        assert manifest(here)[key] == manifest(there)[key]
    assert list(manifest(there)["tasks"]) == ["00000-code-00000", "00001-en-00000", "00002-ko-00000"]
    assert not work_folder(Cluster(), tmp_path / "there").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "there"]


def test_labels_and_max_docs_cut_inside_a_file(ray_cluster, sharded_corpus, tmp_path):
    """code's shard files, then ko's first two and 20 documents of its third: the order iter_documents reads."""
    code = sum(manifest(sharded_corpus)["documents"]["train"]["code"])
    here, there = train_both(sharded_corpus, tmp_path, labels=["code", "ko"], max_docs=code + 120)
    assert (here / "tokenizer.json").read_bytes() == (there / "tokenizer.json").read_bytes()
    assert manifest(there)["documents"] == manifest(here)["documents"] == code + 120
    assert manifest(there)["characters"] == manifest(here)["characters"]
    assert [key for key in manifest(there)["tasks"] if "ko" in key] == ["00003-ko-00000", "00004-ko-00001",
                                                                        "00005-ko-00002"]
    assert not work_folder(Cluster(), tmp_path / "there").exists()


def test_bad_shard_is_named_and_only_its_task_reruns(ray_cluster, sharded_corpus, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(sharded_corpus, corpus)
    bad = corpus / "train" / "en-00001.jsonl.gz"
    good = bad.read_bytes()
    with gzip.open(bad, "rt", encoding="utf-8") as f:
        lines = f.readlines()
    lines[2] = '{"text": "cut short\n'
    with gzip.open(bad, "wt", encoding="utf-8") as f:
        f.writelines(lines)
    out = tmp_path / "tok"
    config = dict(vocab_size=3000, labels=["en", "code"], cluster=Cluster())
    with pytest.raises(UserError) as failed:
        train_tokenizer(str(corpus), str(out), **config)
    assert f"{bad}:3: corrupt corpus record" in str(failed.value)
    assert "1 of 6 tasks failed" in str(failed.value)
    assert not out.exists() and work_folder(Cluster(), out).is_dir()
    capsys.readouterr()

    bad.write_bytes(good)
    train_tokenizer(str(corpus), str(out), **config)
    assert "tokenizer: 6 tasks, 5 finished before, 1 to run" in capsys.readouterr().out
    assert not work_folder(Cluster(), out).exists()
    here = train_tokenizer(str(corpus), str(tmp_path / "here"), vocab_size=3000, labels=["en", "code"])
    assert (here / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_corpus_without_document_counts_is_refused(demo_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(demo_corpus, corpus)
    m = manifest(corpus)
    del m["documents"]
    (corpus / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="no documents per shard file .* rebuild the corpus"):
        train_tokenizer(str(corpus), str(tmp_path / "tok"), vocab_size=3000, cluster=Cluster())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]
