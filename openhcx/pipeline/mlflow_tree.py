"""The MLflow run tree of one recipe run: a parent run, a child per stage and per evaluation, registered models.

Stages log their own child runs (tracking.MLflowLogger, told the parent by OPENHCX_MLFLOW_PARENT_RUN); this
module makes the parent, records each evaluation as one child run, and at the end registers the final SFT,
reward and policy models under the run's name as alias (`models:/openhcx-policy@demo`). Every write is found
again before it is made (the parent's id is kept in RUN/pipeline/mlflow.json, an evaluation's run carries its
event key, a model version its source path), so a rerun after a crash never makes a second copy.
Not here: per-step training metrics (tracking.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from openhcx.io import write_json

REGISTERED = {"sft": "sft", "reward": "reward", "ppo": "policy"}  # stage -> registered model suffix


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def experiment_id(client, name: str, run: Path) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=(run / "mlartifacts").resolve().as_uri())


def parent_run(plan) -> str:
    """The recipe run's MLflow run (created once, reopened on a rerun); its id goes to RUN/pipeline/mlflow.json."""
    from mlflow.entities import Param

    from openhcx.pipeline.tracking import flat_params, tracking_uri

    uri, record = tracking_uri(plan.run), plan.run / "pipeline" / "mlflow.json"
    client = _client(uri)
    if record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        if saved.get("tracking_uri") == uri:
            client.update_run(saved["run_id"], status="RUNNING")
            return saved["run_id"]
    exp = experiment_id(client, plan.settings["experiment"], plan.run)
    run_id = client.create_run(exp, run_name=plan.run.name, tags={"openhcx.run": str(plan.run.resolve()),
                                                                  "openhcx.kind": "recipe"}).info.run_id
    params = flat_params(plan.recipe)
    client.log_batch(run_id, params=[Param(k[:250], v) for k, v in params.items()])
    write_json(record, {"run_id": run_id, "tracking_uri": uri})
    return run_id


def _numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a manifest's results, flattened (`per_label.ko.kept`)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[re.sub(r"[^\w\-. :/]", "_", f"{prefix}{key}")] = float(value)  # MLflow's allowed characters
    return out


def log_stage(plan, parent: str, stage, args: dict) -> None:
    """A child run for a stage that does not track itself (corpus, tokenizer, shards, import): its arguments,
    the figures of its manifest, the manifest itself. Made once: a finished run with its tags is kept."""
    from mlflow.entities import Metric, Param

    from openhcx.pipeline.runner import PATH_ARGS, artifact
    from openhcx.pipeline.tracking import flat_params, lineage_tags, tracking_uri

    client = _client(tracking_uri(plan.run))
    exp = experiment_id(client, plan.settings["experiment"], plan.run)
    found = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and "
                                                    f"tags.`openhcx.stage` = '{stage.name}'")
    if any(r.info.status == "FINISHED" for r in found):
        return
    for r in found:
        client.delete_run(r.info.run_id)
    manifest_file = artifact(plan.run, stage) / "manifest.json"
    manifest = json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.is_file() else {}
    inputs = {k: v for k, v in args.items()
              if k in stage.inputs or (k in PATH_ARGS and not str(v).startswith("package:"))}
    if args.get("sources"):
        inputs["sources"] = [s["path"] for s in args["sources"]]
    tags = lineage_tags(stage.name, Path(args["out"]), inputs) | {"mlflow.parentRunId": parent}
    run_id = client.create_run(exp, run_name=stage.name, tags=tags).info.run_id
    results = {k: v for k, v in manifest.items() if k not in ("config", "inputs", "stage", "created", "code_version")}
    client.log_batch(run_id, metrics=[Metric(k[:250], v, 0, 0) for k, v in _numbers(results).items()],
                     params=[Param(k[:250], v) for k, v in flat_params(args).items()])
    if manifest_file.is_file():
        client.log_artifact(run_id, str(manifest_file))
    client.set_terminated(run_id)


