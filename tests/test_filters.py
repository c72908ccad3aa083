"""Document filters: each rule's measure on hand-computed text, and the decision it leads to."""

import pytest

from openhcx.data.filters import (
    FilterConfig,
    Keywords,
    duplicate_line_fractions,
    duplicate_ngram_char_fraction,
    load_keywords,
    passages,
    rejection,
    top_ngram_char_fraction,
)
from openhcx.io import UserError

CONFIG = FilterConfig()
KEYWORDS = Keywords.load(CONFIG)


def words(n: int, prefix: str = "w") -> list[str]:
    """n distinct five-character words: no n-gram ever repeats."""
    return [f"{prefix}{i:04d}" for i in range(n)]


def decide(text: str, code: bool = False) -> str | None:
    return rejection(text, CONFIG, KEYWORDS, code=code)


def test_measures_on_hand_computed_examples():
    assert duplicate_line_fractions("aa\nb\naa\n\n  \nc") == (1 / 4, 2 / 6)
    abcde = "a b c d e a b c d e".split()
    # ab, bc, cd, de each occur twice: the top 2-gram covers 2 * 2 of 10 characters.
    assert top_ngram_char_fraction(abcde, 2) == 0.4
    # Only the last 5-gram (a b c d e) repeats: it covers words 5..9.
    assert duplicate_ngram_char_fraction(abcde, 5) == 0.5
    # Overlapping duplicates count each word once: "x x x x x x" has 5-grams at 0 and 1, the second
    # a repeat covering words 1..5, so 5 of 6 characters.
    assert duplicate_ngram_char_fraction(["x"] * 6, 5) == 5 / 6
    assert top_ngram_char_fraction(words(20), 2) == 0.0
    assert duplicate_ngram_char_fraction(words(4), 5) == 0.0


def test_distinct_prose_is_kept_and_short_text_dropped():
    text = " ".join(words(20))  # 20 * 5 + 19 spaces = 119 characters
    assert decide(text) is None
    assert decide(text[:99]) == "too_short"
    assert decide(text[:100]) is None


def test_duplicate_lines():
    lines = [" ".join(words(3, prefix=p)) for p in "abcdef"]  # six distinct lines of 17 characters
    assert decide("\n".join(lines)) is None
    # 4 of 10 lines repeat: 0.4 > 0.30.
    assert decide("\n".join(lines + lines[:4])) == "duplicate_lines"


def test_duplicate_line_characters():
    long_line = " ".join(words(8, prefix="L"))  # 47 characters
    short = [f"s{i}" for i in range(8)]  # 2 characters each
    text = "\n".join([long_line, *short, long_line, long_line])
    # 2 of 11 lines repeat (0.18 <= 0.30) but they hold 94 of 157 characters (0.60 > 0.20).
    assert duplicate_line_fractions(text) == (2 / 11, 94 / 157)
    assert decide(text) == "duplicate_line_chars"


def test_top_ngram():
    # "the cat" between distinct words: the 2-gram covers 6 of every 11 word characters.
    text = " ".join(f"the cat {w}" for w in words(30))
    assert top_ngram_char_fraction(text.split(), 2) == pytest.approx(6 / 11)
    assert decide(text) == "top_ngram"


def test_duplicate_ngram_in_korean_eojeol():
    # 12 eojeol, 39 characters; its longest 2/3/4-grams have 9/12/16 characters.
    phrase = "우리는 오늘 이 자리에서 모든 국민의 목소리를 하나하나 빠짐없이 귀담아 듣겠다고 약속합니다".split()
    text = " ".join(words(13, prefix="a") + phrase + words(13, prefix="b") + phrase)
    ws = text.split()  # 26 * 5 + 2 * 39 = 208 word characters
    # Ties among the most frequent n-grams go to the longest: 2 * 9, 2 * 12, 2 * 16 of 208.
    assert [top_ngram_char_fraction(ws, n) for n in (2, 3, 4)] == [18 / 208, 24 / 208, 32 / 208]
    # The second occurrence is a run of repeated 5..10-grams covering all 39 of its characters.
    assert [duplicate_ngram_char_fraction(ws, n) for n in (5, 10)] == [39 / 208, 39 / 208]
    assert decide(text) == "duplicate_ngram"  # 0.19 > 0.15 while 0.154 <= 0.16 for 4-grams
    longer = " ".join(words(40, prefix="a") + phrase + words(40, prefix="b") + phrase)
    assert duplicate_ngram_char_fraction(longer.split(), 10) == 39 / 478
    assert decide(longer) is None  # 0.082 is under every duplicate n-gram limit


