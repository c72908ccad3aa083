"""IFEval checkers: does a response follow each verifiable instruction of Zhou et al. (2023)?

One function per instruction id of the official input_data.jsonl, `(response, **kwargs) -> bool`, with the
reference implementation's semantics (google-research's instruction_following_eval, as lm-evaluation-harness
ships it). `build_checker` validates a record's kwargs once; `grade` gives the strict verdicts (the response as
is) and the loose ones (any of eight variants passes: the response, without its first line, last line or
both, each also without markdown asterisks). An empty response follows nothing.

Libraries, and why:
- langdetect for the three checks that name a language: the reference asks langdetect, and another detector
  would disagree on short or mixed texts. It ships its profiles (works offline). We seed our own detector
  factory; the reference does not, so its verdict on a borderline text can change between runs.
- nltk's Treebank word tokenizer for all-capital words (it decides what a word is: "DON'T" is two), and
  Punkt for sentences. The reference loads Punkt's English model (nltk data `punkt_tab`), which nothing here
  downloads: when it is installed we use it; otherwise Punkt with a short list of English abbreviations,
  whose counts can differ from the reference on texts with rarer abbreviations. Word tokens need no sentence
  split (a sentence-final period split off an all-capital word does not change the count), so none is done.
- Words for length limits are `\\w+` runs, what the reference's nltk RegexpTokenizer(r"\\w+") finds: plain re.

Deliberate differences from the reference (none changes a verdict on the official file):
- keyword, phrase and section-marker arguments are matched literally; the reference reads them as regexes.
- kwargs the reference would replace by random values (a missing one, a `letter` that is not a-z, an
  `nth_paragraph` out of range) are errors here, except that `letter` may be any one character and is counted
  as given (records 1122 and 1129 ask for '#' and '!'; the reference counts a random letter instead).

Not here: loading the benchmark file and the metrics over a run (eval/tasks/ifeval.py), generation.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Callable, Sequence
from typing import Literal, get_args, get_origin, get_type_hints

from openhcx.io import UserError

Relation = Literal["less than", "at least"]
Checker = Callable[[str], bool]


def _holds(count: int, relation: Relation, threshold: int) -> bool:
    return count < threshold if relation == "less than" else count >= threshold


# --- language and tokenization -------------------------------------------------------------------------------

LANGUAGE_CHECKS = frozenset({"language:response_language", "change_case:english_capital",
                             "change_case:english_lowercase"})


@functools.cache
def language_detector_factory():
    """langdetect's factory with its profiles loaded and a fixed seed; UserError when langdetect is absent."""
    try:
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
    except ImportError:
        raise UserError("IFEval's language checks need langdetect: pip install langdetect") from None
    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(0)
    return factory


def detect_language(text: str) -> str | None:
    """langdetect's ISO code for `text`, or None when it finds no features (no letters)."""
    detector = language_detector_factory().create()
    from langdetect.lang_detect_exception import LangDetectException

    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None


# Used only without Punkt's trained English model: the abbreviations most likely in answers to IFEval prompts.
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e inc ltd co corp dept est approx fig vol a.m p.m u.s u.k "
    "jan feb mar apr jun jul aug sep sept oct nov dec gen gov sen rep capt col lt sgt ave blvd".split())


@functools.cache
def sentence_tokenizer():
    """Punkt with nltk's English model when installed (the reference's choice), else with ABBREVIATIONS."""
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTokenizer

    try:
        return PunktTokenizer("english")
    except LookupError:
        params = PunktParameters()
        params.abbrev_types = set(ABBREVIATIONS)
        return PunktSentenceTokenizer(params)


def count_sentences(text: str) -> int:
    return len(sentence_tokenizer().tokenize(text))


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


# --- keywords --------------------------------------------------------------------------------------------------

def keyword_existence(response: str, *, keywords: Sequence[str]) -> bool:
    return all(re.search(re.escape(k), response, re.IGNORECASE) for k in keywords)


def keyword_frequency(response: str, *, keyword: str, frequency: int, relation: Relation) -> bool:
    found = re.findall(re.escape(keyword.strip()), response, re.IGNORECASE)
    return _holds(len(found), relation, frequency)


