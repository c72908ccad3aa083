"""The run report: results files merged per checkpoint, labels that tell models apart, every section built
from a synthetic run directory written in the stages' real formats, and the page rendered in headless chromium."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path

import pytest

from openhcx.eval.categories import CATEGORIES, category_scores, overall
from openhcx.eval.harness import EvalResults, TaskResult
from openhcx.eval.report import load, radar, radar_figure, table
from openhcx.io import UserError
from openhcx.pipeline.report import build_report
from openhcx.train.ppo import PPOStepMetrics
from openhcx.train.trainer import StepMetrics

# task -> (acc, items): a Korean, an English (two MMLU subjects), a Math and a Commonsense benchmark
SUITES = [
    {"kmmlu_law": (0.40, 50), "mmlu_anatomy": (0.50, 100)},
    {"mmlu_virology": (0.80, 300), "gsm8k_maj8": (0.10, 20)},
    {"gsm8k_maj8": (0.25, 40), "piqa": (0.70, 10)},  # gsm8k_maj8 again: this later file's score must win
]


def write_results(path: Path, model: str, tasks: dict[str, tuple[float, int]], checkpoint: dict | None = None,
                  metrics: dict | None = None) -> str:
    """A results.json as the harness writes it, plus the run's "checkpoint" and "metrics" keys."""
    results = {name: TaskResult(name, n, 0, "loglik", "acc", {"acc": acc, "acc_norm": acc}) for name, (acc, n)
               in tasks.items()}
    cats = category_scores({k: v[0] for k, v in tasks.items()}, {k: v[1] for k, v in tasks.items()})
    res = EvalResults(model, "loglik", results, cats, overall(cats)).to_json()
    if checkpoint is not None:
        res["checkpoint"] = checkpoint
    if metrics is not None:
        res["metrics"] = metrics
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res), encoding="utf-8")
    return str(path)


def test_three_results_files_of_one_checkpoint_make_one_polygon(tmp_path):
    ckpt = {"stage": "sft", "step": 40, "path": str(tmp_path / "sft/checkpoints/step-00000040")}
    files = [write_results(tmp_path / f"s{i}.json", str(tmp_path / "snap"), s, ckpt, {"bpb": 1.5 + i})
             for i, s in enumerate(SUITES)]
    files.append(write_results(tmp_path / "other.json", "x", SUITES[0],
                               {"stage": "sft", "step": 80, "path": str(tmp_path / "sft/checkpoints/step-00000080")}))
    models = load(files)
    assert [m.label for m in models] == ["sft step 40", "sft step 80"]
    union = {**SUITES[0], **SUITES[1], **SUITES[2]}
    expected = {c.name: c.score for c in category_scores({k: a for k, (a, _) in union.items()},
                                                         {k: n for k, (_, n) in union.items()})}
    assert models[0].categories == pytest.approx(expected)
    assert models[0].categories["Math"] == pytest.approx(25.0)  # the later file's gsm8k_maj8, not 10.0 or a mean
    assert models[0].categories["English"] == pytest.approx(100 * (0.5 * 100 + 0.8 * 300) / 400)
    assert models[0].categories["Code"] is None
    assert models[0].metrics == {"bpb": 3.5}
    fig = radar_figure(models)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["sft step 40", "sft step 80"]
    ys = list(lines[0].get_ydata())
    names = list(CATEGORIES)
    assert [None if math.isnan(y) else y for y in ys[:-1]] == pytest.approx([expected[n] for n in names])
    assert ys[-1] == ys[0]  # closed


def test_a_single_category_stays_visible_and_missing_ones_are_gaps(tmp_path):
    only_math = write_results(tmp_path / "m.json", str(tmp_path / "m"), {"gsm8k_maj8": (0.3, 10)})
    line = radar_figure(load([only_math])).axes[0].get_lines()[0]
    assert line.get_marker() == "o"
    ys = list(line.get_ydata())
    assert ys[list(CATEGORIES).index("Math")] == pytest.approx(30.0)
    assert sum(not math.isnan(y) for y in ys) == 1  # no zeros drawn for the six missing categories


