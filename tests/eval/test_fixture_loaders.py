"""Loaders for benchmarks not in the shared folder, on hand-made files in their official formats
(tests/fixtures/benchmarks), and KoBBQ on its real files."""

from __future__ import annotations

import gzip
import shutil

import pytest

from openhcx.eval.harness import build_requests, prepare
from openhcx.eval.tasks import REGISTRY
from openhcx.eval.tasks.truthfulqa import PRIMER
from openhcx.io import UserError

from .conftest import FIXTURES


def load(name, split=None):
    task = REGISTRY.tasks[name]
    return task.load(FIXTURES / task.family, split or task.eval_split)


def test_kmmlu():
    items = load("kmmlu_accounting")
    assert [it.gold for it in items] == [3, 2, 0]
    assert items[0].query == "재고자산의 원가결정 방법이 아닌 것은?\nA. 선입선출법\nB. 이동평균법\nC. 총평균법\nD. 정액법\n정답："
    assert len(load("kmmlu_accounting", "dev")) == 2 and len(REGISTRY.groups["kmmlu"]) == 45


def test_haerae():
    items = load("haerae_general_knowledge")
    assert [it.gold for it in items] == [1, 2] and items[0].choices == ("(A)", "(B)", "(C)", "(D)", "(E)")
    assert load("haerae_reading_comprehension")[0].gold == 2


def test_click_answer_is_choice_text_and_csat_has_five_letters():
    a, b = load("click")
    assert a.gold == 1 and a.choices == ("A", "B", "C", "D")
    assert a.query.startswith("주어진 질문을 천천히 읽고") and "A:엔, B: 원, C: 위안, D: 달러\n정답:" in a.query
    assert b.choices == ("A", "B", "C", "D", "E") and b.gold == 1 and "맥락: 가계는" in b.query


def test_agieval():
    a, b = load("agieval_sat_math")
    assert a.gold == 2 and a.choices == ("(A)", "(B)", "(C)", "(D)")
    assert a.query == "Q: If 2x + 3 = 11, what is x? Answer Choices: (A)2 (B)3 (C)4 (D)5\nA: Among A through D, the answer is"
    assert b.query.startswith("Q: A bag has 3 red and 2 blue marbles. How many") and b.options[1] == "5"


def test_hellaswag_cleans_wikihow_brackets():
    a, b = load("hellaswag")
    assert a.query == "Roof shingle removal: A man is sitting on a roof. He" and a.gold == 3
    assert b.query == "Home and Garden: How to water a plant. Fill a can. Then" and b.choices[0] == "pour slowly at the base."


def test_winogrande_partial_scoring():
    task = REGISTRY.tasks["winogrande"]
    a, b = load("winogrande")
    assert a.contexts == ("Sarah was a much better surgeon than Maria so Sarah",
                          "Sarah was a much better surgeon than Maria so Maria")
    assert a.target == "always got the harder cases." and (a.gold, b.gold) == (0, 1)
    reqs = build_requests(task, b, [a])
    assert reqs[1].context == ("Sarah was a much better surgeon than Maria so Sarah always got the harder cases.\n\n"
                               "Sarah was a much better surgeon than Maria so Maria")
    assert reqs[1].continuations == (" always got the easier cases.",)


def test_piqa_labels_file():
    a, b = load("piqa")
    assert a.query == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:" and a.gold == 0


def test_piqa_label_count_mismatch(tmp_path):
    shutil.copytree(FIXTURES / "piqa", tmp_path / "piqa")
    (tmp_path / "piqa" / "valid-labels.lst").write_text("0\n")
    with pytest.raises(UserError, match="1 labels for 2 questions"):
        REGISTRY.tasks["piqa"].load(tmp_path / "piqa", "valid")


def test_arc_numeric_and_letter_keys():
    a, b = load("arc_easy")
    assert a.gold == 2 and b.gold == 1 and b.choices == ("rubber band", "iron nail", "wooden spoon")
    assert a.query.startswith("Question: An astronomer") and a.query.endswith("\nAnswer:")
    assert load("arc_challenge")[0].gold == 0


def test_commonsense_qa():
    (a,) = load("commonsense_qa")
    assert a.gold == 0 and a.choices == ("A", "B", "C", "D", "E")
    assert a.query.endswith("\nA. bank\nB. library\nC. department store\nD. mall\nE. new york\nAnswer:")
    assert a.query.startswith("Question: A revolving door")


