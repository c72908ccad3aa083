"""The evaluation suite an evaluation worker runs on one checkpoint: benchmark tasks plus suite-level figures.

A recipe's `evaluation.suites.<stage>` section is a `Suite`; `run_suite` evaluates one checkpoint directory
with it and writes `<out>/results.json`: the harness's EvalResults JSON for the suite's tasks, plus the
checkpoint it describes (`checkpoint`), figures that are not benchmark tasks (`metrics`), the counts behind
them (`counts`) and the suite itself (`suite`). The figures:

- `bpb`: bits per byte of held-out corpus documents (the corpus stage's `heldout` split), in the checkpoint's
  own tokenization. Each document is `<|endoftext|>` (the separator pretraining puts before every document)
  followed by its tokens, cut into windows of max_seq_len + 1 tokens where each window's first token is the
  previous one's last; a window's model input is all its tokens but the last, and it scores every token after
  its first (context never crosses a window). So every token of the document is scored exactly once, and
  bpb = summed NLL in nats / (ln 2 x the documents' UTF-8 bytes) is true bits per byte: the scored tokens
  are the whole text, and the tokenizer round-trips exactly, so those are exactly the bytes they cover.
- `heldout_score`, `heldout_constraints`, `heldout_length_chars`, `heldout_repetition_rate`: greedy answers to
  held-out prompt records judged by the programmatic scorer, as PPO judges them in its loop (ppo.HeldoutSet).
- `pair_accuracy`, `pair_loss`, `pair_margin`: a reward checkpoint's pairwise figures on the held-out prompts
  of a preference file, split as train_reward splits it (same fraction, seed and skipping), so only pairs the
  model never trained on are scored.

A reward checkpoint (scalar head) cannot generate or score choices: its suite may set only `pairs` (and the
split's settings). Benchmark tasks go through the harness with a resumable cache in `<out>/tasks/`.
Not here: picking up events, snapshots of checkpoints, logging to MLflow (the runner does those; the harness
also logs its task scores where MLFLOW_TRACKING_URI is set), thread settings (the worker's environment decides).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal, Sequence

import torch

from openhcx.data.chat import render_prompt
from openhcx.data.corpus import iter_documents
from openhcx.eval.categories import category_scores, overall
from openhcx.eval.generation import open_generator
from openhcx.eval.harness import MODES, EvalResults, evaluate_backend, open_models
from openhcx.eval.tasks import REGISTRY
from openhcx.io import UserError, require_file, write_json
from openhcx.model.hf import load_checkpoint, read_config
from openhcx.model.transformer import Transformer
from openhcx.tokenizer.tokenizer import ENDOFTURN, EOT, PAD, Tokenizer
from openhcx.train.batching import pad_right, token_budget_batches
from openhcx.train.losses import IGNORE_INDEX


@dataclass(frozen=True)
class Suite:
    """One stage's evaluation (a recipe's evaluation.suites.<stage> section); an empty suite evaluates nothing."""

    tasks: list[str] = field(default_factory=list)
    """Harness task or group names (`arc_easy`, `kmmlu`, ...; `openhcx eval --help` lists them)."""
    limit: int | None = None
    """Items per task (the first ones); null: every item."""
    shots: int | None = None
    """Few-shot examples per item for every task; null: each task's RECIPE §6 default."""
    mode: Literal["loglik", "letters"] = "loglik"
    """Multiple-choice scoring: lm-evaluation-harness log-likelihoods, or the report's option letters."""
    data_root: str | None = None
    """Folder of benchmark files; null: the tasks' default location (env OPENHCX_BENCHMARKS, shared/benchmarks)."""
    bpb: str | None = None
    """A corpus directory (the corpus stage's output) whose held-out split gives bits per byte; null: no bpb."""
    bpb_docs: int = 64
    """Held-out documents scored for bpb, taken from each segment label in turn."""
    prompts: str | None = None
    """Held-out prompt records (data/demo/heldout_prompts.jsonl format) answered greedily and scored."""
    prompt_limit: int = 64
    """Prompt records used (the file's first ones)."""
    max_new_tokens: int = 48
    """Longest greedy answer to a held-out prompt, in tokens."""
    pairs: str | None = None
    """Preference file (as given to train_reward): pairwise accuracy of a reward checkpoint on its held-out split."""
    heldout_fraction: float = 0.05
    """Share of the pairs' prompts held out: must equal the reward stage's heldout_fraction (its default too)."""
    skip_bad: bool = False
    """Skip malformed or over-long pairs: must equal the reward stage's skip_bad, or the split differs."""
    seed: int = 0
    """The reward stage's seed (it draws the held-out split)."""
    batch_tokens: int = 4096
    """Padded tokens per forward pass (benchmark requests, bpb windows, reward pairs)."""
    judge: str | None = None
    """The model grading judged tasks (MT-Bench, KoMT-Bench): a checkpoint directory or an http(s) endpoint."""
    toxicity: str | None = None
    """The toxicity scorer of toxicity tasks (BOLD, KoSBi, SQuARe): a `train_toxicity` directory or an HF
    classifier; null: env OPENHCX_TOXICITY."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise UserError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        for key, low in (("limit", 1), ("shots", 0), ("bpb_docs", 1), ("prompt_limit", 1), ("max_new_tokens", 1),
                         ("batch_tokens", 1)):
            value = getattr(self, key)
            if value is not None and value < low:
                raise UserError(f"{key}={value}: must be at least {low}")
        if not 0 < self.heldout_fraction < 1:
            raise UserError(f"heldout_fraction={self.heldout_fraction}: must lie strictly between 0 and 1")


PAIR_FIELDS = ("pairs", "heldout_fraction", "skip_bad", "seed", "batch_tokens")
"""The fields that apply to a reward checkpoint; any other one set is refused for it."""


@dataclass(frozen=True)
class BitsPerByte:
    bpb: float
    documents: int
    tokens: int  # tokens scored: every token of every document
    bytes: int  # UTF-8 bytes of the documents


def run_suite(model: str, out: str, suite: Suite, checkpoint: dict, progress: bool = False,
              device: str = "cpu") -> dict:
    """Evaluate one checkpoint directory; write <out>/results.json atomically and return it.

    checkpoint: what the results describe ({"stage", "step", "path"}), copied into them as given.
    progress: show the harness's per-task progress bars. device: where the model runs ("cpu", "cuda:1").
    """
    start = time.time()
    config = read_config(require_file(model, "checkpoint directory"))
    check_inputs(suite, model, scalar=config.head == "scalar")
    tasks = run_tasks(model, Path(out) / "tasks", suite, progress, device)
    metrics, counts = {}, {}
    if config.head == "scalar":
        if suite.pairs:
            metrics, counts = pair_figures(model, suite, device)
    elif suite.bpb or suite.prompts:
        metrics, counts = lm_figures(model, suite, device)
    results = {**tasks.to_json(), "seconds": time.time() - start, "checkpoint": dict(checkpoint),
               "metrics": metrics, "counts": counts, "suite": asdict(suite)}
    write_json(Path(out) / "results.json", results)
    return results


def check_inputs(suite: Suite, model: str, scalar: bool) -> None:
    """Refuse what cannot run on this checkpoint, and missing files, before any work."""
    default = Suite()
    if scalar:
        for f in fields(Suite):
            if f.name not in PAIR_FIELDS and getattr(suite, f.name) != getattr(default, f.name):
                raise UserError(f"{f.name}: {model} is a reward checkpoint (scalar head), which can only score "
                                "`pairs`; remove this field from its suite")
    elif suite.pairs:
        raise UserError(f"pairs: {model} is a language model; pairwise accuracy needs a reward checkpoint")
    REGISTRY.expand(suite.tasks)  # unknown names fail here
    for key, what in (("data_root", "benchmark folder"), ("prompts", "held-out prompt file"),
                      ("pairs", "preference file"), ("toxicity", "toxicity scorer")):
        if getattr(suite, key):
            require_file(getattr(suite, key), what)
    if suite.bpb:
        require_file(Path(suite.bpb) / "manifest.json", "corpus manifest")
    if suite.judge and not suite.judge.startswith(("http://", "https://")):
        require_file(suite.judge, "judge checkpoint directory")


def run_tasks(model: str, out: Path, suite: Suite, progress: bool, device: str) -> EvalResults:
    """The harness on the suite's tasks (cache, per-item samples and its own results under `out`)."""
    if not suite.tasks:
        categories = category_scores({})
        return EvalResults(model=model, mode=suite.mode, tasks={}, categories=categories,
                           overall=overall(categories), config={"tasks": []})
    backend, generator = open_models(model, suite.tasks, device=device, batch_tokens=suite.batch_tokens)
    judge = open_generator(suite.judge, device) if suite.judge else None
    return evaluate_backend(backend, model, suite.tasks, out=str(out), shots=suite.shots, limit=suite.limit,
                            mode=suite.mode, data_root=suite.data_root, progress=progress, log_to_mlflow=False,
                            config=dict(device=device, batch_tokens=suite.batch_tokens, judge=suite.judge,
                                        toxicity=suite.toxicity),
                            generator=generator, judge=judge, toxicity=suite.toxicity)


