"""Recipes: one YAML file whose sections are the arguments of each stage's function.

A section is validated against its function's typed signature before anything runs, so a wrong key or type
fails at once with the key's name. Not here: running the stages (openhcx.pipeline.runner).
"""

from __future__ import annotations

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
        # Typed configs check their own values when built (e.g. Cluster's workers), so building is checking too.
        return parser.instantiate_classes(ns).as_dict() if isinstance(ns, Namespace) else dict(ns)
    except Exception as e:  # jsonargparse reports the key; we add the file and section
        raise UserError(f"{where}: {e}".strip()) from None


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
