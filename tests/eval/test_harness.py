"""Harness behaviour on a tiny random Llama checkpoint: prompts, few-shot draws, shared-context scoring,
letter scoring, the resumable cache, result files, MLflow logging and the HTTP backend."""

from __future__ import annotations

import json
import random

import pytest
import torch

from openhcx.eval import evaluate
from openhcx.eval.backends import HFBackend, Request, load_hf
from openhcx.eval.cache import Cache
from openhcx.eval.harness import build_requests, evaluate_backend, prepare, run_task, sample_shots
from openhcx.eval.tasks import REGISTRY, Item
from openhcx.io import UserError


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    model, tok = load_hf(tiny_ckpt)
    return HFBackend(model, tok, "tiny", batch_tokens=512)


def test_copa_prompt_is_lm_evals(bench):
    """lm-eval's kobest_copa joins premise and connector with a double space; the answer follows after one."""
    items, reqs, _ = prepare(REGISTRY.tasks["kobest_copa"], limit=1, data_root=bench)
    assert reqs[0] == [Request("새로 산 바지의 허리가 컸다.  그래서",
                               (" 바지의 밑단을 잘랐다.", " 벨트를 바지에 끼워 사이즈를 조절했다."))]
    assert items[0].gold == 1


def test_mmlu_prompt_has_description_and_first_five_dev_shots(bench):
    task = REGISTRY.tasks["mmlu_anatomy"]
    _, reqs, k = prepare(task, limit=2, data_root=bench)
    dev = task.load(bench / "mmlu", "dev")
    ctx = reqs[0][0].context
    assert k == 5 and ctx.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert ctx.count("\nAnswer:") == 6 and ctx.count("\n\n") == 6
    assert dev[0].query + " " + "ABCD"[dev[0].gold] + "\n\n" in ctx
    assert reqs[0][0].continuations == (" A", " B", " C", " D")
    assert reqs[0][0].context.split("\n\n")[1:6] == reqs[1][0].context.split("\n\n")[1:6]  # canonical shots


def test_random_shots_follow_one_seeded_stream():
    task = REGISTRY.tasks["kobest_copa"]
    pool = [Item(f"p{i}", ("a", "b"), 0) for i in range(50)]
    items = [Item(f"q{i}", ("a", "b"), 0) for i in range(3)]
    rnd = random.Random(1234)
    assert sample_shots(task, items, pool, 3, 1234) == [rnd.sample(pool, 3) for _ in items]


def test_shots_from_the_eval_split_never_include_the_item():
    from dataclasses import replace

    task = replace(REGISTRY.tasks["kobest_copa"], fewshot_split="test")
    pool = [Item(f"p{i}", ("a", "b"), 0) for i in range(6)]
    for item, shots in zip(pool, sample_shots(task, pool, pool, 5, 0)):
        assert item not in shots and len(shots) == 5


def test_partial_scoring_puts_the_choice_in_the_context():
    task = REGISTRY.tasks["kobest_copa"]
    shot = Item("", (), 1, contexts=("A went", "B went"), target="home.")
    item = Item("", (), 0, contexts=("C ran", "D ran"), target="away.")
    reqs = build_requests(task, item, [shot])
    assert reqs == [Request("B went home.\n\nC ran", (" away.",)), Request("B went home.\n\nD ran", (" away.",))]


def test_shared_context_pass_equals_separate_passes(tiny, bench):
    _, reqs, _ = prepare(REGISTRY.tasks["kobest_hellaswag"], limit=4, shots=0, data_root=bench)
    flat = [r for rs in reqs for r in rs]
    shared = dict(tiny.loglikelihood(flat))
    alone = dict(HFBackend(tiny.model, tiny.tok, "tiny", share_context=False, batch_tokens=256).loglikelihood(flat))
    for i in range(len(flat)):
        assert [s for s, _ in shared[i]] == pytest.approx([s for s, _ in alone[i]], abs=1e-4)
    # and equal to a plain forward pass over context + continuation
    ctx, conts = tiny.encode(flat[0])
    with torch.no_grad():
        logp = torch.log_softmax(tiny.model(torch.tensor([ctx + conts[2]])).logits[0].float(), -1)
    direct = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(conts[2]))
    assert shared[0][2][0] == pytest.approx(direct, abs=1e-4)


def test_letter_mode_reads_the_next_token_restricted_to_letters(tiny, bench):
    task = REGISTRY.tasks["kobest_copa"]
    items, reqs, _ = prepare(task, limit=4, mode="letters", data_root=bench)
    assert reqs[0][0].context.endswith("\nA. 바지의 밑단을 잘랐다.\nB. 벨트를 바지에 끼워 사이즈를 조절했다.\n정답:")
    assert reqs[0][0].continuations == (" A", " B")
    res, recs = run_task(tiny, task, limit=4, mode="letters", data_root=bench)
    for req, rec in zip(reqs, recs):
        ctx, conts = tiny.encode(req[0])
        with torch.no_grad():
            logp = torch.log_softmax(tiny.model(torch.tensor([ctx])).logits[0, -1].float(), -1)
        letter_lp = [logp[c[0]].item() for c in conts]  # " A", " B" are single tokens
        assert rec["pred"] == max(range(2), key=lambda i: letter_lp[i])
    assert set(res.metrics) == {"acc", "f1"}