def test_labels_tell_models_apart(tmp_path):
    same_name = [write_results(tmp_path / f"{run}.json", f"/runs/{run}/sft/model", SUITES[0]) for run in ("a", "b")]
    assert [m.label for m in load(same_name)] == ["a/sft/model", "b/sft/model"]
    final = write_results(tmp_path / "f.json", "/runs/a/ppo/model", SUITES[0],
                          {"stage": "ppo", "step": None, "path": "/runs/a/ppo/model"})
    assert [m.label for m in load([final, same_name[0]])] == ["ppo final", "sft/model"]
    # the same stage and step in two runs: the checkpoint label plus what tells their paths apart
    twins = [write_results(tmp_path / f"t{run}.json", "m", SUITES[0],
                           {"stage": "sft", "step": 40, "path": f"/runs/{run}/sft/checkpoints/step-00000040"})
             for run in ("a", "b")]
    assert [m.label for m in load(twins)] == ["sft step 40 (a/sft/checkpoints/step-00000040)",
                                              "sft step 40 (b/sft/checkpoints/step-00000040)"]


def test_radar_cli_merges_one_models_files(tmp_path):
    files = [write_results(tmp_path / f"{i}.json", str(tmp_path / "sft"), s) for i, s in enumerate(SUITES)]
    assert table(files).count("\n") == 3  # header, rule, one row
    page = radar(files, str(tmp_path / "radar.html")).read_text(encoding="utf-8")
    assert page.count("<tr>") == 2 and "data:image/png;base64," in page
    assert "<th>model</th>" in page  # a path label says more than stage and step
    (tmp_path / "bad.json").write_text('{"model": "x", "tasks": {"a": {"n": 1}}}')
    with pytest.raises(UserError, match="bad.json: not an evaluation results.json"):
        radar([str(tmp_path / "bad.json")], str(tmp_path / "r.png"))


