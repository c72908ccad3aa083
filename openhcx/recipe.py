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
    try:
        ns = _parser(fn).parse_object({**section, **fixed})
    except Exception as e:  # jsonargparse reports the key; we add the file and section
        raise UserError(f"{where}: {e}".strip()) from None
    return _parser(fn).instantiate_classes(ns).as_dict() if isinstance(ns, Namespace) else dict(ns)


def load_recipe(path: str | Path, stages: dict[str, Callable]) -> dict[str, dict]:
    path = require_file(path, "recipe")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(recipe, dict):
        raise UserError(f"{path}: a recipe is a mapping of stage name to arguments")
    unknown = sorted(set(recipe) - set(stages))
    if unknown:
        raise UserError(f"{path}: unknown section '{unknown[0]}' (known: {', '.join(stages)})")
    return recipe


def run(recipe: str = "recipes/tiny.yaml", out: str = "runs/demo") -> None:
    """Run the whole flow of a recipe: corpus -> tokenizer (and its plain-BPE baseline) -> report.

    Args:
        recipe: YAML file with one section per stage (corpus, tokenizer, report).
        out: Run directory; each stage writes its artifact into a subdirectory and replaces an older one.
    """
    from openhcx.data.corpus import build_corpus
    from openhcx.tokenizer.report import tokenizer_report
    from openhcx.tokenizer.train import train_tokenizer

    stages = {"corpus": build_corpus, "tokenizer": train_tokenizer, "report": tokenizer_report}
    sections = load_recipe(recipe, stages)
    run_dir = Path(out)
    corpus, tok, base = run_dir / "corpus", run_dir / "tokenizer", run_dir / "tokenizer-plain-bpe"
    # Validate every section before the first stage starts: a typo must not cost a long run.
    plan = [
        ("corpus", build_corpus, dict(out=str(corpus), overwrite=True)),
        ("tokenizer", train_tokenizer, dict(corpus=str(corpus), out=str(tok), overwrite=True)),
        ("tokenizer", train_tokenizer,
         dict(corpus=str(corpus), out=str(base), overwrite=True, morpheme_aware=False)),
        ("report", tokenizer_report,
         dict(tokenizer=str(tok), corpus=str(corpus), baseline=str(base), out=str(run_dir / "report"))),
    ]
    calls = [(name, fn, stage_args(fn, sections.get(name) or {}, f"{recipe}:{name}", **fixed))
             for name, fn, fixed in plan]
    for name, fn, args in calls:
        start = time.perf_counter()
        print(f"== {name}: {fn.__name__}", flush=True)
        fn(**args)
        print(f"== {name} done in {time.perf_counter() - start:.1f}s", flush=True)