def test_advertising_share_of_passages():
    base = [
        "이번 주말에는 오랜만에 가족과 함께 집 근처의 큰 공원에 다녀왔습니다.",
        "날씨가 맑고 바람도 선선해서 천천히 산책하기에 아주 좋은 날이었습니다.",
        "아이들은 잔디밭에서 자전거를 타며 하루 종일 즐거운 시간을 보냈습니다.",
    ]
    ad = "지금 바로 전화하시면 무료상담 받으시고 특별한 혜택을 누리실 수 있습니다!"
    assert passages(" ".join(base) + "\n" + ad) == [*base, ad]
    assert decide(" ".join([*base, ad])) is None  # 1 of 4 passages = 0.25
    assert decide(" ".join([*base[:2], ad])) == "advertising"  # 1 of 3 = 0.33 > 0.30


def test_english_keywords_match_whole_words_only():
    ad = load_keywords([CONFIG.ad_keyword_files[1]])
    hate = load_keywords([CONFIG.hate_keyword_files[1]])
    assert ad.passage_fraction("Great deals. CLICK HERE to see.") == 0.5
    assert ad.passage_fraction("Doubleclick heretic mode.") == 0.0
    assert hate.passage_fraction("The spicy food was great.") == 0.0


def test_hate_speech_share_of_passages():
    neutral = [
        "오늘 아침에는 비가 조금 내렸다.",
        "점심으로 김치찌개를 먹었다.",
        "오후에는 도서관에서 책을 읽었다.",
        "저녁에는 친구와 통화를 했다.",
        "내일은 일찍 일어나야 한다.",
        "주말에는 등산을 갈 계획이다.",
        "새로 산 운동화가 마음에 든다.",
        "동생은 요즘 피아노를 배운다.",
        "우리 동네에 새 빵집이 생겼다.",
    ]
    slurs = ["그 사람들은 짱깨라고 불렸다.", "그들을 쪽바리라고 부르는 사람도 있었다."]
    assert decide(" ".join([*neutral, slurs[0]])) is None  # 1 of 10 = 0.10, not above
    assert decide(" ".join([*neutral[:8], *slurs])) == "hate_speech"  # 2 of 10


def test_code_skips_prose_rules_but_not_length_or_hate():
    code = "\n".join(
        ["switch (op) {"]
        + [f"    case {name}:\n        result = a {op} b;\n        break;" for name, op in zip(["ADD", "SUB", "MUL", "DIV"], "+-*/")]
        + ["}"]
    )
    # "b; break;" four times is 32 of 112 word characters: repetitive prose, ordinary code.
    assert top_ngram_char_fraction(code.split(), 2) == 32 / 112
    assert decide(code) == "top_ngram"
    assert decide(code, code=True) is None
    assert decide("x = 1\n", code=True) == "too_short"
    assert decide(code + "\n// subhuman\n// subhuman\n", code=True) == "hate_speech"  # 2 of 16 lines


def test_user_keyword_lists(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my list\n\nFoo Bar\n할인행사\n", encoding="utf-8")
    keywords = load_keywords([path])
    assert keywords.words == ("foo bar", "할인행사")
    assert keywords.passage_fraction("foo bar here. 오늘 할인행사를 합니다. plain.") == 2 / 3
    assert load_keywords([]) is None
    config = FilterConfig(min_chars=0, ad_keyword_files=[str(path)], hate_keyword_files=[])
    assert rejection("Foo Bar!", config, Keywords.load(config)) == "advertising"
    with pytest.raises(UserError, match="missing.txt: keyword list not found"):
        load_keywords([tmp_path / "missing.txt"])
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\n")
    with pytest.raises(UserError, match="bad.txt: keyword list is not valid UTF-8"):
        load_keywords([tmp_path / "bad.txt"])
