"""Code benchmarks scored by running the model's programs: HumanEval, K-HumanEval and MBPP, with pass@k.

HumanEval format (openai/human-eval's `HumanEval.jsonl.gz`, or any `.jsonl`/`.jsonl.gz` with its fields
task_id, prompt, entry_point, canonical_solution, test; the one such file in the family folder): the prompt is
the function header and docstring, the program is prompt + completion + "\\n" + test + "\\ncheck(entry_point)",
decoding stops at the HumanEval paper's stop sequences. `k_humaneval` reads the same format (e.g. a
Korean-prompt translation) from its own folder. MBPP (google-research's `mbpp.jsonl`: task_id, text, code,
test_list, test_setup_code, challenge_test_list; splits by task id as published: prompt 1-10, test 11-510,
validation 511-600, train 601-974) is prompted as in the MBPP paper and lm-evaluation-harness's `mbpp`, with
tasks 2, 3 and 4 as the three shots and "[DONE]" ending each answer; its program is test_setup_code +
completion + the three asserts (challenge tests unused, as lm-eval). pass@k is the unbiased estimator of Chen et
al. 2021 over n samples per problem. Not here: running programs safely (sandbox.py).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from openhcx.eval import sandbox
from openhcx.eval.tasks import REGISTRY, Generation, Item, ScoreContext, Task
from openhcx.eval.tasks.files import field, read_jsonl
from openhcx.io import UserError

HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
               "train": range(601, 975), "fewshot": (2, 3, 4)}
LIMITS = sandbox.Limits()


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n, c of them correct, is correct):
    1 - C(n-c, k) / C(n, k), as the product prod_{i=n-c+1}^{n} (1 - k/i), which never forms huge binomials."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def humaneval_file(root: Path) -> Path:
    files = sorted(p for p in root.glob("*.jsonl*") if p.name.endswith((".jsonl", ".jsonl.gz")))
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise UserError(f"{root}: expected one HumanEval-format file (*.jsonl or *.jsonl.gz), found {found}")
    return files[0]


def load_humaneval(root: Path, split: str) -> list[Item]:
    """Every problem of the folder's file (HumanEval has one split); the reference answer is the canonical one."""
    path = humaneval_file(root)
    items = []
    for n, r in read_jsonl(path):
        values = {k: field(path, n, r, k) for k in ("task_id", "prompt", "entry_point", "canonical_solution", "test")}
        items.append(Item(query=values["prompt"], choices=(), gold=0, target=values["canonical_solution"],
                          meta=tuple((k, values[k]) for k in ("task_id", "entry_point", "test"))))
    return items


def humaneval_program(item: Item, completion: str) -> str:
    return item.query + completion + "\n" + item.get("test") + f"\ncheck({item.get('entry_point')})\n"


def mbpp_prompt(text: str, tests: list[str]) -> str:
    return (f"You are an expert Python programmer, and here is your task: {text} Your code should pass these "
            "tests:\n\n" + "\n".join(tests) + "\n[BEGIN]\n")


def load_mbpp(root: Path, split: str) -> list[Item]:
    if split not in MBPP_SPLITS:
        raise UserError(f"mbpp: unknown split {split!r} (known: {', '.join(MBPP_SPLITS)})")
    path = root / "mbpp.jsonl"
    by_id = {}
    for n, r in read_jsonl(path):
        task_id, text, code, tests = (field(path, n, r, k) for k in ("task_id", "text", "code", "test_list"))
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise UserError(f"{path}:{n}: test_list must be a list of strings")
        by_id[task_id] = Item(query=mbpp_prompt(text, tests), choices=(), gold=0, target=f"{code}\n[DONE]",
                              meta=(("task_id", task_id), ("tests", tuple(tests)),
                                    ("setup", field(path, n, r, "test_setup_code"))))
    return [by_id[i] for i in MBPP_SPLITS[split] if i in by_id]


def mbpp_program(item: Item, completion: str) -> str:
    return item.get("setup") + "\n" + completion + "\n" + "\n".join(item.get("tests")) + "\n"


def score_programs(program, ks: tuple[int, ...], items: list[Item], completions: list[list[str]],
                   ctx: ScoreContext) -> list[dict]:
    """Run every completion's program in the sandbox (all items at once, `ctx.workers` in parallel); per item
    pass@k for each k up to its number of samples, the count passed, and each sample's status and reason."""
    programs = [[program(item, c) for c in comps] for item, comps in zip(items, completions)]
    outcomes = sandbox.run_many([p for ps in programs for p in ps], LIMITS, workers=ctx.workers,
                                progress=ctx.progress)
    records, pos = [], 0
    for ps in programs:
        mine, pos = outcomes[pos:pos + len(ps)], pos + len(ps)
        n, c = len(mine), sum(o.passed for o in mine)
        records.append({**{f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n}, "passed": c,
                        "status": [o.status for o in mine], "reason": [o.reason for o in mine]})
    return records


def _humaneval(name: str, family: str, samples: int = 1, temperature: float = 0.0, ks=(1,)) -> Task:
    return Task(name, family, load_humaneval, eval_split="test", metrics=tuple(f"pass@{k}" for k in ks),
                primary=f"pass@{ks[-1]}", output="generate",
                generation=Generation(max_new_tokens=512, stop=HUMANEVAL_STOP, temperature=temperature,
                                      top_p=0.95 if temperature else 1.0, samples=samples),
                score=partial(score_programs, humaneval_program, ks))


REGISTRY.add(_humaneval("humaneval", "humaneval"), "code")
REGISTRY.add(_humaneval("humaneval_pass10", "humaneval", samples=20, temperature=0.8, ks=(1, 10)))
REGISTRY.add(_humaneval("k_humaneval", "k_humaneval"), "code")
REGISTRY.add(Task("mbpp", "mbpp", load_mbpp, eval_split="test", fewshot_split="fewshot", shots=3, sampler="first_n",
                  metrics=("pass@1",), primary="pass@1", target_delimiter="", output="generate",
                  generation=Generation(max_new_tokens=512, stop=("[DONE]",)),
                  score=partial(score_programs, mbpp_program, (1,))), "code")
