"""Cross-lingual transfer of instruction tuning: train in language X, test in Y (RECIPE §6, the report's study).

For each training language X, the base model is fine-tuned (our `sft` stage) on the conversations of the data
whose language is X; each resulting model answers the held-out prompts of every language Y, scored by the
programmatic held-out scorer (as PPO and the evaluation workers score them). The matrix holds perf(X -> Y) and the
transfer score perf(X -> Y) / perf(Y -> Y): 1.0 means training in X serves Y as well as training in Y itself.
A conversation's language is its `checks[].lang` where given, else Korean when its user turns are mostly Hangul.
Runs are resumable: a finished SFT directory (its manifest) is reused, and `transfer.json` is written atomically.
Not here: benchmark-task transfer (run `openhcx eval` on the per-language models in `<out>/sft-<X>`).
"""

from __future__ import annotations

import json
from pathlib import Path

from openhcx.io import UserError, atomic_file, require_file, write_json


def language_of(record: dict) -> str:
    from openhcx.align.scorer import hangul_share

    langs = {c.get("lang") for c in record.get("checks") or [] if isinstance(c, dict)}
    if len(langs) == 1 and None not in langs:
        return langs.pop()
    users = " ".join(m.get("content", "") for m in record.get("messages", []) if m.get("role") == "user")
    share = hangul_share(users)
    return "ko" if share is not None and share > 0.5 else "en"


def split_by_language(path: str, languages: list[str], out: Path) -> dict[str, Path]:
    """One conversation file per language (lines kept verbatim); each language must have some."""
    lines: dict[str, list[str]] = {x: [] for x in languages}
    with open(require_file(path, "conversation file"), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                lang = language_of(json.loads(line))
            except (ValueError, AttributeError):
                raise UserError(f"{path}:{n}: not a JSON conversation record") from None
            if lang in lines:
                lines[lang].append(line if line.endswith("\n") else line + "\n")
    return write_per_language(path, lines, out, "conversations")


def write_per_language(path: str, lines: dict[str, list[str]], out: Path, what: str) -> dict[str, Path]:
    """<out>/<stem>.<lang>.jsonl for each language's lines (atomically); a language without lines is an error."""
    files = {}
    for lang, rows in lines.items():
        if not rows:
            raise UserError(f"{path}: no {what} in language {lang!r}")
        files[lang] = out / f"{Path(path).stem}.{lang}.jsonl"
        with atomic_file(files[lang], encoding="utf-8") as f:
            f.writelines(rows)
    return files


def transfer(base: str, data: str, heldout: str, out: str, languages: list[str] | None = None,
             sft: dict | None = None, max_new_tokens: int = 48, prompt_limit: int = 64,
             device: str = "cpu") -> dict:
    """Train-in-X / test-in-Y matrix of held-out prompt scores, and the transfer scores perf(X->Y) / perf(Y->Y).

    Args:
        base: Base model checkpoint every SFT run starts from.
        data: Conversation file (chat jsonl with `checks[].lang`, as data/demo/sft.jsonl), split by language.
        heldout: Held-out prompt records (data/demo/heldout_prompts.jsonl format), split by their `lang`.
        out: Directory: data/<file>.<lang>.jsonl, sft-<lang>/ per training language, transfer.json.
        languages: Languages of the matrix (default: ko, en).
        sft: Arguments of the `sft` stage for every run (e.g. {"epochs": 2, "max_tokens": 4096}).
        max_new_tokens: Longest greedy answer to a held-out prompt.
        prompt_limit: Held-out prompts per test language (the first ones).
        device: Torch device for the held-out answers.
    """
    from openhcx.pipeline.suites import Suite, lm_figures
    from openhcx.train.sft import sft as run_sft

    languages = languages or ["ko", "en"]
    sft = dict(sft or {})
    taken = {"base", "data", "out"} & set(sft)
    if taken:
        raise UserError(f"sft.{sorted(taken)[0]}: set by transfer itself, not in its sft section")
    root = Path(out)
    train_files = split_by_language(data, languages, root / "data")
    test_files = split_heldout(heldout, languages, root / "data")
    perf: dict[str, dict[str, float]] = {}
    for x in languages:
        run = root / f"sft-{x}"
        if not (run / "manifest.json").is_file():
            run_sft(base=base, data=[str(train_files[x])], out=str(run), **sft)
        perf[x] = {}
        for y in languages:
            suite = Suite(prompts=str(test_files[y]), prompt_limit=prompt_limit, max_new_tokens=max_new_tokens)
            metrics, _ = lm_figures(str(run / "model"), suite, device)
            perf[x][y] = metrics["heldout_score"]
    scores = {x: {y: perf[x][y] / perf[y][y] if perf[y][y] else None for y in languages} for x in languages}
    result = {"languages": languages, "perf": perf, "transfer": scores, "base": base, "data": data,
              "heldout": heldout, "sft": sft}
    write_json(root / "transfer.json", result)
    print(table(result))
    return result


def split_heldout(path: str, languages: list[str], out: Path) -> dict[str, Path]:
    from openhcx.train.ppo import read_heldout

    records = read_heldout(path)  # validates every record, naming file and line
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    by_lang = {lang: [line for line, rec in zip(lines, records) if rec.lang == lang] for lang in languages}
    return write_per_language(path, by_lang, out, "held-out prompts")


def table(result: dict) -> str:
    langs = result["languages"]
    rows = ["train \\ test | " + " | ".join(langs), "---|" + "---|" * len(langs)]
    for x in langs:
        cells = [f"{result['perf'][x][y]:.3f} ({result['transfer'][x][y]:.2f})" if result["transfer"][x][y]
                 is not None else f"{result['perf'][x][y]:.3f} (-)" for y in langs]
        rows.append(f"{x} | " + " | ".join(cells))
    return "held-out score (transfer = perf(X->Y) / perf(Y->Y))\n" + "\n".join(rows)