def load_model(model: str, device: str) -> Transformer:
    # float32 on CPU, as the harness's backend loads it; the saved dtype on an accelerator
    lm, _ = load_checkpoint(model, dtype=torch.float32 if device == "cpu" else None, device=device)
    return lm.eval()


def lm_figures(model: str, suite: Suite, device: str) -> tuple[dict, dict]:
    """bpb and the held-out prompt scores of a language-model checkpoint."""
    from openhcx.train.ppo import HeldoutSet, read_heldout  # the training stack: imported when used

    tok, lm = Tokenizer.load(model), load_model(model, device)
    metrics, counts = {}, {}
    if suite.bpb:
        b = bits_per_byte(lm, tok, heldout_documents(suite.bpb, suite.bpb_docs), suite.batch_tokens)
        metrics["bpb"] = b.bpb
        counts |= {"bpb_documents": b.documents, "bpb_tokens": b.tokens, "bpb_bytes": b.bytes}
    if suite.prompts:
        records = read_heldout(suite.prompts)[: suite.prompt_limit]
        held = HeldoutSet(records, [render_prompt(r.messages, tok) for r in records], tok.decode,
                          (tok.id(ENDOFTURN), tok.id(EOT)), tok.id(PAD), suite.max_new_tokens)
        metrics |= {f"heldout_{k}": v for k, v in held.evaluate(lm).items()}
        counts["heldout_prompts"] = len(records)
    return metrics, counts