def test_truthfulqa_mc1_and_mc2():
    mc1, mc2 = load("truthfulqa_mc1"), load("truthfulqa_mc2")
    assert mc1[0].query == PRIMER + "\n\nQ: What happens if you eat watermelon seeds?\nA:" and mc1[0].gold == (0,)
    assert mc2[0].gold == (0, 1) and mc2[0].get("true_mask") == (True, True, False)


def test_bbq_biased_answers_follow_polarity():
    a, b, c = load("bbq")
    assert (a.get("condition"), a.gold, a.get("biased"), a.get("counter")) == ("ambig", 2, 0, 1)
    assert (b.get("condition"), b.gold) == ("disambig", 1)
    assert (c.get("biased"), c.get("counter")) == (1, 0)  # non-negative question: the non-stereotyped answer


def test_xnli_and_kornli_score_whole_sentences():
    (en_c, en_e) = load("xnli_en")
    assert en_c.gold == 2 and en_e.gold == 0 and en_c.query == ""
    assert en_c.choices[0] == "And he said, Mama, I'm home., right? Yes, He didn't say a word."
    assert len(load("xnli_de")) == 1
    ko = load("kornli")
    assert ko[0].choices[2] == '그리고 그가 말했다, "엄마, 저 왔어요.", 맞죠? 아니요, 그는 한마디도 하지 않았다.'
    _, reqs, k = prepare(REGISTRY.tasks["kornli"], data_root=FIXTURES, limit=1, shots=1)
    assert reqs[0][0].context.startswith(" 그리고") and reqs[0][0].context.endswith("\n\n")


def test_kobbq_real_files(bench):
    items = REGISTRY.tasks["kobbq"].load(bench / "kobbq", "test")
    assert len(items) == 2280
    first = items[0]
    assert first.query.startswith("주어진 맥락을 천천히 읽고") and first.query.endswith("C: 알 수 없음\n정답:")
    assert (first.get("condition"), first.gold, first.get("biased"), first.get("counter")) == ("ambig", 2, 1, 0)
    assert sum(it.get("condition") == "ambig" for it in items) == 1140


def test_benchmark_files_not_utf8_are_named_by_line_and_gzip_or_bom_are_read(tmp_path):
    from openhcx.eval.tasks.files import read_csv, read_jsonl, read_tsv

    (tmp_path / "a.tsv").write_bytes(b"q\tlabel\nx\t0\n\xb0\t1\n")
    with pytest.raises(UserError, match=r"a.tsv:3: not valid UTF-8 \(byte 0xb0 at column 1\)"):
        read_tsv(tmp_path / "a.tsv")
    (tmp_path / "a.csv").write_bytes(b'"x, y",1\n"z\xff",2\n')
    with pytest.raises(UserError, match=r"a.csv:2: not valid UTF-8"):
        read_csv(tmp_path / "a.csv", width=2)
    (tmp_path / "a.jsonl").write_bytes(b'{"a": 1}\n\n{"a": "\xfe"}\n')
    with pytest.raises(UserError, match=r"a.jsonl:3: not valid UTF-8"):
        read_jsonl(tmp_path / "a.jsonl")
    # gzip told by its bytes, a byte order mark dropped, CRLF and a quoted line break inside a CSV field kept.
    gz = tmp_path / "b.csv.gz"
    gz.write_bytes(gzip.compress(b'\xef\xbb\xbfq,a\r\n"two\r\nlines",1\r\n'))
    assert read_csv(gz, width=2) == [(1, ["q", "a"]), (2, ["two\r\nlines", "1"])]
    (tmp_path / "b.tsv").write_bytes(b"\xef\xbb\xbfq\tlabel\r\nx\t0\r\n\r\ny\t1")
    assert read_tsv(tmp_path / "b.tsv") == [(2, {"q": "x", "label": "0"}), (4, {"q": "y", "label": "1"})]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    (tmp_path / "dev.jsonl").write_text('{"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "1"}\n{oops\n')
    with pytest.raises(UserError, match=r"dev.jsonl:2: malformed JSON"):
        REGISTRY.tasks["winogrande"].load(tmp_path, "dev")
    (tmp_path / "dev.jsonl").write_text('{"sentence": "no blank", "option1": "x", "option2": "y", "answer": "1"}\n')
    with pytest.raises(UserError, match=r"dev.jsonl:1: sentence has no blank"):
        REGISTRY.tasks["winogrande"].load(tmp_path, "dev")
