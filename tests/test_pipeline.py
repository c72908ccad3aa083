"""The main job: recipe validation before any work, the event-driven chain, crash safety, asynchronous evaluation.

The runs here go SFT -> reward model -> PPO -> final evaluation from a tiny 2-layer base model, with every
checkpoint evaluated by a worker process, so a whole run takes seconds of compute and the tests can kill the
runner (SIGKILL, as a crash or an OOM killer would) at chosen points and check what a rerun does.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"


def recipe(base: Path, **changes) -> dict:
    heldout = str(DEMO / "heldout_prompts.jsonl")
    r = {
        "sft": {"base": str(base), "data": [str(DEMO / "sft.jsonl")], "epochs": 1, "max_tokens": 768,
                "lr": 2e-3, "heldout_fraction": 0.05, "checkpoint_every": 8, "keep_checkpoints": 1},
        "reward": {"data": [str(DEMO / "preference.jsonl")], "max_tokens": 1536, "lr": 3e-4, "heldout_fraction": 0.1,
                   "checkpoint_every": 10, "keep_checkpoints": 1},
        "ppo": {"prompts": [str(DEMO / "sft.jsonl")], "heldout": heldout, "steps": 4, "batch_size": 4,
                "minibatch_size": 2, "epochs": 1, "max_new_tokens": 8, "eval_every": 2, "eval_prompts": 4,
                "checkpoint_every": 2},
        "evaluation": {"workers": 1, "nice": 0, "suites": {
            "sft": {"prompts": heldout, "prompt_limit": 8, "max_new_tokens": 8},
            "reward": {"pairs": str(DEMO / "preference.jsonl"), "heldout_fraction": 0.1},
            "ppo": {"prompts": heldout, "prompt_limit": 4, "max_new_tokens": 8}},
            "final": {"prompts": heldout, "prompt_limit": 4, "max_new_tokens": 8, "tasks": ["arc_easy"], "shots": 0,
                      "limit": 3, "data_root": str(ROOT / "tests/fixtures/benchmarks")}},
        "pipeline": {"lease_s": 20},
    }
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = r
        for key in path:
            node = node[key]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return r


def write_recipe(tmp_path: Path, r: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(r, allow_unicode=True), encoding="utf-8")
    return path


def openhcx(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "openhcx.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, **kwargs)


# ---- refused before any work ----------------------------------------------------------------------------------


@pytest.mark.parametrize("change, named", [
    ({"sft.epochz": 2}, "epochz"),
    ({"sft.epochs": "two"}, "epochs"),
    ({"sft.data": ["data/demo/nope.jsonl"]}, "data/demo/nope.jsonl"),
    ({"sft.base": None}, "sft.base"),
    ({"evaluation.suites.sft.prompt_limit": "many"}, "prompt_limit"),
    ({"evaluation.suites.tokenizer": {}}, "evaluation.suites.tokenizer"),
    ({"evaluation.final.prompts": "missing.jsonl"}, "missing.jsonl"),
    ({"ppo.steps": None, "pipeline.lease": 3}, "lease"),
])
def test_bad_recipe_is_refused_before_any_work(tiny_lm, tmp_path, change, named):
    run = tmp_path / "run"
    r = openhcx("run", "--recipe", str(write_recipe(tmp_path, recipe(tiny_lm, **change))), "--out", str(run))
    assert r.returncode == 2, r.stderr
    assert named in r.stderr and "Traceback" not in r.stderr
    assert not run.exists()  # nothing started, nothing written


def test_unknown_section_and_missing_producer_are_named(tiny_lm, tmp_path):
    r = openhcx("run", "--recipe", str(write_recipe(tmp_path, {**recipe(tiny_lm), "rewrad": {}})),
                "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "rewrad" in r.stderr
    only_ppo = {"ppo": recipe(tiny_lm)["ppo"]}
    r = openhcx("run", "--recipe", str(write_recipe(tmp_path, only_ppo)), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "ppo.sft" in r.stderr and "no earlier stage" in r.stderr


# ---- crash safety -------------------------------------------------------------------------------------------


def start_run(recipe_path: Path, run: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (run.parent / f"{run.name}.log").open("a")
    return subprocess.Popen([sys.executable, "-m", "openhcx.cli", "run", "--recipe", str(recipe_path), "--out",
                             str(run)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def queue_rows(run: Path) -> list[dict]:
    db = run / "pipeline" / "queue.db"
    if not db.is_file():
        return []
    with sqlite3.connect(db, timeout=30) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("select * from openhcx_events")]


def wait_for(condition, proc: subprocess.Popen, timeout: float = 600) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        assert proc.poll() is None, "the run ended before the point it was to be killed at"
        time.sleep(0.2)
    raise AssertionError("timed out")


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def descendants_gone(run: Path, timeout: float = 30) -> bool:
    """No process of the killed run (stage child, worker) is left: their command lines name the run dir."""
    end = time.time() + timeout
    while time.time() < end:
        left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, str(run))]
        if not left:
            return True
        time.sleep(0.2)
    return False


def _cmdline_has(proc: Path, text: str) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


def mlflow_runs(run: Path) -> list[dict]:
    with sqlite3.connect(run / "mlflow.db") as conn:
        conn.row_factory = sqlite3.Row
        runs = [dict(r) for r in conn.execute("select run_uuid, name, status, lifecycle_stage from runs")]
        for r in runs:
            r["tags"] = dict(conn.execute("select key, value from tags where run_uuid = ?", (r["run_uuid"],)))
            r["points"] = [tuple(p) for p in conn.execute(
                "select key, step, value, timestamp from metrics where run_uuid = ?", (r["run_uuid"],))]
    return [r for r in runs if r["lifecycle_stage"] == "active"]


@pytest.fixture(scope="module")
def crashed_run(tiny_lm, tmp_path_factory) -> dict:
    """A run SIGKILLed during a training stage, then during an evaluation, then rerun to the end."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    run = tmp_path / "run"
    path = write_recipe(tmp_path, recipe(tiny_lm))
    # 1. killed during a training stage: the reward model, after one of its checkpoints, SFT already complete
    proc = start_run(path, run)
    wait_for(lambda: any((run / "reward" / "checkpoints").glob("step-*")), proc)
    kill(proc)
    assert descendants_gone(run), "a stage or worker process outlived the killed runner"
    sft_marker = json.loads((run / "pipeline/stages/sft.json").read_text())
    assert not (run / "pipeline/stages/reward.json").exists()
    reward_steps_before = [json.loads(x)["step"] for x in (run / "reward/metrics.jsonl").read_text().splitlines()]
    # 2. killed while a worker evaluates a checkpoint
    proc = start_run(path, run)
    wait_for(lambda: any(r["kind"] == "eval" and r["status"] == "running" for r in queue_rows(run)), proc)
    kill(proc)
    assert descendants_gone(run)
    # 3. the same command again runs to the end
    proc = start_run(path, run)
    assert proc.wait(timeout=900) == 0, (run.parent / "run.log").read_text()[-3000:]
    return {"run": run, "sft_marker": sft_marker, "reward_steps_before": reward_steps_before}


