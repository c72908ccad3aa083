"""Answer extraction and matching for generated answers (GSM8K, MATH, NaturalQuestions, BBH), as pure functions.

GSM8K: `strict_number` reads the first `#### n` (lm-evaluation-harness's strict-match regex), `flexible_number`
the last number in the text (lm-eval's flexible-extract regex, skipping matches without a digit such as "...");
`normalize_number` drops `$`, commas and a trailing period and writes numbers canonically ("1,000.00" -> "1000").
MATH: `last_boxed` takes the last `\\boxed{...}` / `\\fbox{...}` with nested braces; `normalize_math` is the
Hendrycks `strip_string` normalisation (\\left/\\right, \\!, dfrac/tfrac, \\frac12, .5, degrees, units, spaces,
a/b, `x =`) plus Minerva's (thousands separators, unit words, \\text{} wrappers): `math_equal` accepts the
pairs Hendrycks' `is_equiv` accepts (tested on MATH-500's answers) and more. NQ: SQuAD's answer normalisation,
best over the gold answers. BBH: `before_stop` (the stripped text before the first stop). `majority_vote` for
maj@k. Not here: symbolic equivalence (no sympy: "\\frac{1}{4}" and "0.25" differ, as in Hendrycks' grading),
prompts and decoding (tasks/math.py, tasks/qa.py).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from decimal import Decimal, InvalidOperation

# GSM8K (lm-eval's gsm8k.yaml filters)
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def strict_number(text: str) -> str:
    """The number after the first `#### `, or "" when there is none."""
    m = STRICT.search(text)
    return m.group(1).strip() if m else ""


def flexible_number(text: str) -> str:
    """The last number-like run in the text, or ""; runs without a digit ("...", ",,") are not numbers."""
    runs = [a or b for a, b in FLEXIBLE.findall(text)]
    runs = [r for r in runs if any(c.isdigit() for c in r)]
    return runs[-1].strip() if runs else ""


def normalize_number(text: str) -> str:
    """`$1,000.00.` -> `1000`; text that is not a number after dropping `$`, commas and a final period is
    returned lower-cased as it is (it can still match a gold answer that reads the same)."""
    s = text.strip().replace("$", "").replace(",", "").rstrip(".").strip()
    try:
        d = Decimal(s)
    except InvalidOperation:
        return s.lower()
    if not d.is_finite():
        return s.lower()
    s = format(d.normalize(), "f")
    return "0" if s in ("-0", "0") else s


def gsm8k_gold(solution: str) -> str:
    """The reference number of a GSM8K solution (the text after its `#### `), normalised."""
    return normalize_number(solution.split("####")[-1])


# MATH
def last_boxed(text: str) -> str:
    """Contents of the last `\\boxed{...}` or `\\fbox{...}` (braces balanced), or of `\\boxed x`; "" if there is
    none or the last one is never closed (a completion cut off inside it)."""
    starts = list(re.finditer(r"\\boxed\s*\{|\\fbox\s*\{|\\boxed (?=\S)", text))
    if not starts:
        return ""
    end = starts[-1].end()
    if not text[:end].endswith("{"):  # `\boxed 5`: up to the next `$` or the end
        return text[end:].split("$")[0].strip()
    depth = 1
    for i in range(end, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[end:i]
    return ""


MINERVA_FINAL = re.compile(r"Final Answer: The final answer is(.*?)\. I hope it is correct\.", re.S)


def math_answer(completion: str) -> str:
    """A MATH completion's answer: its last boxed expression, else Minerva's `Final Answer: The final answer
    is X. I hope it is correct.` sentence (the few-shot solutions end with both), else ""."""
    boxed = last_boxed(completion)
    if boxed:
        return boxed
    m = MINERVA_FINAL.search(completion + " I hope it is correct.")
    return m.group(1).strip() if m else ""


UNIT_WORDS = ("units? square degrees? cm centimeters? meters? km mph inches feet ft hours? minutes? seconds? "
              "cents? dollars? pounds? ways points? digits? students? edges? meals").split()
UNITS = re.compile(r"(?<![\\a-zA-Z])(?:" + "|".join(UNIT_WORDS) + r")(?![a-zA-Z])")
WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def _arg(s: str, i: int) -> tuple[str, int]:
    """The LaTeX argument starting at s[i] (spaces skipped): a brace group, a command, or one character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] == "{":
        depth = 0
        for j in range(i, len(s)):
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                return s[i + 1:j], j + 1
        return s[i + 1:], len(s)
    if s[i] == "\\":
        m = re.match(r"\\[a-zA-Z]+|\\.?", s[i:])
        return m.group(0), i + len(m.group(0))
    return s[i], i + 1


