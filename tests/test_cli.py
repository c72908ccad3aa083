"""The `openhcx` command as a user meets it: help, exit codes, errors that name the file, line or key."""

from __future__ import annotations

import subprocess
import sys

import pytest


def openhcx(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openhcx.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_stage():
    r = openhcx("--help")
    assert r.returncode == 0
    for command in ("run", "corpus build", "tokenizer train", "tokenizer report", "shards build", "pretrain", "sft",
                    "reward", "ppo", "eval", "eval radar", "generate", "chat", "import-hf", "export"):
        assert f"  {command} " in r.stdout
    assert openhcx("no-such-stage").returncode == 2


@pytest.mark.parametrize("command", ["corpus build", "tokenizer train", "tokenizer report", "run"])
def test_each_command_documents_its_arguments(command):
    r = openhcx(*command.split(), "--help")
    assert r.returncode == 0 and "--config" in r.stdout and "(type:" in r.stdout


def test_non_utf8_input_names_file_and_line(tmp_path):
    src = tmp_path / "bad.txt"
    src.write_bytes("첫 줄은 괜찮습니다\n".encode() + b"second line \xff\xfe broken\n")
    out = tmp_path / "corpus"
    r = openhcx("corpus", "build", "--sources", f'[{{"path": "{src}", "label": "ko"}}]', "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert f"{src}:2" in r.stderr and "UTF-8" in r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]


def test_missing_and_empty_corpus(tmp_path):
    out = tmp_path / "corpus"
    r = openhcx("corpus", "build", "--sources", f'[{{"path": "{tmp_path / "nope.jsonl"}", "label": "en"}}]',
                "--out", str(out))
    assert r.returncode == 2 and "nope.jsonl" in r.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = openhcx("corpus", "build", "--sources", f'[{{"path": "{empty}", "label": "en"}}]', "--out", str(out))
    assert r.returncode == 2 and "empty.jsonl" in r.stderr
    r = openhcx("tokenizer", "train", "--corpus", str(tmp_path / "no-corpus"), "--out", str(tmp_path / "tok"))
    assert r.returncode == 2 and "no-corpus" in r.stderr
    assert not out.exists() and not (tmp_path / "tok").exists()


def test_a_typed_config_s_own_check_is_a_clear_error(tmp_path):
    r = openhcx("shards", "build", "--corpus", str(tmp_path / "c"), "--tokenizer", str(tmp_path / "t"), "--out",
                str(tmp_path / "o"), "--cluster.workers", "-1")
    assert r.returncode == 2 and "error: cluster.workers: -1 must be 0 (every core) or more" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_tiny_vocabulary_and_unknown_recipe_key(demo_corpus, tmp_path):
    r = openhcx("tokenizer", "train", "--corpus", str(demo_corpus), "--out", str(tmp_path / "tok"),
                "--vocab_size", "100")
    assert r.returncode == 2 and "vocab_size=100" in r.stderr
    assert not (tmp_path / "tok").exists()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("corpus:\n  sources: []\ntokenizer:\n  vocab_sise: 1000\n")
    r = openhcx("run", "--recipe", str(recipe), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "tokenizer" in r.stderr and "vocab_sise" in r.stderr
    assert not (tmp_path / "run").exists()
    recipe.write_text("tokeniser:\n  vocab_size: 1000\n")
    r = openhcx("run", "--recipe", str(recipe), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "unknown section 'tokeniser'" in r.stderr


def test_artifacts_get_ordinary_permissions(tmp_path):
    """Temp paths are private while written; the renamed artifact follows the umask like any file."""
    import os

    from openhcx.io import atomic_dir, atomic_file

    mask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "f.json") as f:
            f.write("{}")
        with atomic_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(mask)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