@pytest.mark.slow
def test_killed_runner_resumes_without_redoing_or_repeating_work(crashed_run):
    run, sft_marker, reward_steps_before = crashed_run["run"], crashed_run["sft_marker"], \
        crashed_run["reward_steps_before"]

    # completed stages were not redone: SFT's marker is the one written before the first kill
    assert json.loads((run / "pipeline/stages/sft.json").read_text()) == sft_marker
    rows = queue_rows(run)
    stage_events = {r["key"].rsplit(":", 1)[1]: r for r in rows if r["kind"].startswith("stage@")}
    assert stage_events["sft"]["attempts"] == 1 and stage_events["sft"]["status"] == "done"
    # the interrupted stage resumed from its checkpoint: its steps continue, none repeated in the metrics
    reward_steps = [json.loads(x)["step"] for x in (run / "reward/metrics.jsonl").read_text().splitlines()]
    assert reward_steps == list(range(1, len(reward_steps) + 1)) and len(reward_steps) > len(reward_steps_before) > 0
    assert stage_events["reward"]["attempts"] >= 2
    # every checkpoint evaluated exactly once: one results.json, one done event, one finished MLflow run each
    evals = [r for r in rows if r["kind"] == "eval"]
    assert evals and all(r["status"] == "done" for r in evals)
    for r in evals:
        assert (Path(json.loads(r["payload"])["out"]) / "results.json").is_file()
    stages_evaluated = {json.loads(r["payload"])["stage"] for r in evals}
    assert {"sft", "reward", "ppo", "final"} <= stages_evaluated
    runs = mlflow_runs(run)
    eval_runs = [r for r in runs if r["tags"].get("openhcx.kind") == "evaluation"]
    assert sorted(r["tags"]["openhcx.event"] for r in eval_runs) == sorted(
        {r["tags"]["openhcx.event"] for r in eval_runs})
    assert len(eval_runs) == len(evals) and all(r["status"] == "FINISHED" for r in eval_runs)
    for r in runs:  # no metric point logged twice (same key and step) in any run
        keys = [(k, s) for k, s, _, _ in r["points"]]
        assert len(keys) == len(set(keys)), r["name"]
    # one parent, a child per stage and per evaluation
    parent = [r for r in runs if r["tags"].get("openhcx.kind") == "recipe"]
    assert len(parent) == 1 and parent[0]["status"] == "FINISHED"
    children = [r for r in runs if r["tags"].get("mlflow.parentRunId") == parent[0]["run_uuid"]]
    assert {r["tags"].get("openhcx.stage") for r in children} >= {"sft", "reward", "ppo"}
    assert (run / "report.html").is_file()


