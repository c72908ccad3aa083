"""Train and report the tokenizer on the larger real Korean prose in the shared corpora (never committed).

Korean: Blue House petitions (CC0), NSMC movie reviews (CC0), KoCoNovel (CC BY-SA 4.0); English and code:
the demo corpora. Writes runs/shared/{corpus,tokenizer,tokenizer-plain-bpe,tokenizer-report}. Usage:
    python scripts/tokenizer_on_shared.py [--shared ../shared] [--vocab-size 100000] [--out runs/shared]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from openhcx.pipeline.runner import run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--vocab-size", type=int, default=100_000)
    ap.add_argument("--out", default="runs/shared")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    corpora = Path(args.shared) / "corpora"
    with tempfile.TemporaryDirectory() as tmp:
        # NSMC ships one JSON array per movie; one review is too short to be a document, so a movie's
        # reviews, one per line, make one.
        nsmc = Path(tmp) / "nsmc.jsonl"
        with nsmc.open("w", encoding="utf-8") as f:
            for path in sorted((corpora / "nsmc" / "raw").glob("*.json")):
                reviews = [r["review"] for r in json.loads(path.read_text(encoding="utf-8"))]
                f.write(json.dumps({"text": "\n".join(reviews)}, ensure_ascii=False) + "\n")
        recipe = {
            "corpus": {
                "sources": [
                    {"path": str(corpora / "korean-petitions"), "label": "ko", "text_field": "content",
                     "format": "jsonl"},
                    {"path": str(nsmc), "label": "ko"},
                    {"path": str(corpora / "koconovel" / "data" / "jsonl"), "label": "ko"},
                    {"path": str(ROOT / "data/demo/corpus/en.jsonl.gz"), "label": "en"},
                    {"path": str(ROOT / "data/demo/corpus/code.jsonl.gz"), "label": "code"},
                ],
                "heldout_fraction": 0.05,
            },
            "tokenizer": {"vocab_size": args.vocab_size, "workers": args.workers},
            "report": {"max_docs": 300},
        }
        path = Path(tmp) / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
        run(str(path), args.out)


if __name__ == "__main__":
    main()
