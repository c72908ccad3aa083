"""Checkpoints serve as they are in vLLM, SGLang and Hugging Face TGI: the fields those engines read from a
LlamaForCausalLM directory agree with the model and with our own chat.

vLLM and SGLang read config.json through transformers' AutoConfig, the tokenizer through AutoTokenizer (chat
template included) and generation_config.json through GenerationConfig. TGI's launcher reads config.json
itself, its router reads tokenizer.json and tokenizer_config.json (chat template, bos/eos), and its model
server reads all three through transformers. Each test's docstring says which engine reads what, and why.

Three directories are checked: a trained checkpoint (the `tiny_lm` fixture: our tokenizer, float32), its
bfloat16 release (`export`), and a foreign Llama imported with our chat tokens (`import_hf(chat_tokens=True)`),
where `<|endofturn|>` sits after the foreign vocabulary instead of at id 4.
Not repeated here: transformers loading the weights into LlamaForCausalLM with no missing or unexpected
tensor, with logits and greedy generations equal to ours (tests/test_hf.py). docs/serve.md has the
commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from openhcx.data.chat import Message, render_prompt
from openhcx.model.hf import export, import_hf
from openhcx.tokenizer.tokenizer import ENDOFTURN, EOT, PAD, Tokenizer

transformers.logging.set_verbosity_error()

# system + user + assistant + user, Korean and English: what a chat endpoint renders before the reply.
CONVERSATION = [
    Message("system", "You are a helpful assistant. 짧고 정확하게 답하세요."),
    Message("user", "대한민국의 수도는 어디인가요?"),
    Message("assistant", "대한민국의 수도는 서울입니다."),
    Message("user", "And how many people live there?\n간단히 알려 주세요."),
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """A small foreign Llama (its own byte-level BPE, `</s>` as eos) imported with our chat tokens."""
    from tokenizers import trainers

    from openhcx.tokenizer.train import BYTE_ALPHABET, empty_tokenizer

    src = tmp_path_factory.mktemp("foreign") / "src"
    tok = empty_tokenizer()
    texts = [m.content for m in CONVERSATION] * 10
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>"],
                                                       initial_alphabet=BYTE_ALPHABET, show_progress=False))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, rope_theta=50000.0, eos_token_id=0)
    transformers.LlamaForCausalLM(config).save_pretrained(src)
    tok.save(str(src / "tokenizer.json"))
    out = src.parent / "chat"
    import_hf(str(src), str(out), chat_tokens=True)
    return out


@pytest.fixture(scope="module", params=["trained", "exported", "imported"])
def checkpoint(request, tiny_lm, tmp_path_factory) -> Path:
    if request.param == "trained":
        return tiny_lm
    if request.param == "exported":
        out = tmp_path_factory.mktemp("release") / "model"
        export(str(tiny_lm), str(out), dtype="bfloat16")
        return out
    return request.getfixturevalue("imported")


def read(directory: Path, name: str) -> dict:
    return json.loads((directory / name).read_text(encoding="utf-8"))


SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def tensors(directory: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype as config.json spells it, shape), read from the header only."""
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}  # transformers 4.x refuses a file tagged with another format
        return {name: (SAFETENSORS_DTYPES[f.get_slice(name).get_dtype()], tuple(f.get_slice(name).get_shape()))
                for name in f.keys()}


def test_architecture_shapes_and_weights_layout(checkpoint):
    """vLLM and SGLang pick the model class by `architectures` (LlamaForCausalLM), TGI by `model_type` (llama).
    All three size attention from hidden_size, num_attention_heads, num_key_value_heads and head_dim (TGI's
    launcher derives head_dim from hidden_size / num_attention_heads when it is absent and picks its attention
    kernel by it), allocate the embedding and output head from vocab_size, and load
    lm_head.weight only when tie_word_embeddings is false."""
    cfg = read(checkpoint, "config.json")
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_act"], cfg["attention_bias"], cfg["mlp_bias"]) == ("silu", False, False)
    assert cfg["head_dim"] * cfg["num_attention_heads"] == cfg["hidden_size"]
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    weights = tensors(checkpoint)
    assert weights["model.embed_tokens.weight"][1] == (cfg["vocab_size"], cfg["hidden_size"])
    assert ("lm_head.weight" in weights) == (not cfg["tie_word_embeddings"])
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    assert weights["model.layers.0.self_attn.k_proj.weight"][1] == (kv, cfg["hidden_size"])
    # Every id the tokenizer can produce has an embedding row.
    assert len(transformers.AutoTokenizer.from_pretrained(checkpoint)) <= cfg["vocab_size"]
    loaded = transformers.AutoConfig.from_pretrained(checkpoint)
    assert (loaded.head_dim, loaded.num_key_value_heads) == (cfg["head_dim"], cfg["num_key_value_heads"])