class _Interrupt(HFBackend):
    """A real run stopped after `n` scored requests, as a kill would stop it."""

    def __init__(self, base: HFBackend, n: int):
        super().__init__(base.model, base.tok, base.fingerprint, batch_tokens=base.batch_tokens)
        self.n, self.seen = n, 0

    def loglikelihood(self, requests):
        for out in super().loglikelihood(requests):
            self.seen += 1
            if self.seen > self.n:
                raise KeyboardInterrupt
            yield out


class _Counting(HFBackend):
    def __init__(self, base: HFBackend):
        super().__init__(base.model, base.tok, base.fingerprint, batch_tokens=base.batch_tokens)
        self.scored = 0

    def loglikelihood(self, requests):
        self.scored += len(requests)
        yield from super().loglikelihood(requests)


def test_interrupted_run_resumes_from_cache_with_same_scores(tiny, bench, tmp_path):
    kw = dict(tasks=["kobest_copa", "kobest_sentineg"], limit=40, shots=2, data_root=bench, progress=False)
    clean = evaluate_backend(tiny, "tiny", out=str(tmp_path / "clean"), **kw)
    with pytest.raises(KeyboardInterrupt):
        evaluate_backend(_Interrupt(tiny, 50), "tiny", out=str(tmp_path / "run"), **kw)
    assert not (tmp_path / "run" / "results.json").exists()
    with open(tmp_path / "run" / "cache.jsonl", "a") as f:
        f.write('["torn')  # a kill in the middle of a write
    counting = _Counting(tiny)
    resumed = evaluate_backend(counting, "tiny", out=str(tmp_path / "run"), **kw)
    assert 0 < counting.scored <= 80 - 32  # only what the cache lacked (batches of 32 were flushed)
    assert {k: v.metrics for k, v in resumed.tasks.items()} == {k: v.metrics for k, v in clean.tasks.items()}
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["tasks"]["kobest_copa"]["metrics"] == clean.tasks["kobest_copa"].metrics
    samples = (tmp_path / "run" / "samples" / "kobest_copa.jsonl").read_text().splitlines()
    assert len(samples) == 40 and {"lls", "pred", "acc", "gold"} <= set(json.loads(samples[0]))
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["stage"] == "eval"


def test_cache_ignores_a_torn_line_and_keeps_appending(tmp_path):
    path = tmp_path / "c.jsonl"
    Cache(path).put_many({"a": [[-1.0, True]]})
    with open(path, "a") as f:
        f.write('["b", [[-2')
    c = Cache(path)
    assert c.get("a") == [[-1.0, True]] and c.get("b") is None
    c.put_many({"c": 1})
    assert Cache(path).get("c") == 1


def test_evaluate_loads_an_hf_directory_and_logs_to_mlflow(tiny_ckpt, bench, tmp_path):
    pytest.importorskip("mlflow")
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = evaluate(str(tiny_ckpt), ["kobest_boolq"], limit=5, data_root=bench, out=str(tmp_path / "o"),
                   tracking_uri=uri, progress=False)
    runs = mlflow.search_runs(experiment_names=["openhcx-eval"])
    assert runs["metrics.kobest_boolq/acc"].iloc[0] == pytest.approx(res.tasks["kobest_boolq"].metrics["acc"])


def test_an_endpoint_is_refused_for_multiple_choice_scoring_before_any_request(tiny_ckpt, bench):
    with pytest.raises(UserError, match="http://127.0.0.1:9/v1.*log-probabilities"):
        evaluate("http://127.0.0.1:9/v1#m", ["kobest_boolq"], limit=2, data_root=bench, progress=False)


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_from_its_cache(tiny_ckpt, bench, tmp_path):
    """`openhcx eval` killed with SIGKILL mid-run, then the same command again: same scores as a clean run."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "openhcx.cli", "eval", "--model", str(tiny_ckpt), "--tasks", "[kobest_boolq]",
           "--limit", "400", "--data_root", str(bench), "--batch_tokens", "1024", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = out / "cache.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if cache.exists() and cache.read_text().count("\n") >= 32:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "results.json").exists()
    before = cache.read_text().splitlines()
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0
    assert "\r" not in rerun.stderr  # stderr is a pipe: no progress bars, ours or libraries'
    after = cache.read_text().splitlines()
    assert after[:len(before) - 1] == before[:-1]  # the cache was kept and appended to, not rebuilt
    clean = evaluate(str(tiny_ckpt), ["kobest_boolq"], limit=400, data_root=str(bench), batch_tokens=1024,
                     progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert saved["tasks"]["kobest_boolq"]["metrics"] == clean.tasks["kobest_boolq"].metrics
