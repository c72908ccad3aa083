"""Reference tokenizers load offline and encode exactly as the published vocabularies say.

Fixed ids were checked against the raw vocabularies (the .tiktoken files, tekken's JSON ranks plus its
1000 special ids, and the GGUF token list), not against our own encoder.
"""

from pathlib import Path

import pytest

from openhcx.tokenizer.references import Reference, load_references

REFS_DIR = Path(__file__).resolve().parents[1] / ".cache" / "refs"
NAMES = ["gpt2", "whisper-multilingual", "mistral-tekken", "smollm2"]

KOREAN = "대한민국의 수도는 서울이다. 형태소 분석기는 한국어 문장을 형태소 단위로 나눕니다."
ENGLISH = "The quick brown fox jumps over the lazy dog.\n\nIt's 2024; prices rose 3.5%!"
CODE = 'def add(a, b):\n    """Sum."""\n\treturn a + b  # 합계\n'
SPECIALS = "<|endoftext|><|im_start|>user<|im_end|><s>[INST]</s><|endofturn|>"


@pytest.fixture(scope="module")
def refs() -> dict[str, Reference]:
    if not (REFS_DIR / "gpt2.tiktoken").is_file():
        pytest.skip(f"{REFS_DIR} lacks the .tiktoken files: run `make install`")
    loaded, failed = load_references(REFS_DIR)
    assert failed == {}
    return {r.name: r for r in loaded}


def test_all_four_load_with_their_vocab_sizes(refs):
    sizes = {name: refs[name].vocab_size for name in NAMES}
    # Whisper: 50257 BPE ranks, <|endoftext|>, then 1607 reserved ids (99 languages, timestamps...).
    assert sizes == {"gpt2": 50257, "whisper-multilingual": 51865, "mistral-tekken": 131072, "smollm2": 49152}


@pytest.mark.parametrize(
    "name, text, ids",
    [
        ("gpt2", "Hello world", [15496, 995]),
        ("gpt2", "<|endoftext|>", [27, 91, 437, 1659, 5239, 91, 29]),
        ("whisper-multilingual", "Hello world", [15947, 1002]),
        ("whisper-multilingual", " 있습니다", [10552]),
        ("mistral-tekken", "Hello world", [22177, 4304]),
        ("mistral-tekken", " 있습니다", [32524]),
        ("smollm2", "Hello world", [19556, 905]),
        ("smollm2", " 2024", [216, 34, 32, 34, 36]),  # digits stay single, as SmolLM2 was trained
    ],
)
def test_known_encodings(refs, name, text, ids):
    assert refs[name].encode(text) == ids


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", [KOREAN, ENGLISH, CODE, SPECIALS, "", " ", "😀 e\u0301"])
def test_decode_inverts_encode(refs, name, text):
    assert refs[name].decode(refs[name].encode(text)) == text


@pytest.mark.parametrize(
    "name, special_ids",
    [
        ("gpt2", {50256}),
        ("whisper-multilingual", {50257}),
        ("mistral-tekken", set(range(1000))),
        ("smollm2", set(range(17))),  # <|endoftext|>, <|im_start|>, <|im_end|> and 14 code markers
    ],
)
def test_special_strings_are_plain_text_and_no_bos_eos(refs, name, special_ids):
    ids = refs[name].encode(SPECIALS)
    assert len(ids) > 10 and not special_ids & set(ids)
    assert refs[name].encode("") == []


def test_korean_costs_byte_level_vocabularies_most(refs):
    """Table 1's point in miniature: English-centric vocabularies spend far more tokens on Korean."""
    counts = {name: len(refs[name].encode(KOREAN)) for name in NAMES}
    assert counts["mistral-tekken"] < counts["whisper-multilingual"] < counts["gpt2"]
    assert counts["gpt2"] > 3 * counts["mistral-tekken"]
    assert counts["smollm2"] > 3 * counts["mistral-tekken"]


def test_missing_refs_dir_gives_reasons_not_a_crash(tmp_path):
    loaded, failed = load_references(tmp_path / "absent")
    assert sorted(failed) == ["gpt2", "whisper-multilingual"]
    assert "gpt2.tiktoken: not found" in failed["gpt2"]
    assert "make install" in failed["whisper-multilingual"]
    # The packaged references do not depend on the refs dir.
    assert {r.name for r in loaded} >= {"mistral-tekken", "smollm2"}


def test_corrupt_tiktoken_file_names_file_and_line(tmp_path):
    (tmp_path / "gpt2.tiktoken").write_text("IQ== 0\nIg== one\n")
    _, failed = load_references(tmp_path)
    assert f"{tmp_path / 'gpt2.tiktoken'}:2:" in failed["gpt2"]