def forbidden_words(response: str, *, forbidden_words: Sequence[str]) -> bool:
    return not any(re.search(rf"\b{re.escape(w)}\b", response, re.IGNORECASE) for w in forbidden_words)


def letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: Relation) -> bool:
    return _holds(response.lower().count(letter.strip().lower()), let_relation, let_frequency)


# --- language and case -----------------------------------------------------------------------------------------

def response_language(response: str, *, language: str) -> bool:
    found = detect_language(response)
    return found is None or found == language  # undetectable text passes, as in the reference


def english_capital(response: str) -> bool:
    return response.isupper() and detect_language(response) in ("en", None)


def english_lowercase(response: str) -> bool:
    return response.islower() and detect_language(response) in ("en", None)


def capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: Relation) -> bool:
    from nltk.tokenize import word_tokenize

    capitals = sum(word.isupper() for word in word_tokenize(response, preserve_line=True))
    return _holds(capitals, capital_relation, capital_frequency)


# --- length ----------------------------------------------------------------------------------------------------

def number_sentences(response: str, *, num_sentences: int, relation: Relation) -> bool:
    return _holds(count_sentences(response), relation, num_sentences)


def number_words(response: str, *, num_words: int, relation: Relation) -> bool:
    return _holds(count_words(response), relation, num_words)


def number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Paragraphs separated by the markdown divider ***; an empty one is allowed only at either end."""
    parts = re.split(r"\s?\*\*\*\s?", response)
    inner_empty = any(not p.strip() for p in parts[1:-1])
    ends_empty = (not parts[0].strip()) + (len(parts) > 1 and not parts[-1].strip())
    return not inner_empty and len(parts) - ends_empty == num_paragraphs


def nth_paragraph_first_word(response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Paragraphs separated by blank lines; the nth (counted in the split, empty ones included, as the
    reference does) must start with `first_word`, ignoring case and trailing punctuation."""
    parts = response.split("\n\n")
    count = sum(bool(p.strip()) for p in parts)
    if nth_paragraph > count or not parts[nth_paragraph - 1].strip():
        return False
    word = parts[nth_paragraph - 1].split()[0].strip().lstrip("'").lstrip('"')
    word = re.split(r"""[.,?!'"]""", word, maxsplit=1)[0].lower()
    return count == num_paragraphs and word == first_word.lower()


# --- content and format ----------------------------------------------------------------------------------------