def _brace_args(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` -> `\\frac{1}{72}`, `\\sqrt3` -> `\\sqrt{3}`, `\\sqrt[3]8` ->
    `\\sqrt[3]{8}`: every \\frac and \\sqrt with braced arguments."""
    out, i = [], 0
    for m in re.finditer(r"\\(frac|sqrt)(?![a-zA-Z])", s):
        if m.start() < i:
            continue
        out.append(s[i:m.start()])
        j = m.end()
        if m.group(1) == "frac":
            a, j = _arg(s, j)
            b, j = _arg(s, j)
            out.append(f"\\frac{{{_brace_args(a)}}}{{{_brace_args(b)}}}")
        else:
            index = re.match(r"\s*(\[[^\]]*\])?", s[j:])
            j += index.end()
            a, j = _arg(s, j)
            out.append(f"\\sqrt{index.group(1) or ''}{{{_brace_args(a)}}}")
        i = j
    return "".join(out) + s[i:]


def normalize_math(answer: str) -> str:
    """A MATH answer in canonical form; two answers match when their forms are equal."""
    s = answer.strip().replace("\n", "")
    s = re.sub(r"\\[dt]frac", r"\\frac", s).replace("\\displaystyle", "")
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = re.sub(r"(?<!\\)\\[!,;: ]|~", "", s)  # thin and explicit spaces (not a `\\` row break)
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.replace("\\mbox", "\\text")
    s = s.split("\\text{ ")[0] if "\\text{ " in s[1:] else s  # "\text{ " starts units ("5\text{ cm}")
    s = UNITS.sub("", s)
    s = re.sub(r"\\text\{\s*\}(\^\{?[23]\}?)?", "", s)  # what a unit left: "\text{}^2"
    s = WRAPPERS.sub(r"\1", s)
    s = s.replace(" ", "").rstrip(".")
    s = re.sub(r"^[a-zA-Z]\\in", "", s)  # "x \in [a,b]"
    if s.count("=") == 1 and len(s.split("=")[0]) <= 2:  # "x = 5", "k=3"
        s = s.split("=")[1]
    s = _brace_args(s)
    s = re.sub(r"([\^_])\{(\w)\}", r"\1\2", s)  # x^{2} -> x^2
    s = re.sub(r"(?<!\d)\.(\d)", r"0.\1", s)  # .5 -> 0.5
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):  # 10,080 (not a pair like 1,2)
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d+", s):
        s = s.rstrip("0").rstrip(".")
    if m := re.fullmatch(r"(-?\d+)/(\d+)", s):
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    return "\\frac{1}{2}" if s == "0.5" else s


def math_equal(answer: str, gold: str) -> bool:
    """Equal canonical forms; an answer with nothing left after normalisation ("\\text{ units}") matches nothing."""
    form = normalize_math(answer)
    return bool(form) and form == normalize_math(gold)


# NaturalQuestions (SQuAD's normalisation)
ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_qa(text: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces: SQuAD's `normalize_answer`."""
    return " ".join(ARTICLES.sub(" ", text.lower().translate(PUNCTUATION)).split())


def qa_exact_match(prediction: str, golds: tuple[str, ...] | list[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    p = normalize_qa(prediction)
    return max((float(p == normalize_qa(g)) for g in golds), default=0.0)


# BBH and shared helpers
def before_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text before the earliest stop sequence, stripped (lm-eval's generation cut, then its strip)."""
    hits = [text.index(s) for s in stop if s and s in text]
    return (text[: min(hits)] if hits else text).strip()


def majority_vote(answers: list[str]) -> str:
    """The most common non-empty answer (answers already normalised); ties go to the one seen first; "" if none."""
    votes = [a for a in answers if a]
    if not votes:
        return ""
    counts = Counter(votes)
    return max(dict.fromkeys(votes), key=counts.__getitem__)  # max keeps the first of equal counts
