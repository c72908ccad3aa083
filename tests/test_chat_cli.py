"""Terminal front ends: `generate` and `chat` decode exactly what openhcx.model.generate decodes, render the
chat template turn by turn, stream what they return, and read piped stdin."""

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import trainers

from openhcx.chat import fit_context, generate, load, run_chat, run_generate
from openhcx.data.chat import Message, render_prompt
from openhcx.io import UserError
from openhcx.model.generate import FimTokens, Sampling, infill
from openhcx.model.generate import generate as library_generate
from openhcx.tokenizer.tokenizer import Tokenizer
from openhcx.tokenizer.train import BYTE_ALPHABET, empty_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(chat_checkpoint) -> Path:
    return chat_checkpoint


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The same model and tokenizer, loaded by the library directly."""
    from openhcx.model.hf import load_checkpoint

    net, _ = load_checkpoint(checkpoint)
    return net.eval(), Tokenizer(HFTokenizer.from_file(str(checkpoint / "tokenizer.json")), morpheme_aware=False)


def test_generate_gives_the_library_ids_and_streams_its_text(checkpoint, reference, capsys):
    net, tok = reference
    prompt = "def add(a, b):"
    want = library_generate(net, [tok.encode(prompt)], Sampling(max_new_tokens=12, stop_ids=(0,)),
                            decode=tok.decode)[0]
    got = generate(str(checkpoint), [prompt], max_new_tokens=12)[0]
    assert got.ids == want.ids and len(got.ids) > 0
    assert len(set(got.ids)) > 1  # a collapsed model would make the comparison weak
    assert capsys.readouterr().out == want.text + "\n"


def test_batched_and_seeded_sampling_match_the_library(checkpoint, reference, capsys):
    net, tok = reference
    prompts = ["The cat", "안녕하세요, 반갑습니다. 대한민국의"]
    sampling = Sampling(max_new_tokens=10, temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.2, seed=7,
                        stop_ids=(0,))
    want = library_generate(net, [tok.encode(p) for p in prompts], sampling, decode=tok.decode, pad_id=1)
    got = generate(str(checkpoint), prompts, max_new_tokens=10, temperature=0.9, top_k=40, top_p=0.95,
                   repetition_penalty=1.2, seed=7)
    assert [c.ids for c in got] == [c.ids for c in want]
    out = capsys.readouterr().out
    assert out == "".join(f"=== {i} ({c.finish_reason})\n{c.text}\n" for i, c in enumerate(want))


def test_infill_uses_the_psm_prompt_and_stops_at_endoftext(checkpoint, reference, capsys):
    net, tok = reference
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    want = infill(net, tok.encode(prefix), tok.encode(suffix), FimTokens(5, 7, 6, 0), Sampling(max_new_tokens=9),
                  decode=tok.decode)
    got = generate(str(checkpoint), [prefix], max_new_tokens=9, infill_suffix=suffix)[0]
    assert got.ids == want.ids
    assert capsys.readouterr().out == want.text + "\n"


def test_stop_string_cuts_the_text_and_is_never_printed(checkpoint, reference):
    net, codec = load(str(checkpoint))
    free = run_generate(net, codec, ["The cat"], Sampling(max_new_tokens=16), None, StringIO())[0]
    stop = next(free.text[i:i + 2] for i in range(2, len(free.text) - 1) if free.text[i:i + 2].strip())
    out = StringIO()
    cut = run_generate(net, codec, ["The cat"], Sampling(max_new_tokens=16, stop_strings=(stop,)), None, out)[0]
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.find(stop)]
    assert out.getvalue() == cut.text + "\n"


def test_empty_prompt_and_missing_fim_tokens_are_user_errors(checkpoint):
    net, codec = load(str(checkpoint))
    with pytest.raises(UserError, match=r"prompt\[1\]"):
        run_generate(net, codec, ["a", ""], Sampling(max_new_tokens=2), None, StringIO())
    no_fim = codec.__class__(**{**codec.__dict__, "fim": None})
    with pytest.raises(UserError, match="infill_suffix"):
        run_generate(net, no_fim, ["a"], Sampling(max_new_tokens=2), "b", StringIO())


def test_chat_over_piped_stdin_renders_each_turn_with_the_history(checkpoint, reference):
    net, tok = reference
    lines = "안녕하세요\nThe cat sat?\n/reset\ndef add\n/exit\nnever read\n"
    code = ("import sys; from openhcx.chat import chat; "
            "chat(sys.argv[1], temperature=0.0, repetition_penalty=1.0, max_new_tokens=6, show_prompt=True)")
    done = subprocess.run([sys.executable, "-c", code, str(checkpoint)], input=lines, capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    turns = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert len(turns) == 3  # "/reset" is a command, "/exit" ends before "never read"

    def reply(ids):  # the library's greedy reply, stopping at <|endofturn|> or <|endoftext|>
        c = library_generate(net, [ids], Sampling(max_new_tokens=6, stop_ids=(4, 0)), decode=tok.decode)[0]
        return c.ids, c.text

    first = render_prompt([Message("user", "안녕하세요")], tok)
    first_ids, first_text = reply(first)
    second = render_prompt([Message("user", "안녕하세요"), Message("assistant", first_text),
                            Message("user", "The cat sat?")], tok)
    third = render_prompt([Message("user", "def add")], tok)
    assert [t["prompt_ids"] for t in turns] == [first, second, third]
    assert turns[0]["reply_ids"] == first_ids
    assert turns[1]["reply_ids"] == reply(second)[0]
    assert second[: len(first)] == first  # the second prompt holds the first exchange
    assert "(new conversation)" in done.stdout
    assert done.stdout.splitlines()[0] == first_text


def test_chat_with_a_system_message_and_a_transformers_tokenizer(tmp_path, checkpoint, chat_texts):
    """A tokenizer that is not ours (specials elsewhere) goes through AutoTokenizer and its chat template."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    ours = HFTokenizer.from_file(str(checkpoint / "tokenizer.json"))
    other = empty_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<|im_end|>"],
                                  initial_alphabet=BYTE_ALPHABET, show_progress=False)
    other.train_from_iterator(chat_texts, trainer=trainer)
    assert other.get_vocab_size() <= ours.get_vocab_size()
    template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
                "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    PreTrainedTokenizerFast(tokenizer_object=other, eos_token="</s>", pad_token="</s>",
                            chat_template=template).save_pretrained(tmp_path)
    # Not generation_config.json: its stop ids (<|endofturn|> among them) are our tokenizer's, not this one's.
    for name in ("model.safetensors", "config.json"):
        (tmp_path / name).write_bytes((checkpoint / name).read_bytes())
    net, codec = load(str(tmp_path))
    assert codec.kind == "transformers" and codec.turn_end_ids == (2, 0, 1)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    out = StringIO()
    turns = run_chat(net, codec, ["hi there", "and again"], out, Sampling(max_new_tokens=4), system="Be brief.")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"},
                {"role": "assistant", "content": turns[0].reply.text}, {"role": "user", "content": "and again"}]
    text = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert turns[1].prompt_ids == hf(text, add_special_tokens=False)["input_ids"]


def test_fit_context_drops_the_oldest_exchanges_but_keeps_the_system_message(checkpoint):
    _, codec = load(str(checkpoint))
    history = [{"role": "system", "content": "S"}, {"role": "user", "content": "one " * 30},
               {"role": "assistant", "content": "two " * 30}, {"role": "user", "content": "three"}]
    full = len(codec.chat_prompt(history))
    ids = fit_context(codec, history, full - 1, keep=1)
    assert [m["content"] for m in history] == ["S", "three"]
    assert ids == codec.chat_prompt(history)
    assert fit_context(codec, [{"role": "user", "content": "x " * 200}], 20, keep=0) is None
