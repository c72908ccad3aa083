"""GSM8K and MATH-500, answered by generation: greedy tasks as lm-evaluation-harness runs them, and the report's
maj@k variants (RECIPE §6: GSM8K 8-shot maj@8 at T=0.7, MATH 4-shot maj@4 at T=0.2).

GSM8K (`gsm8k/{train,test}.jsonl`): lm-eval's `gsm8k` prompt "Question: ...\\nAnswer:" with the full reference
solution as each shot's answer, 8 shots drawn at random from train per item (lm-eval's seeded sampler), stops
"Question:", "</s>", "<|im_end|>"; scored by strict (`#### n`) and flexible (last number) extraction.
MATH-500 (`math500/test.jsonl`): Minerva's prompt "Problem:\\n...\\n\\nSolution:" with Minerva's four fixed
solutions (below; each ends with the boxed answer and a "Final Answer: ..." sentence), stop "Problem:"; the
answer is the last \\boxed{} of the completion, compared with the file's `answer` after `normalize_math`.
A maj@k task votes over the normalised answers of its k samples; its exact-match metrics are means over samples.
Not here: extraction and normalisation (openhcx.eval.answers), decoding (harness.py).
"""

from __future__ import annotations

from pathlib import Path

from openhcx.eval.answers import (before_stop, flexible_number, gsm8k_gold, majority_vote, math_answer,
                                  normalize_math, normalize_number, strict_number)
from openhcx.eval.tasks import REGISTRY, Generation, Item, ScoreContext, Task
from openhcx.eval.tasks.files import field, read_jsonl
from openhcx.io import UserError

GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")
MATH_STOP = ("Problem:",)
MINERVA_SPLIT = "minerva"  # the few-shot "split" of MATH-500: the four fixed Minerva examples
MINERVA_SHOTS = (
    ("Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
     "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and "
     "$5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. "
     "Therefore, the domain of the expression is $\\boxed{[2,5)}$.\n"
     "Final Answer: The final answer is $[2,5)$. I hope it is correct."),
    ("If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
     "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = "
     "\\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct."),
    ("Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times "
     "must Terrell lift them in order to lift the same total weight?",
     "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds of "
     "weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of $2\\cdot15\\cdot "
     "n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n"
     "30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\n"
     "Final Answer: The final answer is $16$. I hope it is correct."),
    ("If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a solution "
     "$(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is nonzero.",
     "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we also "
     "know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
     "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct."),
)


def load_gsm8k(root: Path, split: str) -> list[Item]:
    path = root / f"{split}.jsonl"
    items = []
    for n, r in read_jsonl(path):
        solution = field(path, n, r, "answer")
        if "####" not in solution:
            raise UserError(f"{path}:{n}: the answer has no final '#### <number>' line")
        items.append(Item(query=f"Question: {field(path, n, r, 'question')}\nAnswer:", choices=(), gold=0,
                          target=solution, meta=(("answer", gsm8k_gold(solution)),)))
    return items


def load_math500(root: Path, split: str) -> list[Item]:
    if split == MINERVA_SPLIT:
        return [Item(query=minerva_query(p), choices=(), gold=0, target=s) for p, s in MINERVA_SHOTS]
    path = root / f"{split}.jsonl"
    return [Item(query=minerva_query(field(path, n, r, "problem")), choices=(), gold=0,
                 target=field(path, n, r, "solution"),
                 meta=(("answer", field(path, n, r, "answer")), ("subject", r.get("subject")),
                       ("level", r.get("level"))))
            for n, r in read_jsonl(path)]


def minerva_query(problem: str) -> str:
    return f"Problem:\n{problem}\n\nSolution:"


def majority_record(answers: list[str], gold: str) -> dict:
    """maj@k over already-normalised answers: the voted answer and whether it is right (nothing for k = 1)."""
    if len(answers) == 1:
        return {}
    top = majority_vote(answers)
    return {f"maj_at_{len(answers)}": float(bool(top) and top == gold), "majority": top}


def score_gsm8k(items: list[Item], completions: list[list[str]], ctx: ScoreContext) -> list[dict]:
    records = []
    for item, comps in zip(items, completions):
        gold = item.get("answer")
        comps = [before_stop(c, GSM8K_STOP) for c in comps]  # generators cut already; endpoints may not
        strict = [normalize_number(strict_number(c)) for c in comps]
        flexible = [normalize_number(flexible_number(c)) for c in comps]
        records.append({"gold": gold, "strict": strict, "flexible": flexible,
                        "exact_match_strict": sum(a == gold for a in strict) / len(comps),
                        "exact_match_flexible": sum(a == gold for a in flexible) / len(comps),
                        **majority_record(flexible, gold)})
    return records


def score_math(items: list[Item], completions: list[list[str]], ctx: ScoreContext) -> list[dict]:
    records = []
    for item, comps in zip(items, completions):
        gold = normalize_math(item.get("answer"))
        answers = [normalize_math(a) if (a := math_answer(before_stop(c, MATH_STOP))) else "" for c in comps]
        records.append({"gold": gold, "answers": answers,
                        "exact_match": sum(bool(a) and a == gold for a in answers) / len(comps),
                        **majority_record(answers, gold)})
    return records


def _gsm8k(name: str, generation: Generation, metrics: tuple[str, ...]) -> Task:
    return Task(name, "gsm8k", load_gsm8k, eval_split="test", fewshot_split="train", shots=8, sampler="random",
                metrics=metrics, primary=metrics[0], output="generate", generation=generation, score=score_gsm8k)


def _math500(name: str, generation: Generation, metrics: tuple[str, ...]) -> Task:
    return Task(name, "math500", load_math500, eval_split="test", fewshot_split=MINERVA_SPLIT, shots=4,
                sampler="first_n", metrics=metrics, primary=metrics[0], output="generate", generation=generation,
                score=score_math)


REGISTRY.add(_gsm8k("gsm8k", Generation(256, GSM8K_STOP), ("exact_match_flexible", "exact_match_strict")))
REGISTRY.add(_gsm8k("gsm8k_maj8", Generation(256, GSM8K_STOP, temperature=0.7, samples=8),
                    ("maj_at_8", "exact_match_flexible", "exact_match_strict")))
REGISTRY.add(_math500("math500", Generation(512, MATH_STOP), ("exact_match",)))
REGISTRY.add(_math500("math500_maj4", Generation(512, MATH_STOP, temperature=0.2, samples=4),
                      ("maj_at_4", "exact_match")))