@pytest.mark.slow
def test_training_steps_complete_while_an_earlier_checkpoint_is_evaluated(crashed_run):
    run = crashed_run["run"]
    # when each training step ended (MLflow stamps a step's metrics as the step finishes)
    step_ends = [ts / 1000 for r in mlflow_runs(run) if r["tags"].get("openhcx.stage") in ("sft", "reward", "ppo")
                 and r["tags"].get("openhcx.kind") != "evaluation" for k, _, _, ts in r["points"]
                 if k in ("loss", "reward")]
    evals = [json.loads(r["result"]) for r in queue_rows(run) if r["kind"] == "eval" and r["status"] == "done"]
    overlapping = [e for e in evals if any(e["started"] < t < e["finished"] for t in step_ends)]
    assert overlapping, "no training step completed while any evaluation was running"


def test_a_stage_that_finds_bad_data_stops_the_run_naming_it(tiny_lm, tmp_path):
    bad = tmp_path / "chat.jsonl"
    good = (DEMO / "sft.jsonl").read_text(encoding="utf-8").splitlines()[:20]
    bad.write_text("\n".join(good[:7] + ['{"messages": [{"role": "user", "content": 3'] + good[7:]) + "\n",
                   encoding="utf-8")
    run = tmp_path / "run"
    r = openhcx("run", "--recipe", str(write_recipe(tmp_path, recipe(tiny_lm, **{"sft.data": [str(bad)]}))),
                "--out", str(run))
    assert r.returncode == 1
    assert f"{bad}:8" in r.stderr and "stage sft" in r.stderr
    stage = next(row for row in queue_rows(run) if row["key"].endswith(":sft") and row["kind"].startswith("stage@"))
    assert stage["status"] == "failed" and stage["attempts"] == 1  # bad input is not retried
    assert not (run / "sft" / "model").exists() and not (run / "pipeline/stages/sft.json").exists()


def test_manifest_figures_become_valid_mlflow_metric_names():
    from openhcx.pipeline.mlflow_tree import _numbers

    figures = _numbers({"chat_tokens": {"<|user|>": 49153}, "steps": 3, "stopped_early": False, "name": "x"})
    assert figures == {"chat_tokens.__user__": 49153.0, "steps": 3.0}


@pytest.mark.slow
def test_a_failed_evaluation_is_retried_when_the_run_is_started_again(tiny_lm, tmp_path):
    data = tmp_path / "benchmarks"
    (data / "arc").mkdir(parents=True)
    good = ROOT / "tests/fixtures/benchmarks/arc/ARC-Easy"
    (data / "arc" / "ARC-Easy").mkdir()
    bad = data / "arc" / "ARC-Easy" / "ARC-Easy-Test.jsonl"
    bad.write_text('{"id": "x", "question": \n', encoding="utf-8")
    r = recipe(tiny_lm, **{"reward": None, "ppo": None, "evaluation.suites": {}, "evaluation.final.prompts": None,
                           "evaluation.final.data_root": str(data)})
    path, run = write_recipe(tmp_path, r), tmp_path / "run"
    first = openhcx("run", "--recipe", str(path), "--out", str(run))
    assert first.returncode == 1 and "1 evaluation(s) failed" in first.stderr and str(bad) in \
        (run / "pipeline" / "queue.db").read_bytes().decode(errors="replace")
    bad.write_text((good / "ARC-Easy-Test.jsonl").read_text(encoding="utf-8"), encoding="utf-8")  # the cause fixed
    second = openhcx("run", "--recipe", str(path), "--out", str(run))
    assert second.returncode == 0, second.stderr[-2000:]
    final = json.loads((run / "evals" / "final" / "sft" / "results.json").read_text())
    assert final["tasks"]["arc_easy"]["n"] == 2  # the fixture's two items
    sft = next(row for row in queue_rows(run) if row["kind"].startswith("stage@") and row["key"].endswith(":sft"))
    assert sft["attempts"] == 1  # SFT was not redone
