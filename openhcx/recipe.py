"""Run a recipe: one YAML file whose sections are the arguments of each stage's function.

A section is validated against its function's typed signature before anything runs, so a wrong key or type
fails at once with the key's name. Stage outputs go under one run directory, one artifact per arrow
(DESIGN.md). Not a workflow engine: stages run in the order the flow defines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import yaml
from jsonargparse import ArgumentParser, Namespace

from openhcx.io import UserError, require_file


def _parser(fn: Callable) -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(fn, as_positional=False)
    return parser


def stage_args(fn: Callable, section: dict, where: str, **fixed) -> dict:
    """Validate one recipe section against `fn`'s signature; `fixed` fills paths the runner owns."""
    clash = sorted(set(section) & set(fixed))
    if clash:
        raise UserError(f"{where}.{clash[0]}: set by the recipe runner, remove it from the recipe")
    parser = _parser(fn)
    try:
        ns = parser.parse_object({**section, **fixed})
    except Exception as e:  # jsonargparse reports the key; we add the file and section
        raise UserError(f"{where}: {e}".strip()) from None
    return parser.instantiate_classes(ns).as_dict() if isinstance(ns, Namespace) else dict(ns)


def load_recipe(path: str | Path, stages: set[str]) -> dict[str, dict]:
    path = require_file(path, "recipe")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(recipe, dict):
        raise UserError(f"{path}: a recipe is a mapping of stage name to arguments")
    unknown = sorted(set(recipe) - set(stages))
    if unknown:
        raise UserError(f"{path}: unknown section '{unknown[0]}' (known: {', '.join(sorted(stages))})")
    return recipe


def plan(run_dir: Path) -> list[tuple[str, str, str, dict]]:
    """The flow in order: (recipe section, function, output name, arguments the runner fixes)."""
    corpus, tok, base = str(run_dir / "corpus"), str(run_dir / "tokenizer"), str(run_dir / "tokenizer-plain-bpe")
    return [
        ("corpus", "openhcx.data.corpus:build_corpus", "corpus", dict(out=corpus, overwrite=True)),
        ("tokenizer", "openhcx.tokenizer.train:train_tokenizer", "tokenizer",
         dict(corpus=corpus, out=tok, overwrite=True)),
        # The report compares with a plain byte-level BPE trained on the same corpus at the same size.
        ("report", "openhcx.tokenizer.train:train_tokenizer", "tokenizer-plain-bpe",
         dict(corpus=corpus, out=base, overwrite=True, morpheme_aware=False)),
        ("report", "openhcx.tokenizer.report:tokenizer_report", "report",
         dict(tokenizer=tok, corpus=corpus, baseline=base, out=str(run_dir / "report"))),
        ("shards", "openhcx.data.shards:build_shards", "shards",
         dict(corpus=corpus, tokenizer=tok, out=str(run_dir / "shards"), overwrite=True)),
        ("pretrain", "openhcx.train.pretrain:pretrain", "base",
         dict(shards=str(run_dir / "shards"), tokenizer=tok, out=str(run_dir / "base"))),
    ]


def run(recipe: str = "recipes/tiny.yaml", out: str = "runs/demo") -> None:
    """Run the stages of a recipe in flow order: corpus -> tokenizer (+ report) -> shards -> pretrain.

    A stage runs when the recipe has its section (an empty section takes the defaults); the tokenizer's
    section also sets the plain-BPE baseline the report compares with.

    Args:
        recipe: YAML file with one section per stage (corpus, tokenizer, report, shards, pretrain).
        out: Run directory; each stage writes its artifact into a subdirectory and replaces an older one.
    """
    from openhcx.cli import load_function

    steps = plan(Path(out))
    sections = load_recipe(recipe, {name for name, *_ in steps})
    calls = []
    # Validate every section before the first stage starts: a typo must not cost a long run.
    for name, target, artifact, fixed in steps:
        if name not in sections:
            continue
        section = dict(sections[name] or {})
        if target.endswith("train_tokenizer") and artifact != "tokenizer":
            # The baseline shares the tokenizer's vocabulary size and corpus filters.
            section = {k: v for k, v in (sections.get("tokenizer") or {}).items() if k != "morpheme_aware"}
        fn = load_function(target)
        calls.append((artifact, fn, stage_args(fn, section, f"{recipe}:{name}", **fixed)))
    for artifact, fn, args in calls:
        start = time.perf_counter()
        print(f"== {artifact}: {fn.__name__}", flush=True)
        fn(**args)
        print(f"== {artifact} done in {time.perf_counter() - start:.1f}s", flush=True)
    print(f"\nArtifacts in {out}/ (each with manifest.json):")
    for artifact, _, _ in calls:
        print(f"  {Path(out) / artifact}")
