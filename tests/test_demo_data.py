"""The committed demo corpora parse, hold what SOURCES.md says they hold, and stay small.

Also checks the build script's pure parts (HTML to text, even selection, byte-stable gzip) on small inputs;
rebuilding from the Debian packages needs apt and is not done here.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
SEGMENTS = ("ko", "en", "code")

_spec = importlib.util.spec_from_file_location("build_demo_data", ROOT / "scripts" / "build_demo_data.py")
build = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = build  # dataclasses look their module up there
_spec.loader.exec_module(build)


def load(name: str) -> list[build.Doc]:
    docs = []
    with gzip.open(DEMO / "corpus" / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            rec = json.loads(line)
            assert set(rec) == {"text", "source"}, f"{name}:{i}"
            assert isinstance(rec["text"], str) and rec["text"].strip(), f"{name}:{i}: empty text"
            assert re.fullmatch(r"[a-z0-9.-]+:\S.*", rec["source"]), f"{name}:{i}: source {rec['source']!r}"
            docs.append(build.Doc(rec["text"], rec["source"]))
    return docs


@pytest.fixture(scope="module")
def corpora() -> dict[str, list[build.Doc]]:
    return {name: load(name) for name in SEGMENTS}


def table_rows(section: str) -> list[list[str]]:
    """Data rows of the first Markdown table under `## section` in SOURCES.md."""
    text = (DEMO / "SOURCES.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines()
            if line.startswith("|")]
    return [r for r in rows[2:]]  # header and rule first


def stated(cells: list[str]) -> build.Figures:
    return build.Figures(*(int(c) for c in cells[-4:]))


def test_records_are_unique_documents(corpora):
    for name, docs in corpora.items():
        assert len({d.source for d in docs}) == len(docs), name
        assert len({d.text for d in docs}) == len(docs), f"{name}: duplicate documents"


def test_korean_segment_is_large_and_korean(corpora):
    ko = corpora["ko"]
    hangul = sum(build.count_hangul(d.text) for d in ko)
    assert hangul >= 500_000
    assert hangul / sum(len(d.text) for d in ko) > 0.5
    packages = {d.source.split(":", 1)[0] for d in ko}
    assert packages == {"libreoffice-help-ko", "debian-faq-ko", "konlpy"}
    # Markup is gone (the help does explain HTML tags in prose, so look for attributes and entities).
    assert not any(re.search(r'\b(class|href|id|dir)="|&(amp|lt|gt|nbsp);', d.text) for d in ko)


def test_segments_are_comparable_in_characters(corpora):
    chars = [sum(len(d.text) for d in corpora[n]) for n in SEGMENTS]
    assert max(chars) / min(chars) < 1.1, chars


def test_file_figures_match_sources_md(corpora):
    rows = {r[0]: stated(r) for r in table_rows("Files")}
    assert set(rows) == {f"corpus/{n}.jsonl.gz" for n in SEGMENTS}
    for name, docs in corpora.items():
        path = f"corpus/{name}.jsonl.gz"
        want = rows[path]
        assert want.compressed_bytes == (DEMO / path).stat().st_size
        assert build.figures(docs) == want, path


def test_source_figures_match_sources_md(corpora):
    owned = {name: 0 for name in SEGMENTS}
    for row in table_rows("Sources"):
        name = row[0].removeprefix("corpus/").removesuffix(".jsonl.gz")
        prefix, version = row[1].strip("`"), row[3]
        assert version and version != "None", row
        docs = [d for d in corpora[name] if d.source.startswith(prefix)]
        assert docs, prefix
        assert build.figures(docs) == stated(row), prefix
        owned[name] += len(docs)
    # The prefixes split each file: every record belongs to exactly one listed source.
    assert owned == {name: len(docs) for name, docs in corpora.items()}


def test_sources_md_pins_the_versions_the_script_pins():
    text = (DEMO / "SOURCES.md").read_text(encoding="utf-8")
    for package, version in {**build.DEBIAN_PINS, **build.PYPI_PINS, "python": build.PYTHON_PIN}.items():
        assert f"| {package} | {version} |" in text, package
    assert "Permission is granted to make and distribute verbatim copies" in text


def test_committed_demo_data_is_under_15_mb():
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size < 15 * 2**20, size


def test_html_blocks_keep_korean_text_and_drop_furniture():
    page = """<html><head><title>제목</title><script>var x = "스크립트";</script></head><body>
    <header><p>머리글</p></header><div class="navheader">이전 다음</div>
    <h2><a id="sec1"></a>1.1. 질문입니다</h2>
    <p>첫 줄이
    이어집니다 <span class="switchinline"><span class="MAC">Command</span><span>Ctrl</span></span>+C.</p>
    <pre>code  line 1
  line 2</pre><p>Untranslated English.</p><img src="x.png"><br>
    <div class="relatedtopics"><p>관련 주제</p><div><p>링크</p></div></div><p>끝 &amp; 마무리</p>
    </body></html>"""
    blocks = build.html_blocks(page)
    assert [(b.tag, b.text) for b in blocks] == [
        ("h2", "1.1. 질문입니다"),
        ("p", "첫 줄이 이어집니다 Ctrl+C."),
        ("pre", "code  line 1\n  line 2"),
        ("p", "Untranslated English."),
        ("p", "끝 & 마무리"),
    ]
    assert blocks[0].anchor == "sec1"
    assert not build.is_document(blocks[:1])  # a heading alone
    assert build.is_document(blocks[:1] + [build.Block("p", "가" * build.MIN_DOC_HANGUL, "")])


def test_plain_text_drops_page_numbers_and_blank_lines():
    assert build.plain_text("제1조 목적\n\n- 1 -\n\f제2조  정의 \n") == "제1조 목적\n제2조 정의"


def test_spread_takes_about_the_budget_evenly():
    docs = [build.Doc("x" * (10 + i % 7), f"t:{i}") for i in range(1000)]
    total = sum(len(d.text) for d in docs)
    chosen = build.spread(docs, total // 4)
    assert abs(sum(len(d.text) for d in chosen) - total // 4) <= 16
    picked = [int(d.source[2:]) for d in chosen]
    assert picked == sorted(picked) and picked[0] < 10 and picked[-1] > 990
    assert build.spread(docs, total + 1) == docs


def test_jsonl_gz_is_byte_stable_and_round_trips():
    docs = [build.Doc("한국어 문장", "t:1"), build.Doc("code = 1\n", "t:2")]
    blob = build.jsonl_gz(docs)
    assert blob == build.jsonl_gz(list(docs))
    assert blob[4:8] == b"\0\0\0\0"  # gzip mtime field
    lines = gzip.decompress(blob).decode().splitlines()
    assert [json.loads(line) for line in lines] == [{"text": "한국어 문장", "source": "t:1"},
                                                    {"text": "code = 1\n", "source": "t:2"}]