def finish_parent_run(plan, run_id: str, failed: bool) -> None:
    """Recipe and report as artifacts, final models registered (on success), the run closed."""
    from openhcx.pipeline.tracking import tracking_uri

    client = _client(tracking_uri(plan.run))
    for name in ("recipe.yaml", "report.html"):
        if (plan.run / name).is_file():
            client.log_artifact(run_id, str(plan.run / name))
    if (plan.run / "report").is_dir():
        client.log_artifacts(run_id, str(plan.run / "report"), "report")
    if not failed:
        for stage, _ in plan.stages:
            if stage.name in REGISTERED:
                register(client, plan, stage.name)
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def alias_of(run: Path) -> str:
    """MLflow aliases allow letters, digits, _ and -; 'latest' and v<N> are reserved."""
    alias = re.sub(r"[^\w-]", "_", run.resolve().name) or "run"
    return f"run_{alias}" if alias == "latest" or re.fullmatch(r"[vV]\d+", alias) else alias


def register(client, plan, stage: str) -> str:
    """Register RUN/<stage>/model as a version of `<experiment>-<role>` and point the run's alias at it."""
    model_dir = (plan.run / stage / "model").resolve()
    name = f"{plan.settings['experiment']}-{REGISTERED[stage]}"
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name, description=f"OpenHCX {REGISTERED[stage]} models")
    source = model_dir.as_uri()
    version = next((v for v in client.search_model_versions(f"name = '{name}'") if v.source == source), None)
    if version is None:
        stage_run = plan.run / stage / "mlflow_run.json"
        run_id = json.loads(stage_run.read_text(encoding="utf-8"))["run_id"] if stage_run.is_file() else None
        version = client.create_model_version(name, source, run_id=run_id,
                                              tags={"openhcx.run": str(plan.run.resolve()), "openhcx.stage": stage})
    client.set_registered_model_alias(name, alias_of(plan.run), version.version)
    return f"models:/{name}@{alias_of(plan.run)}"


def log_evaluation(payload: dict, results: dict) -> str | None:
    """One child run per evaluation event: scores as metrics at the checkpoint's step, results.json attached."""
    from mlflow.entities import Metric, Param, RunTag

    import os
    import time

    uri = os.environ.get("MLFLOW_TRACKING_URI") or payload["tracking_uri"]
    client = _client(uri)
    exp = experiment_id(client, payload["experiment"], Path(payload["run"]))
    key = f"{payload['run_key']}:{payload['stage']}:{payload['name']}:{payload['step']}"
    found = client.search_runs([exp], filter_string=f"tags.`openhcx.event` = '{key}'")
    if any(r.info.status == "FINISHED" for r in found):
        return next(r.info.run_id for r in found if r.info.status == "FINISHED")
    for r in found:  # begun by a worker that died before finishing it: replaced, so each point exists once
        client.delete_run(r.info.run_id)
    label = f"eval:{payload['stage']}" + (f":step-{payload['step']}" if payload["step"] is not None
                                          else f":{payload['name']}")
    tags = {"openhcx.event": key, "openhcx.kind": "evaluation", "openhcx.stage": payload["name"],
            "openhcx.checkpoint": payload["model"]}
    if payload.get("parent_run"):
        tags["mlflow.parentRunId"] = payload["parent_run"]
    run_id = client.create_run(exp, run_name=label, tags=tags).info.run_id
    step, now = payload["step"] or 0, int(time.time() * 1000)
    values = {f"{t}/{m}": v for t, r in results.get("tasks", {}).items() for m, v in r["metrics"].items()}
    values |= {f"category/{c['name']}": c["score"] for c in results.get("categories", []) if c["score"] is not None}
    values |= {k: v for k, v in (results.get("metrics") or {}).items() if isinstance(v, (int, float))}
    if results.get("overall") is not None:
        values["overall"] = results["overall"]
    params = {"model": payload["model"], **{f"suite.{k}": str(v)[:500] for k, v in payload["suite"].items()}}
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()],
                     params=[Param(k, v) for k, v in params.items()], tags=[RunTag("openhcx.step", str(step))])
    client.log_artifact(run_id, str(Path(payload["out"]) / "results.json"))
    client.set_terminated(run_id)
    return run_id
