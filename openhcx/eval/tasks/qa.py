"""NaturalQuestions-open and BIG-Bench Hard, answered by greedy generation and scored by exact match.

NQ-open (`nq_open/NQ-open.dev.jsonl`, {question, answer list}): lm-evaluation-harness's `nq_open` prompt
("Answer these questions:\\n\\n", "Q: ...?\\nA:", shots joined by "\\n", a shot's answer is its first gold
answer), stops "\\n", ".", ","; a completion is right when its SQuAD-normalised text equals any gold answer's.
lm-eval draws shots from NQ's train split, which is not shipped here: the 5 shots are the first five dev
questions (each of those five is prompted with the next ones instead of itself).
BBH (`bbh/<task>.json`, 27 tasks): lm-eval's `bbh_fewshot` (3-shot, no chain of thought) prompt: the task's
one-line description, "Q: ...\\nA: target" shots, exact (case-sensitive) match of the stripped completion cut at
the stops. lm-eval's three shots come from BBH's prompt files, which are not shipped here: the shots are the first
three examples of each file (each of those three is prompted with the next ones). lm-eval's stop "Q" is "Q:" here,
so that the seven "(Q)" answers of reasoning_about_colored_objects can be right.
Not here: answer normalisation (openhcx.eval.answers), decoding (harness.py).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from openhcx.eval.answers import before_stop, qa_exact_match
from openhcx.eval.tasks import REGISTRY, Generation, Item, ScoreContext, Task
from openhcx.eval.tasks.files import field, read_jsonl
from openhcx.io import UserError, require_file

NQ_STOP = ("\n", ".", ",")
BBH_STOP = ("</s>", "Q:", "\n\n")
BBH = {  # task -> description (the first line of BBH's prompt file, as lm-eval's bbh_fewshot shows it)
    "boolean_expressions": "Evaluate the result of a random Boolean expression.",
    "causal_judgement": "Answer questions about causal attribution.",
    "date_understanding": "Infer the date from context.",
    "disambiguation_qa": "Clarify the meaning of sentences with ambiguous pronouns.",
    "dyck_languages": "Correctly close a Dyck-n word.",
    "formal_fallacies": "Distinguish deductively valid arguments from formal fallacies.",
    "geometric_shapes": "Name geometric shapes from their SVG paths.",
    "hyperbaton": "Order adjectives correctly in English sentences.",
    "logical_deduction_five_objects": "A logical deduction task which requires deducing the order of a sequence "
                                      "of objects.",
    "logical_deduction_seven_objects": "A logical deduction task which requires deducing the order of a sequence "
                                       "of objects.",
    "logical_deduction_three_objects": "A logical deduction task which requires deducing the order of a sequence "
                                       "of objects.",
    "movie_recommendation": "Recommend movies similar to the given list of movies.",
    "multistep_arithmetic_two": "Solve multi-step arithmetic problems.",
    "navigate": "Given a series of navigation instructions, determine whether one would end up back at the "
                "starting point.",
    "object_counting": "Questions that involve enumerating objects and asking the model to count them.",
    "penguins_in_a_table": "Answer questions about a table of penguins and their attributes.",
    "reasoning_about_colored_objects": "Answer extremely simple questions about the colors of objects on a surface.",
    "ruin_names": "Select the humorous edit that 'ruins' the input movie or musical artist name.",
    "salient_translation_error_detection": "Detect the type of error in an English translation of a German "
                                           "source sentence.",
    "snarks": "Determine which of two sentences is sarcastic.\n\nAccording to Cambridge University Dictionary, "
              "sarcasm is \"the use of remarks that clearly mean the opposite of what they say, made in order to "
              "hurt someone's feelings or to criticize something in a humorous way.\" Sarcastic sentences often "
              "contain satirical or ironic utterances, hyperboles, ambivalent or witty remarks.",
    "sports_understanding": "Determine whether an artificially constructed sentence relating to sports is "
                            "plausible or not.",
    "temporal_sequences": "Task description: Answer questions about which times certain events could have "
                          "occurred.",
    "tracking_shuffled_objects_five_objects": "A task requiring determining the final positions of a set of "
                                              "objects given their initial positions and a description of a "
                                              "sequence of swaps.",
    "tracking_shuffled_objects_seven_objects": "A task requiring determining the final positions of a set of "
                                               "objects given their initial positions and a description of a "
                                               "sequence of swaps.",
    "tracking_shuffled_objects_three_objects": "A task requiring determining the final positions of a set of "
                                               "objects given their initial positions and a description of a "
                                               "sequence of swaps.",
    "web_of_lies": "Evaluate a random boolean function expressed as a word problem.",
    "word_sorting": "Sort a list of words.",
}


def load_nq(root: Path, split: str) -> list[Item]:
    path = root / f"NQ-open.{split}.jsonl"
    items = []
    for n, r in read_jsonl(path):
        answers = field(path, n, r, "answer")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise UserError(f"{path}:{n}: 'answer' must be a non-empty list of strings, found {answers!r}")
        items.append(Item(query=f"Q: {field(path, n, r, 'question')}?\nA:", choices=(), gold=0, target=answers[0],
                          meta=(("answers", tuple(answers)),)))
    return items


def load_bbh(name: str, root: Path, split: str) -> list[Item]:
    path = require_file(root / f"{name}.json", "benchmark file")
    try:
        examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
        return [Item(query=f"Q: {e['input']}\nA:", choices=(), gold=0, target=e["target"]) for e in examples]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a JSON file ({e})") from None
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: expected {{\"examples\": [{{\"input\", \"target\"}}, ...]}}, missing {e}") from None


def score_nq(items: list[Item], completions: list[list[str]], ctx: ScoreContext) -> list[dict]:
    out = []
    for item, comps in zip(items, completions):
        answer = before_stop(comps[0], NQ_STOP)
        out.append({"answer": answer, "exact_match": qa_exact_match(answer, item.get("answers"))})
    return out


def score_bbh(items: list[Item], completions: list[list[str]], ctx: ScoreContext) -> list[dict]:
    out = []
    for item, comps in zip(items, completions):
        answer = before_stop(comps[0], BBH_STOP)
        out.append({"answer": answer, "gold": item.target, "exact_match": float(answer == item.target)})
    return out


REGISTRY.add(Task("nq_open", "nq_open", load_nq, eval_split="dev", fewshot_split="dev", shots=5, sampler="first_n",
                  description="Answer these questions:\n\n", fewshot_delimiter="\n", metrics=("exact_match",),
                  primary="exact_match", output="generate", generation=Generation(32, NQ_STOP), score=score_nq))
for _name, _description in BBH.items():
    REGISTRY.add(Task(f"bbh_{_name}", "bbh", partial(load_bbh, _name), eval_split="test", fewshot_split="test",
                      shots=3, sampler="first_n", description=_description + "\n\n", metrics=("exact_match",),
                      primary="exact_match", output="generate", generation=Generation(256, BBH_STOP),
                      score=score_bbh), "bbh")
