"""Run lm-evaluation-harness offline on the same benchmark files, as the reference for parity tests.

The KoBEST TSVs and MMLU CSVs are converted here, independently of openhcx's loaders, to the field
names of the Hugging Face copies lm-eval's stock task configs expect, and lm-eval reads them through
its `json` loader. Prompts and choice functions are lm-eval's own.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRUTH = {"true": 1, "false": 0}


def _tsv(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    head, *lines = [ln for ln in text.split("\n") if ln.strip()]
    return [dict(zip(head.split("\t"), ln.split("\t"))) for ln in lines]


KOBEST = {
    "boolq": ("BoolQ", lambda r: {"paragraph": r["Text"], "question": r["Question"], "label": TRUTH[r["Answer"].lower()]}),
    "copa": ("COPA", lambda r: {"premise": r["sentence"], "question": r["question"], "alternative_1": r["1"],
                                "alternative_2": r["2"], "label": int(r["Answer"]) - 1}),
    "hellaswag": ("HellaSwag", lambda r: {"context": r["context"], **{f"ending_{i}": r[f"choice{i}"] for i in range(1, 5)},
                                          "label": int(r["label"])}),
    "sentineg": ("SentiNeg", lambda r: {"sentence": r["Text"], "label": int(r["Label"])}),
    "wic": ("WiC", lambda r: {"word": r["Target"], "context_1": r["SENTENCE1"], "context_2": r["SENTENCE2"],
                              "label": TRUTH[r["ANSWER"].lower()]}),
}


def _write(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def kobest_config(name: str, bench: Path, work: Path, shots: int) -> dict:
    from lm_eval.tasks.kobest import utils

    folder, convert = KOBEST[name]
    files = {s: _write(work / name / f"{s}.jsonl", [convert(r) for r in _tsv(bench / "kobest" / folder / f"{s}.tsv")])
             for s in ("train", "test")}
    cfg = {"task": f"kobest_{name}", "dataset_path": "json", "dataset_kwargs": {"data_files": files},
           "training_split": "train", "test_split": "test", "output_type": "multiple_choice",
           "num_fewshot": shots, "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
    prompts = {
        "boolq": {"doc_to_text": "{{paragraph}} 질문: {{question}} 답변: ", "doc_to_target": "{{label}}",
                  "doc_to_choice": ["아니오", "예"]},
        "copa": {"doc_to_text": utils.copa_doc_to_text, "doc_to_target": utils.copa_doc_to_target,
                 "doc_to_choice": utils.copa_doc_to_choice},
        "hellaswag": {"doc_to_text": "{{query}}", "doc_to_target": "{{label}}", "doc_to_choice": "choices",
                      "process_docs": utils.hellaswag_process_doc},
        "sentineg": {"doc_to_text": utils.sentineg_doc_to_text, "doc_to_target": "{{label}}",
                     "doc_to_choice": ["부정", "긍정"]},
        "wic": {"doc_to_text": utils.wic_doc_to_text, "doc_to_target": "{{label}}", "doc_to_choice": ["아니오", "예"]},
    }
    return {**cfg, **prompts[name]}


def mmlu_config(subject: str, bench: Path, work: Path, shots: int) -> dict:
    def rows(split):
        with open(bench / "mmlu" / split / f"{subject}_{split}.csv", encoding="utf-8", newline="") as f:
            recs = list(csv.DictReader(f))
        return [{"question": r["question"], "subject": subject, "choices": [r[f"choice{i}"] for i in range(4)],
                 "answer": int(r["answer"])} for r in recs]

    files = {s: _write(work / subject / f"{s}.jsonl", rows(s)) for s in ("dev", "test")}
    return {
        "task": f"mmlu_{subject}", "dataset_path": "json", "dataset_kwargs": {"data_files": files},
        "test_split": "test", "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"},
        "output_type": "multiple_choice", "num_fewshot": shots,
        "description": f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n",
        "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }


def run_lmeval(model, tokenizer, configs: list[dict], limit: int, batch_size: int = 4) -> dict:
    """{task: {"acc":..., "acc_norm":..., "samples": [{"arguments": [(ctx, cont)], "lls": [...]}]}}."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=configs, limit=limit, log_samples=True, bootstrap_iters=0,
                                  fewshot_random_seed=1234, verbosity="ERROR",
                                  task_manager=TaskManager(include_defaults=False))  # skip indexing every stock task
    ref = {}
    for cfg in configs:
        name = cfg["task"]
        res = out["results"][name]
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        ref[name] = {
            "acc": res["acc,none"], "acc_norm": res["acc_norm,none"],
            "samples": [{"arguments": [tuple(a) for a in s["arguments"]],
                         "lls": [r[0][0] for r in s["resps"]]} for s in samples],
        }
    return ref
