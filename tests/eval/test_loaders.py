"""Loaders on the real benchmark files (counts and label encodings as published) and on malformed
copies, whose errors must name the file and line."""

from __future__ import annotations

import shutil

import pytest

from openhcx.eval.tasks import REGISTRY, task_dir
from openhcx.io import UserError

KOBEST_COUNTS = {  # MANIFEST.md, rows excluding the header
    "kobest_boolq": {"train": 3665, "dev": 700, "test": 1404},
    "kobest_copa": {"train": 3076, "dev": 500, "test": 1000},
    "kobest_hellaswag": {"train": 2029, "dev": 500, "test": 500},
    "kobest_sentineg": {"train": 3649, "dev": 400, "test": 397},
    "kobest_wic": {"train": 3318, "dev": 610, "test": 1260},
}


@pytest.mark.parametrize("name", sorted(KOBEST_COUNTS))
def test_kobest_reads_every_split(bench, name):
    task = REGISTRY.tasks[name]
    for split, n in KOBEST_COUNTS[name].items():
        items = task.load(bench / "kobest", split)
        assert len(items) == n
        assert {it.gold for it in items} == set(range(len(items[0].choices)))


def test_kobest_label_spellings(bench):
    """BoolQ/WiC mix True/TRUE/False/FALSE; COPA answers are 1/2; SentiNeg test scores the negated text."""
    boolq = REGISTRY.tasks["kobest_boolq"].load(bench / "kobest", "test")
    assert sum(it.gold for it in boolq) == 357 + 348
    copa = REGISTRY.tasks["kobest_copa"].load(bench / "kobest", "dev")
    assert copa[0].gold == 1 and sum(it.gold for it in copa) == 252
    wic = REGISTRY.tasks["kobest_wic"].load(bench / "kobest", "train")
    assert sum(it.gold for it in wic) == 1603 + 77
    senti = REGISTRY.tasks["kobest_sentineg"].load(bench / "kobest", "test")
    assert senti[0].query == "문장: 택배사 정말 마음에 듬 긍부정:" and senti[0].gold == 1


def test_mmlu_reads_all_subjects(bench):
    tasks = REGISTRY.expand(["mmlu"])
    assert len(tasks) == 57
    assert sum(len(t.load(bench / "mmlu", "test")) for t in tasks) == 14042
    assert sum(len(t.load(bench / "mmlu", "dev")) for t in tasks) == 285


def test_mmlu_reads_the_official_headerless_letter_format(bench, tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "anatomy_test.csv").write_text('"What, here?",a,b,c,d,C\nQ2,a,b,c,d,A\n', encoding="utf-8")
    items = REGISTRY.tasks["mmlu_anatomy"].load(tmp_path, "test")
    assert [it.gold for it in items] == [2, 0]
    assert items[0].query == "What, here?\nA. a\nB. b\nC. c\nD. d\nAnswer:"


def test_local_files_override(bench, tmp_path):
    task = REGISTRY.tasks["kobest_copa"]
    assert task_dir(task, data={"kobest": str(tmp_path)}) == tmp_path
    assert task_dir(task, data_root=bench) == bench / "kobest"


def _copy_kobest(bench, tmp_path, task, split):
    dst = tmp_path / task / f"{split}.tsv"
    dst.parent.mkdir(parents=True)
    shutil.copy(bench / "kobest" / task / f"{split}.tsv", dst)
    return dst


def test_malformed_tsv_names_file_and_line(bench, tmp_path):
    path = _copy_kobest(bench, tmp_path, "COPA", "dev")
    lines = path.read_bytes().split(b"\r\n")
    lines[3] = lines[3].rsplit(b"\t", 1)[0]  # drop the Answer field of data row 3 (line 4)
    path.write_bytes(b"\r\n".join(lines))
    with pytest.raises(UserError, match=rf"{path}:4: expected 6 tab-separated fields, found 5"):
        REGISTRY.tasks["kobest_copa"].load(tmp_path, "dev")


def test_bad_label_names_file_and_line(bench, tmp_path):
    path = _copy_kobest(bench, tmp_path, "BoolQ", "dev")
    lines = path.read_bytes().split(b"\r\n")
    lines[2] = lines[2].rsplit(b"\t", 1)[0] + b"\tyes"
    path.write_bytes(b"\r\n".join(lines))
    with pytest.raises(UserError, match=rf"{path}:3: unexpected label 'yes'"):
        REGISTRY.tasks["kobest_boolq"].load(tmp_path, "dev")


def test_malformed_csv_names_file_and_line(tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "virology_dev.csv").write_text("Q1,a,b,c,d,A\n\"multi\nline\",a,b,c,d,B\nQ3,a,b,c,A\n")
    with pytest.raises(UserError, match=r"virology_dev.csv:4: expected 6 comma-separated fields, found 5"):
        REGISTRY.tasks["mmlu_virology"].load(tmp_path, "dev")


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(UserError, match="benchmark file not found"):
        REGISTRY.tasks["kobest_wic"].load(tmp_path, "test")
    with pytest.raises(UserError, match="unknown task 'kobest_nope'"):
        REGISTRY.expand(["kobest_nope"])
