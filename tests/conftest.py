"""Shared fixtures: paths to the shared data, and one small tokenizer trained per test session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OPENHCX_SHARED", ROOT.parent / "shared"))


def _shared_path(*parts: str) -> Path:
    """A path under the shared data folder, or a skip that says why it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (set OPENHCX_SHARED to the shared data folder)")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a training module: on 2 shared cores, more threads mostly wait on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_path():
    """`shared_path("corpora", ...)`: a path under the shared data folder, or a skip saying why it is missing."""
    return _shared_path


@pytest.fixture
def petitions():
    """`petitions(n)`: real Korean prose (Blue House petitions, CC0), never part of the demo training data."""
    return _petitions


def _petitions(n: int, skip: int = 0) -> list[str]:
    path = _shared_path("corpora", "korean-petitions", "petitions_2019-04")
    with path.open(encoding="utf-8") as f:
        docs = [json.loads(line)["content"] for line in f]
    return docs[skip : skip + n]


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """A cleaned corpus built from a slice of the committed demo data."""
    from openhcx.data.corpus import Source, build_corpus

    src = tmp_path_factory.mktemp("demo-src")
    import gzip

    for label in ("ko", "en", "code"):
        with gzip.open(ROOT / "data/demo/corpus" / f"{label}.jsonl.gz", "rt", encoding="utf-8") as f:
            lines = [line for _, line in zip(range(400 if label == "ko" else 150), f)]
        (src / f"{label}.jsonl").write_text("".join(lines), encoding="utf-8")
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    build_corpus([Source(str(src / f"{l}.jsonl"), l) for l in ("ko", "en", "code")], str(out), heldout_fraction=0.1)
    return out


@pytest.fixture(scope="session")
def demo_tokenizer(demo_corpus, tmp_path_factory) -> Path:
    from openhcx.tokenizer.train import train_tokenizer

    return train_tokenizer(str(demo_corpus), str(tmp_path_factory.mktemp("tok") / "tok"), vocab_size=6000, workers=2)


@pytest.fixture(scope="session")
def tiny_lm(demo_tokenizer, tmp_path_factory) -> Path:
    """A freshly initialised 2-layer language model over the demo tokenizer, saved as a HF checkpoint
    (the base for SFT tests, the stand-in SFT model for reward tests)."""
    import torch

    from openhcx.model.hf import save_checkpoint
    from openhcx.model.transformer import ModelConfig, Transformer
    from openhcx.tokenizer.tokenizer import PAD, Tokenizer

    tok = Tokenizer.load(demo_tokenizer)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                         max_seq_len=256, eos_token_id=0, pad_token_id=tok.id(PAD))
    path = tmp_path_factory.mktemp("tiny-lm") / "model"
    return save_checkpoint(Transformer(config), config, path, demo_tokenizer, inputs={"tokenizer": str(demo_tokenizer)})


def tiny_model(vocab_size: int, seed: int = 0):
    """A random 2-layer model with weights 10x the default init, so greedy decoding does not collapse onto one token
    and near-ties (where numerics could flip a greedy choice) are rare."""
    import torch

    from openhcx.model.transformer import Transformer, model_config

    torch.manual_seed(seed)
    config = model_config("tiny", vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                          max_seq_len=512, eos_token_id=0, pad_token_id=1)
    net = Transformer(config)
    net.init_weights(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 2:
                p.mul_(10)
    return net.eval()


CHAT_TEXTS = ["def add(a, b):\n    return a + b\n", "안녕하세요, 반갑습니다.", "The cat sat on the mat.",
              "대한민국의 수도는 서울입니다.", "for i in range(10):\n    print(i)\n"] * 20


@pytest.fixture
def chat_texts() -> list[str]:
    """The texts `chat_checkpoint`'s tokenizer was trained on."""
    return CHAT_TEXTS


@pytest.fixture(scope="session")
def chat_checkpoint(tmp_path_factory) -> Path:
    """A random tiny model with a small OpenHCX tokenizer (specials at ids 0..31, FIM and chat tokens included),
    as a HF directory: what the terminal front ends and the server load."""
    from tokenizers import trainers

    from openhcx.io import write_json
    from openhcx.model.hf import save_checkpoint
    from openhcx.tokenizer.tokenizer import SPECIAL_TOKENS
    from openhcx.tokenizer.train import BYTE_ALPHABET, empty_tokenizer, tokenizer_config

    tok_dir = tmp_path_factory.mktemp("chat-tok")
    tok = empty_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=BYTE_ALPHABET,
                                  show_progress=False)
    tok.train_from_iterator(CHAT_TEXTS, trainer=trainer)
    tok.save(str(tok_dir / "tokenizer.json"))
    write_json(tok_dir / "tokenizer_config.json", tokenizer_config(128, morpheme_aware=False))
    net = tiny_model(tok.get_vocab_size())
    out = tmp_path_factory.mktemp("chat-ckpt") / "model"
    save_checkpoint(net, net.config, out, tokenizer_dir=tok_dir)
    return out


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the whole session (tests/postgres.py); fails, not skips, when none can start."""
    from postgres import start_postgres

    try:
        server = start_postgres()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a fresh, empty PostgreSQL database for one test."""
    return postgres_server.new_database()


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray instance with two worker CPUs, shared by the cluster tests (starting one takes seconds);
    the data stages join it instead of starting their own."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             object_store_memory=100 << 20)
    yield
    ray.shutdown()