def test_rope_and_context(checkpoint):
    """RoPE: transformers 4.x (and TGI's Llama, which reads config.rope_theta) read the top-level
    `rope_theta`; transformers 5 and the engines built on it read `rope_parameters`. Both must hold the same
    theta, with the default rope type and no `rope_scaling`: vLLM multiplies the context by a scaling factor
    and would switch to a scaled rotary embedding. Context: vLLM and SGLang take max_position_embeddings as the
    model's length, TGI's launcher bounds max-total-tokens by it, and vLLM also caps it at tokenizer_config.json's
    model_max_length, refusing a longer --max-model-len; both must be the context the model was trained for."""
    cfg = read(checkpoint, "config.json")
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    assert cfg.get("rope_scaling") is None
    loaded = transformers.AutoConfig.from_pretrained(checkpoint)
    assert loaded.rope_parameters["rope_theta"] == cfg["rope_theta"]
    assert loaded.rope_parameters["rope_type"] == "default"
    context = read(checkpoint, "manifest.json")["config"]["max_seq_len"]
    assert cfg["max_position_embeddings"] == context
    assert read(checkpoint, "tokenizer_config.json")["model_max_length"] == context


def test_dtype_is_recorded_under_both_names(checkpoint):
    """`--dtype auto` in vLLM and SGLang serves the config's dtype (a float32 one in float16 or bfloat16).
    transformers 5 writes and reads `dtype`; transformers before 4.56, which older vLLM and SGLang releases
    run on, reads only `torch_dtype` and takes a config without it for float32. Both names must hold the
    dtype of the stored tensors."""
    cfg = read(checkpoint, "config.json")
    stored = {dtype for dtype, _ in tensors(checkpoint).values()}
    assert len(stored) == 1 and cfg["dtype"] == cfg["torch_dtype"]
    assert stored == {cfg["dtype"]}
    assert transformers.AutoConfig.from_pretrained(checkpoint).dtype == getattr(torch, cfg["dtype"])


@pytest.mark.parametrize("messages", [CONVERSATION, CONVERSATION[1:]], ids=["system", "preamble"])
def test_chat_template_gives_our_prompt_ids(checkpoint, messages):
    """The OpenAI chat endpoints of all three engines render tokenizer_config.json's chat_template with
    add_generation_prompt (vLLM refuses a chat request when the tokenizer has none) and encode the text with
    tokenizer.json alone. That must give exactly the ids our chat builds (`render_prompt`) in portable mode,
    the mode a tokenizer without the morpheme analyzer has (docs/tokenizer.md), with and without a system
    message (without one, the template supplies the Korean preamble). TGI's /v1/completions encodes with
    add_special_tokens=True and vLLM's chat path with False: tokenizer.json adds no bos or eos either way."""
    hf = transformers.AutoTokenizer.from_pretrained(checkpoint)
    assert hf.chat_template == read(checkpoint, "tokenizer_config.json")["chat_template"]
    chat = [{"role": m.role, "content": m.content} for m in messages]
    ids = hf.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == render_prompt(messages, Tokenizer.load(checkpoint), "portable")
    text = hf.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert hf(text, add_special_tokens=True)["input_ids"] == hf(text, add_special_tokens=False)["input_ids"] == ids


def test_generation_stops_where_our_chat_stops(checkpoint):
    """vLLM adds every generation_config.json eos_token_id to a request's stop ids and SGLang stops on the
    union of those and config.json's; TGI stops on the tokenizer's eos only, unless generation_config.json
    gives a list, which then replaces it. So the list must hold `<|endoftext|>` (the end of a document) and
    `<|endofturn|>` (the end of a chat reply, where `openhcx chat` stops); without `<|endofturn|>` a served
    chat model writes the next user turn itself. transformers' GenerationConfig must accept the file."""
    from openhcx.chat import load

    generation = read(checkpoint, "generation_config.json")
    eos = generation["eos_token_id"]
    hf = transformers.AutoTokenizer.from_pretrained(checkpoint)
    assert isinstance(eos, list) and eos == [hf.convert_tokens_to_ids(EOT), hf.convert_tokens_to_ids(ENDOFTURN)]
    _, codec = load(str(checkpoint))
    assert set(codec.turn_end_ids) <= set(eos) and codec.turn_end_ids[0] == hf.convert_tokens_to_ids(ENDOFTURN)
    loaded = transformers.GenerationConfig.from_pretrained(checkpoint)
    loaded.validate(strict=True)
    assert loaded.eos_token_id == eos


def test_special_tokens_agree_across_files(checkpoint):
    """An engine takes the primary eos and the pad from the tokenizer (tokenizer_config.json, and
    special_tokens_map.json where present) and the others from config.json and generation_config.json; they
    must name the same ids. There is no bos: the chat template adds none and tokenizer.json prepends none, so
    config.json must not announce one."""
    cfg, generation = read(checkpoint, "config.json"), read(checkpoint, "generation_config.json")
    tok_cfg = read(checkpoint, "tokenizer_config.json")
    hf = transformers.AutoTokenizer.from_pretrained(checkpoint)
    assert (tok_cfg["eos_token"], tok_cfg["pad_token"], tok_cfg.get("bos_token")) == (EOT, PAD, None)
    if (checkpoint / "special_tokens_map.json").is_file():
        special = read(checkpoint, "special_tokens_map.json")
        assert (special["eos_token"], special["pad_token"], special.get("bos_token")) == (EOT, PAD, None)
    assert hf.eos_token_id == cfg["eos_token_id"] == generation["eos_token_id"][0]
    assert hf.pad_token_id == cfg["pad_token_id"] == generation["pad_token_id"]
    assert hf.bos_token_id is None and cfg["bos_token_id"] is None and "bos_token_id" not in generation