class Page(HTMLParser):
    """Section ids, image sources and table rows (cell texts) of the report page."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, str] = {}
        self.images: list[str] = []
        self.rows: list[list[str]] = []
        self._section = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs["id"]
            self.sections[self._section] = ""
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._section:
            self.sections[self._section] += data


def jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(asdict(r) if not isinstance(r, dict) else r) + "\n" for r in rows),
                    encoding="utf-8")


def synthetic_run(run: Path) -> Path:
    """A run directory with every input the report reads, in the formats the stages write."""
    for stage, steps in (("base", 60), ("sft", 40), ("reward", 20)):
        jsonl(run / stage / "metrics.jsonl",
              [StepMetrics(s, 6.0 * 0.97 ** s, 1e-3, 1.0, 64 if s < steps // 2 else 128, 512, 1e4, 0.01, 0.1)
               for s in range(1, steps + 1)])
        (run / stage / "manifest.json").write_text(json.dumps(
            {"stage": stage, "created": "2025-01-01T00:00:00+00:00", "code_version": "0.1", "config": {},
             "inputs": {}, "model": str(run / stage / "model"), "steps": steps, "final_loss": 6.0 * 0.97 ** steps}))
    jsonl(run / "sft" / "eval.jsonl", [{"step": s, "loss": 5.0 * 0.98 ** s} for s in (0, 20, 40)])
    jsonl(run / "reward" / "eval.jsonl",
          [{"step": s, "accuracy": 0.5 + s / 50, "loss": 0.69 - s / 100, "margin": s / 10, "pairs": 40}
           for s in (0, 20)])
    jsonl(run / "ppo" / "metrics.jsonl",
          [PPOStepMetrics(s, 0.1 * s, 0.05 * s, 0.02 * s, 0.05, 2.0, 30 - s / 2, 0.1, 0.0, 0.1, 0.01, 0.1, 0.2, 0.3,
                          0.0, -1.0, 3.0, 1.0) for s in range(1, 21)])
    jsonl(run / "ppo" / "heldout.jsonl",
          [{"step": s, "constraints": 0.5 + s / 100, "score": 0.4 + s / 80, "length_chars": 200.0,
            "repetition_rate": 0.0} for s in (0, 5, 10, 15, 20)])
    (run / "corpus").mkdir()
    (run / "corpus" / "manifest.json").write_text(json.dumps(
        {"stage": "corpus", "totals": {"read": 1000, "kept": 950}, "note": "<script>alert(1)</script>"}))
    report = {"tokenizer": "tok", "corpus": "corpus", "baseline": "bpe", "documents": {"ko": 10, "en": 5},
              "characters": {"ko": 4000, "en": 3000},
              "rows": [{"name": n, "vocab_size": 6000, "tokens": {"ko": ko, "en": 700},
                        "alignment": None, "alignment_recall": rec, "alignment_precision": rec,
                        "alignment_off_between_syllables": 0}
                       for n, ko, rec in (("OpenHCX exact", 1000, 0.99), ("plain byte-level BPE", 1500, 0.7))],
              "missing_references": {"llama3": "tiktoken file not found"}}
    (run / "tokenizer-report").mkdir()
    (run / "tokenizer-report" / "report.json").write_text(json.dumps(report))
    for step in (10, 20, 30, 40):  # Code, Factuality and Harmlessness never run on these
        d = run / "evals" / "sft" / f"step-{step:08d}"
        ckpt = {"stage": "sft", "step": step, "path": str(d / "model"), "final": False}
        tasks = {task: (acc + step / 200, n) for task, (acc, n) in SUITES[0].items()}
        if step == 40:
            tasks.update(SUITES[2])
        write_results(d / "results.json", str(d / "model"), tasks, ckpt, {"bpb": 2.0 - step / 100})
        # the harness's own results of the same tasks, below the evaluation's: not a second model
        write_results(d / "tasks" / "results.json", str(d / "model"), {t: (0.0, n) for t, (_, n) in tasks.items()})
    write_results(run / "evals" / "final" / "sft" / "results.json", str(run / "sft/model"), SUITES[1],
                  {"stage": "sft", "step": None, "path": str(run / "sft/model"), "final": True})
    write_results(run / "evals" / "final" / "ppo" / "results.json", str(run / "ppo/model"),
                  {"mmlu_virology": (0.85, 300), "gsm8k_maj8": (0.15, 20), "truthfulqa_mc2": (0.6, 50)},
                  {"stage": "ppo", "step": None, "path": str(run / "ppo/model"), "final": True}, {"heldout_score": 0.7})
    return run


def test_report_of_a_whole_run(tmp_path):
    run = synthetic_run(tmp_path / "run")
    page = Page(build_report(str(run)).read_text(encoding="utf-8"))
    assert sorted(page.images) == ["report/loss-base.png", "report/loss-reward.png", "report/loss-sft.png",
                                   "report/ppo.png", "report/radar.png"]
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted(Path(i).name for i in page.images)
    assert all((run / i).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for i in page.images)
    assert "not run" not in page.sections["loss-curves"] + page.sections["ppo"] + page.sections["tokenizer"]
    assert "<script>alert(1)</script>" in page.sections["overview"]  # shown as text, escaped in the source
    assert "<script>" not in (run / "report.html").read_text(encoding="utf-8")

    table_rows = [r for r in page.rows if len(r) > 10]
    head = table_rows[0]
    assert head[:3] == ["stage", "step", "bpb"]  # labels say no more than stage and step: no model column
    evals = {" ".join(r[:2]): dict(zip(head, r)) for r in table_rows[1:]}
    assert list(evals) == ["sft 10", "sft 20", "sft 30", "sft 40", "sft final", "ppo final"]
    assert evals["sft 40"]["Math"] == "25.00" and evals["sft 10"]["Math"] == "missing"
    assert evals["sft 40"]["Code"] == "missing" and evals["ppo final"]["bpb"] == "missing"
    assert evals["sft 20"]["bpb"] == "1.8" and evals["ppo final"]["heldout_score"] == "0.7"
    assert evals["sft 20"]["Korean"] == "50.00"
    assert "steps 40, final_loss 1.774" in [r for r in page.rows if r[0] == "sft" and len(r) == 2][0][1]

    tok = [r for r in page.rows if r and r[0] == "plain byte-level BPE"][0]
    assert tok[2:4] == ["150.0 (1.50)", "140.0 (1.00)"] and tok[4:6] == ["375.0", "233.3"]
    # two finals and at most three checkpoints, spread from first to last
    assert "Drawn: sft step 10, sft step 30, sft step 40, sft final, ppo final. In the table only: sft step 20." \
        in page.sections["category-radar"]


def test_missing_inputs_say_not_run(tmp_path):
    (tmp_path / "run").mkdir()
    page = Page(build_report(str(tmp_path / "run")).read_text(encoding="utf-8"))
    assert page.images == []
    for section in ("loss-curves", "ppo", "tokenizer", "evaluated-checkpoints", "category-radar"):
        assert "not run" in page.sections[section], section
    assert page.sections["overview"].count("not run") == 9
    with pytest.raises(UserError, match="run directory not found"):
        build_report(str(tmp_path / "nope"))


def test_bad_lines_name_file_and_line_and_a_line_being_written_is_left_out(tmp_path):
    run = tmp_path / "run"
    (run / "sft").mkdir(parents=True)
    rows = [json.dumps(asdict(StepMetrics(s, 2.0, 1e-3, 1.0, 64, 10, 1.0, 0.0, 0.1))) for s in (1, 2)]
    (run / "sft" / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 3, "lo')
    build_report(str(run))
    assert (run / "report" / "loss-sft.png").is_file()
    (run / "sft" / "metrics.jsonl").write_text(rows[0] + '\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: key 'loss'"):
        build_report(str(run))
    assert (run / "report" / "loss-sft.png").is_file()  # the earlier report is left whole


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    return exe


def test_report_renders_in_headless_chromium(tmp_path):
    """The page as a person sees it: a real browser renders it with the figures, and logs no console message."""
    from matplotlib.image import imread

    exe = chromium()
    run = synthetic_run(tmp_path / "run")
    url = build_report(str(run)).resolve().as_uri()
    flags = ["--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    done = subprocess.run([exe, *flags, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                           "--window-size=1200,4200", "--hide-scrollbars", url],
                          capture_output=True, text=True, timeout=120)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # the page has no script: any console message is an error (a blocked or broken load)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (4200, 1200) and pixels.std() > 0.05  # not blank
    # the plotted lines' matplotlib blue shows only when the figures loaded (a broken image is an icon)
    blue = (abs(pixels[..., 0] - 31 / 255) < 0.06) & (abs(pixels[..., 1] - 119 / 255) < 0.06) \
        & (abs(pixels[..., 2] - 180 / 255) < 0.06)
    assert blue.sum() > 2000
    dom = subprocess.run([exe, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    rendered = Page(dom)
    assert len(rendered.images) == 5 and "radar" in " ".join(rendered.images)
    assert {"overview", "loss-curves", "ppo", "tokenizer", "evaluated-checkpoints", "category-radar"} \
        <= set(rendered.sections)


def test_results_without_checkpoint_take_it_from_their_place_in_the_run(tmp_path):
    run = tmp_path / "run"
    write_results(run / "evals" / "base" / "step-00000010" / "results.json", "snapshot", SUITES[0])
    write_results(run / "evals" / "final" / "base" / "results.json", "elsewhere", SUITES[1])
    page = Page(build_report(str(run)).read_text(encoding="utf-8"))
    assert [r[:3] for r in page.rows if r and r[0] == "base" and len(r) > 3] == [["base", "10", "40.00"],
                                                                                ["base", "final", "missing"]]