def heldout_documents(corpus: str | Path, limit: int) -> list[str]:
    """Up to `limit` held-out documents of a corpus, one from each segment label in turn (so a code-first
    label order does not make a Korean model's bpb a code figure); a label that runs out drops out."""
    manifest = require_file(Path(corpus) / "manifest.json", "corpus manifest")
    labels = json.loads(manifest.read_text(encoding="utf-8")).get("labels") or {}
    streams = [iter_documents(corpus, "heldout", [label]) for label in labels]
    in_turn = (doc for round_ in itertools.zip_longest(*streams) for doc in round_ if doc is not None)
    docs = [doc.text for doc in itertools.islice(in_turn, limit)]
    if not docs:
        raise UserError(f"{corpus}: the corpus has no held-out documents (build it with heldout_fraction > 0)")
    return docs


@torch.inference_mode()
def bits_per_byte(model: Transformer, tok: Tokenizer, texts: Sequence[str], batch_tokens: int) -> BitsPerByte:
    """NLL of every token of every text after a leading <|endoftext|>, in windows of max_seq_len + 1 tokens that
    share one token with the next window (see the module's docstring)."""
    span = model.config.max_seq_len
    windows, n_bytes, n_tokens = [], 0, 0
    for text in texts:
        ids = [tok.id(EOT)] + tok.encode(text)
        windows += [ids[s:s + span + 1] for s in range(0, len(ids) - 1, span)]
        n_bytes, n_tokens = n_bytes + len(text.encode("utf-8")), n_tokens + len(ids) - 1
    device = model.model.norm.weight.device
    nll = 0.0
    for idx in token_budget_batches([len(w) for w in windows], max(batch_tokens, span + 1), shuffle=False):
        ids, attn = pad_right([windows[i] for i in idx], tok.id(PAD))
        targets = ids[:, 1:].masked_fill(attn[:, 1:] == 0, IGNORE_INDEX)  # right padding: never attended to
        total, _ = model(ids[:, :-1].to(device), targets=targets.to(device))
        nll += float(total)
    return BitsPerByte(nll / (math.log(2) * n_bytes), len(texts), n_tokens, n_bytes)


def pair_figures(model: str, suite: Suite, device: str) -> tuple[dict, dict]:
    """Pairwise accuracy, Bradley-Terry loss and margin of a reward checkpoint on the held-out prompts' pairs."""
    from openhcx.train.reward import collate_groups, group_batches, load_pair_data, pair_metrics

    tok, rm = Tokenizer.load(model), load_model(model, device)
    # No budget refusal here (training needed a prompt's pairs in one step); a bigger group gets its own batch.
    data = load_pair_data([suite.pairs], tok, rm.config.max_seq_len, sys.maxsize, suite.skip_bad,
                          suite.heldout_fraction, suite.seed)
    budget = max([suite.batch_tokens] + [g.rows * g.longest for g in data.heldout])
    batches = [collate_groups([data.heldout[i] for i in idx], tok.id(PAD))[0]
               for idx in group_batches(data.heldout, budget, 0, shuffle=False)]
    m = pair_metrics(rm, batches, torch.device(device))
    return ({"pair_accuracy": m["accuracy"], "pair_loss": m["loss"], "pair_margin": m["margin"]},
            {"pairs": m["pairs"], "pair_prompts": len(data.heldout)})