def number_placeholders(response: str, *, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def postscript(response: str, *, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    pattern = {"P.P.S": r"\s*p\.\s?p\.\s?s", "P.S.": r"\s*p\.\s?s\."}.get(marker, re.escape(marker.lower()))
    return re.search(pattern, response.lower()) is not None


def number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """Exactly `num_bullets` lines starting with "* " style or "-" bullets."""
    stars = re.findall(r"^\s*\*[^*].*$", response, re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def constrained_response(response: str) -> bool:
    return any(option in response for option in CONSTRAINED_RESPONSES)


def number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """*italic* or **bold** highlights within one line, not blank inside."""
    single = [h for h in re.findall(r"\*[^\n*]*\*", response) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n*]*\*\*", response) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    marker = re.escape(section_spliter.strip())
    return len(re.split(rf"\s?{marker}\s?\d+\s?", response)) - 1 >= num_sections


def json_format(response: str) -> bool:
    """The whole response parses as JSON once a markdown code fence around it is removed."""
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):  # in turn, as the reference strips them
        text = text.removeprefix(fence)
    try:
        json.loads(text.removesuffix("```").strip())
    except ValueError:
        return False
    return True


def title(response: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


def two_responses(response: str) -> bool:
    """Two different answers separated by ******; only the ends may be empty."""
    parts = response.split("******")
    if any(not p.strip() for p in parts[1:-1]):
        return False
    answers = [p.strip() for p in parts if p.strip()]
    return len(answers) == 2 and answers[0] != answers[1]


def repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(response: str, *, end_phrase: str) -> bool:
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(response: str) -> bool:
    text = response.strip()
    return len(text) > 1 and text[0] == text[-1] == '"'


def no_comma(response: str) -> bool:
    return "," not in response


CHECKERS: dict[str, Callable[..., bool]] = {
    "keywords:existence": keyword_existence,
    "keywords:frequency": keyword_frequency,
    "keywords:forbidden_words": forbidden_words,
    "keywords:letter_frequency": letter_frequency,
    "language:response_language": response_language,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:number_words": number_words,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "detectable_content:number_placeholders": number_placeholders,
    "detectable_content:postscript": postscript,
    "detectable_format:number_bullet_lists": number_bullet_lists,
    "detectable_format:constrained_response": constrained_response,
    "detectable_format:number_highlighted_sections": number_highlighted_sections,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:json_format": json_format,
    "detectable_format:title": title,
    "combination:two_responses": two_responses,
    "combination:repeat_prompt": repeat_prompt,
    "startend:end_checker": end_checker,
    "startend:quotation": quotation,
    "change_case:capital_word_frequency": capital_word_frequency,
    "change_case:english_capital": english_capital,
    "change_case:english_lowercase": english_lowercase,
    "punctuation:no_comma": no_comma,
}


# --- building and grading --------------------------------------------------------------------------------------

def _bad_value(annotation, value) -> str | None:
    """Why `value` does not fit the checker's parameter annotation (None when it does)."""
    if get_origin(annotation) is Literal:
        return None if value in get_args(annotation) else f"must be one of {get_args(annotation)}"
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if ok else "must be a non-negative integer"
    if annotation is str:
        return None if isinstance(value, str) and value.strip() else "must be a non-empty string"
    ok = isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value)
    return None if ok else "must be a non-empty list of strings"


@functools.cache
def _parameters(instruction_id: str) -> dict[str, object]:
    hints = get_type_hints(CHECKERS[instruction_id])
    params = inspect.signature(CHECKERS[instruction_id]).parameters
    return {name: hints[name] for name, p in params.items() if p.kind is p.KEYWORD_ONLY}


def build_checker(key, instruction_id: str, kwargs: dict) -> Checker:
    """The checker for one instruction of record `key`, its kwargs bound; None-valued kwargs are absent (the
    official file's loaders fill every known name). Bad ids or kwargs raise UserError naming key and id."""
    where = f"IFEval record {key}, instruction {instruction_id!r}"
    if instruction_id not in CHECKERS:
        raise UserError(f"{where}: unknown instruction id (known: {', '.join(sorted(CHECKERS))})")
    if not isinstance(kwargs, dict):
        raise UserError(f"{where}: kwargs must be an object, got {kwargs!r}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    params = _parameters(instruction_id)
    if extra := sorted(set(given) - set(params)):
        raise UserError(f"{where}: unexpected kwargs {extra} (takes {sorted(params) or 'none'})")
    if missing := sorted(set(params) - set(given)):
        raise UserError(f"{where}: missing kwargs {missing}")
    for name, value in given.items():
        if why := _bad_value(params[name], value):
            raise UserError(f"{where}: kwarg {name}={value!r} {why}")
    if instruction_id == "keywords:letter_frequency" and len(given["letter"].strip()) != 1:
        raise UserError(f"{where}: kwarg letter={given['letter']!r} must be one character")
    if instruction_id == "length_constraints:nth_paragraph_first_word" and not (
            1 <= given["nth_paragraph"] <= given["num_paragraphs"]):
        raise UserError(f"{where}: nth_paragraph must be between 1 and num_paragraphs")
    return functools.partial(CHECKERS[instruction_id], **given)


def loose_variants(response: str) -> list[str]:
    """The response, without its first line, last line or both, and each of those without asterisks."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, *cut, *(text.replace("*", "") for text in (response, *cut))]


def follows(checker: Checker, response: str) -> bool:
    return bool(response.strip()) and checker(response)


def grade(checkers: Sequence[Checker], response: str) -> tuple[list[bool], list[bool]]:
    """Per instruction: (strict verdicts, loose verdicts)."""
    variants = loose_variants(response)
    strict = [follows(c, response) for c in checkers]
    loose = [s or any(follows(c, v) for v in variants[1:]) for c, s in zip(checkers, strict)]
    return strict, loose
