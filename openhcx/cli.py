"""`openhcx <stage>`: one typed function per subcommand.

The functions' signatures and docstrings are the CLI and the YAML schema (`--config file.yaml`, then
`--key value` overrides), so `--help` is always true. Not a place for logic: each entry calls a library
function, imported only when its command runs.
"""

from __future__ import annotations

import importlib
import os
import sys

from jsonargparse import CLI, set_parsing_settings

from openhcx.io import UserError

COMMANDS = {
    "run": "openhcx.pipeline.runner:run",
    "status": "openhcx.pipeline.status:status",
    "worker": "openhcx.pipeline.evaluation:worker",
    "corpus build": "openhcx.data.corpus:build_corpus",
    "tokenizer train": "openhcx.tokenizer.train:train_tokenizer",
    "tokenizer report": "openhcx.tokenizer.report:tokenizer_report",
    "shards build": "openhcx.data.shards:build_shards",
    "pretrain": "openhcx.train.pretrain:pretrain",
    "sft": "openhcx.train.sft:sft",
    "reward": "openhcx.train.reward:train_reward",
    "ppo": "openhcx.train.ppo:ppo",
    "eval": "openhcx.eval:evaluate",
    "eval radar": "openhcx.eval:radar",
    "eval transfer": "openhcx.eval.transfer:transfer",
    "generate": "openhcx.chat:generate",
    "chat": "openhcx.chat:chat",
    "serve": "openhcx.serve:serve",
    "import-hf": "openhcx.model.hf:import_hf",
    "export": "openhcx.model.hf:export",
    "report": "openhcx.pipeline.report:build_report",
}


# Commands whose one required argument may also be given bare: `openhcx status RUN`.
POSITIONAL = {"status": "--run", "report": "--run", "serve": "--model"}

set_parsing_settings(docstring_parse_attribute_docstrings=True)  # dataclass field docs show in --help


def load_function(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def usage() -> str:
    lines = ["usage: openhcx <command> [--help] [--config FILE.yaml] [--key value ...]", "", "commands:"]
    for name, target in COMMANDS.items():
        doc = (load_function(target).__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<20} {doc[0] if doc else ''}")
    return "\n".join(lines)


def _user_error_behind(e: BaseException) -> UserError | None:
    """The UserError that caused `e`, if any: jsonargparse wraps what a config's own checks raise."""
    while e is not None and not isinstance(e, UserError):
        e = e.__cause__
    return e


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Longest match first: "tokenizer train" before a one-word command.
    name = next((" ".join(argv[:n]) for n in (2, 1) if " ".join(argv[:n]) in COMMANDS), None)
    if name is None:
        print(usage(), file=sys.stdout if argv[:1] in ([], ["-h"], ["--help"]) else sys.stderr)
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    args = argv[len(name.split()):]
    if not sys.stderr.isatty():  # a log file or CI: no progress bars from libraries (tqdm, transformers)
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if name in POSITIONAL and args[:1] and not args[0].startswith("-"):
        args = [POSITIONAL[name], *args]
    try:
        CLI(load_function(COMMANDS[name]), args=args, prog=f"openhcx {name}", as_positional=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # a typed config refusing a value (e.g. cluster.workers) while the CLI builds it
        if (refused := _user_error_behind(e)) is None:
            raise
        print(f"error: {refused}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
