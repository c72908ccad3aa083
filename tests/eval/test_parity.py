"""Parity with lm-evaluation-harness 0.4.13 on the real benchmark files: identical prompt strings,
per-choice log-likelihoods within 1e-4, identical acc and acc_norm, few-shot examples drawn alike."""

from __future__ import annotations

import pytest

from openhcx.eval.backends import HFBackend
from openhcx.eval.harness import prepare, run_task
from openhcx.eval.tasks import REGISTRY

pytest.importorskip("lm_eval", reason="lm-eval is a test dependency")
from . import lmeval_ref  # noqa: E402


def _check(model, tok, bench, tmp_path, cases, batch_tokens=2048):
    """cases: (task name, lm-eval config, shots, limit)."""
    ref = {}
    for limit in sorted({c[3] for c in cases}):  # lm-eval takes one limit per call
        ref.update(lmeval_ref.run_lmeval(model, tok, [c[1] for c in cases if c[3] == limit], limit=limit))
    backend = HFBackend(model, tok, "parity", batch_tokens=batch_tokens)
    for name, _, shots, n in cases:
        task = REGISTRY.tasks[name]
        _, reqs, _ = prepare(task, shots=shots, limit=n, data_root=bench)
        res, recs = run_task(backend, task, shots=shots, limit=n, data_root=bench)
        theirs = ref[name]["samples"][:n]
        assert len(recs) == len(theirs) == n
        for rs, rec, sample in zip(reqs, recs, theirs):
            assert [(r.context, c) for r in rs for c in r.continuations] == sample["arguments"]
            assert rec["lls"] == pytest.approx(sample["lls"], abs=1e-4)
        acc = sum(r["acc"] for r in recs) / n
        acc_norm = sum(r["acc_norm"] for r in recs) / n
        assert acc == ref[name]["acc"] and acc_norm == ref[name]["acc_norm"], name
        assert res.metrics["acc"] == acc
        print(f"{name}: {n} items, {shots}-shot, acc={acc:.3f} acc_norm={acc_norm:.3f} (lm-eval identical)")


@pytest.mark.slow
def test_smollm2_parity(smol, bench, tmp_path):
    model, tok = smol
    cases = [
        ("kobest_copa", lmeval_ref.kobest_config("copa", bench, tmp_path, 0), 0, 4),
        ("kobest_boolq", lmeval_ref.kobest_config("boolq", bench, tmp_path, 0), 0, 1),
        ("kobest_sentineg", lmeval_ref.kobest_config("sentineg", bench, tmp_path, 3), 3, 2),
        ("mmlu_abstract_algebra", lmeval_ref.mmlu_config("abstract_algebra", bench, tmp_path, 5), 5, 1),
        ("mmlu_anatomy", lmeval_ref.mmlu_config("anatomy", bench, tmp_path, 5), 5, 1),
    ]
    _check(model, tok, bench, tmp_path, cases)


@pytest.mark.slow
def test_tiny_checkpoint_parity(tiny_ckpt, bench, tmp_path):
    """A plain HF Llama directory (the OpenHCX checkpoint layout), all KoBEST tasks with shots, MMLU 5-shot."""
    from openhcx.eval.backends import load_hf

    model, tok = load_hf(tiny_ckpt)
    spec = {"boolq": (0, 2), "copa": (3, 6), "hellaswag": (1, 4), "sentineg": (5, 6), "wic": (2, 6)}
    cases = [(f"kobest_{t}", lmeval_ref.kobest_config(t, bench, tmp_path, k), k, n) for t, (k, n) in spec.items()]
    cases.append(("mmlu_astronomy", lmeval_ref.mmlu_config("astronomy", bench, tmp_path, 5), 5, 4))
    _check(model, tok, bench, tmp_path, cases, batch_tokens=8192)
