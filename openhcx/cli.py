"""`openhcx <stage>`: one typed function per subcommand.

The functions' signatures and docstrings are the CLI and the YAML schema (`--config recipe.yaml`, then
`--key value` overrides), so `--help` is always true. Not a place for logic: each entry calls a library function.
"""

from __future__ import annotations

import sys

from jsonargparse import CLI

from openhcx.io import UserError


def commands() -> dict:
    from openhcx.data.corpus import build_corpus
    from openhcx.recipe import run
    from openhcx.tokenizer.report import tokenizer_report
    from openhcx.tokenizer.train import train_tokenizer

    return {
        "run": run,
        "corpus": {"build": build_corpus},
        "tokenizer": {"train": train_tokenizer, "report": tokenizer_report},
    }


def main(argv: list[str] | None = None) -> int:
    try:
        CLI(commands(), args=argv, as_positional=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
