"""The task registry: every benchmark as data (loader + prompt + choices or decoding + metrics + shots).

A task is a `Task` record: multiple-choice tasks list choices per item and are scored by log-likelihood;
generation tasks (`output="generate"`) decode a completion per item under their `Generation` settings and a
`score` function turns completions into per-item metrics. Each benchmark family lives in its own module and registers its tasks here,
so a benchmark's quirks (label encodings, prompt suffixes, file layout) sit in one readable file.
Group names (`kobest`, `mmlu`, ...) expand to their member tasks. Files are read from a benchmark root
(`data_root`, env `OPENHCX_BENCHMARKS`, or `shared/benchmarks` beside the checkout) plus the family's
folder, which a caller may point elsewhere (`data={"kmmlu": "/my/kmmlu"}`).

Not here: prompting mechanics shared by all tasks (harness.py) and scoring (metrics.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from openhcx.io import UserError


@dataclass(frozen=True)
class Item:
    """One benchmark question, already in prompt form.

    `query` is the text before the answer (lm-eval's doc_to_text), `choices` the scored continuations,
    `gold` the index (or indices) of the correct one(s). Tasks whose choices change the context instead
    of the continuation (Winogrande's partial scoring) set `contexts` (one per choice) and `target`.
    `question`/`options` hold the raw question for the report's letter-scoring mode. `meta` keeps what
    a metric needs beyond accuracy (BBQ's context condition, TruthfulQA's label set).
    """

    query: str
    choices: tuple[str, ...]
    gold: int | tuple[int, ...]
    question: str = ""
    options: tuple[str, ...] = ()
    contexts: tuple[str, ...] = ()
    target: str = ""
    meta: tuple[tuple[str, object], ...] = ()

    def get(self, key: str, default=None):
        return dict(self.meta).get(key, default)

    def answer_text(self) -> str:
        """The correct answer as it appears after the prompt in a few-shot example."""
        if self.contexts or not self.choices:  # partial scoring, or a generation item's reference answer
            return self.target
        gold = self.gold[0] if isinstance(self.gold, tuple) else self.gold
        return self.choices[gold]


@dataclass(frozen=True)
class Generation:
    """How a generation task decodes. temperature 0 is greedy; `samples` completions per prompt (pass@k,
    maj@k); `chat` sends the prompt as a user turn through the model's chat template; a prompt with several
    user turns (`Item.meta["turns"]`) is answered turn by turn."""

    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    samples: int = 1
    chat: bool = False


class ScoreContext(Protocol):
    """What a scorer may use besides the completions: worker processes and, for judged tasks, a judge."""

    workers: int
    progress: bool

    def judge(self, prompts: list[list[dict]]) -> list[str | None]: ...  # chats -> replies (None: failed)


Scorer = Callable[[list[Item], list[list[str]], ScoreContext], list[dict]]
"""(items, completions per item, context) -> one record per item: the task's metrics as floats, plus any
fields worth keeping in the per-item samples file (extracted answers, failure reasons)."""


@dataclass(frozen=True)
class Task:
    """A benchmark task: where its files are, how to read them, how to prompt and score them."""

    name: str
    family: str  # folder under the benchmark root, and the key for `data=` overrides
    load: Callable[[Path, str], list[Item]]  # (family dir, split) -> items, in file order
    eval_split: str
    fewshot_split: str | None = None
    shots: int = 0  # RECIPE §6 default; callers may override
    sampler: str = "random"  # "random" (lm-eval default, seeded) or "first_n" (canonical order)
    description: str = ""
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    primary: str = "acc"  # the metric that enters category scores
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    answer_prompt: str = "Answer:"  # letter mode: the line after the lettered options
    output: str = "multiple_choice"  # or "generate"
    generation: Generation | None = None  # generation tasks: decoding settings
    score: Scorer | None = None  # generation tasks: completions -> per-item metrics (averaged over items)
    aggregate: Callable[[list[dict]], dict[str, float]] | None = None  # corpus-level metrics instead of means


@dataclass
class Registry:
    tasks: dict[str, Task] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)

    def add(self, task: Task, *groups: str) -> None:
        self.tasks[task.name] = task
        for g in groups:
            self.groups.setdefault(g, []).append(task.name)

    def expand(self, names: list[str]) -> list[Task]:
        """Task and group names -> tasks, in the order given, without duplicates."""
        out: dict[str, Task] = {}
        for name in names:
            if name in self.tasks:
                out[name] = self.tasks[name]
            elif name in self.groups:
                out.update((n, self.tasks[n]) for n in self.groups[name])
            else:
                raise UserError(f"tasks: unknown task {name!r}; {self.suggest(name)}")
        return list(out.values())

    def suggest(self, name: str) -> str:
        """The closest task and group names, and the groups, instead of all two hundred names."""
        import difflib

        names = sorted(set(self.tasks) | set(self.groups))
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        close += [n for n in names if name.lower() in n and n not in close][: 5 - len(close)]
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return hint + f"groups: {', '.join(sorted(self.groups))}"


REGISTRY = Registry()


def default_root() -> Path:
    if env := os.environ.get("OPENHCX_BENCHMARKS"):
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "benchmarks"


def task_dir(task: Task, data_root: str | Path | None = None, data: dict[str, str] | None = None) -> Path:
    if data and task.family in data:
        return Path(data[task.family])
    return Path(data_root or default_root()) / task.family


def _register_all() -> None:
    from openhcx.eval.tasks import (  # noqa: F401  (each module registers its tasks)
        agieval,
        arc,
        bbq,
        clickbench,
        code,
        commonsense,
        haerae,
        ifeval,
        kmmlu,
        kobest,
        math,
        mmlu,
        mt_bench,
        qa,
        safety,
        translation,
        truthfulqa,
        xnli,
    )


_register_all()
