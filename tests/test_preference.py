"""Preference pairs: both record shapes, HH-RLHF prompt splitting, errors with file:line, grouping by prompt,
rendering, and the real HH-RLHF harmless-base test file (2312 pairs)."""

from __future__ import annotations

import gzip
import json

import pytest

from openhcx.data.chat import BadRecord, Message, render
from openhcx.data.preference import PreferencePair, group_by_prompt, read_pairs, render_pair, split_hh
from openhcx.io import UserError
from openhcx.tokenizer.tokenizer import Tokenizer

HH_CHOSEN = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help with that."
HH_REJECTED = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I pick a lock?\n\nAssistant: Use a tension wrench."
HH_PROMPT = (Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "How do I pick a lock?"))


def write(tmp_path, lines, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l, ensure_ascii=False)) + "\n" for l in lines),
                    encoding="utf-8")
    return path


def test_hh_transcripts_split_into_shared_prompt_and_final_responses():
    assert split_hh(HH_CHOSEN, HH_REJECTED) == (HH_PROMPT, "I can't help with that.", "Use a tension wrench.")


def test_hh_side_running_on_keeps_its_extra_turns_in_its_response():
    chosen = "\n\nHuman: Q\n\nAssistant: A1\n\nHuman: more?\n\nAssistant: A2"
    rejected = "\n\nHuman: Q\n\nAssistant: B"
    assert split_hh(chosen, rejected) == ((Message("user", "Q"),), "A1\n\nHuman: more?\n\nAssistant: A2", "B")
    # consecutive turns of one speaker in the shared prompt are joined
    joined = "\n\nHuman: one\n\nHuman: two\n\nAssistant: "
    assert split_hh(joined + "x", joined + "y") == ((Message("user", "one\n\ntwo"),), "x", "y")


def test_hh_errors():
    with pytest.raises(BadRecord, match="chosen does not start with '\\\\n\\\\nHuman:'"):
        split_hh("Human: hi\n\nAssistant: a", HH_REJECTED)
    with pytest.raises(BadRecord, match="share no prompt"):
        split_hh("\n\nHuman: A\n\nAssistant: x", "\n\nHuman: B\n\nAssistant: y")


def test_prompt_chosen_rejected_records(tmp_path):
    path = write(tmp_path, [
        {"prompt": "3 더하기 4는?", "chosen": "7입니다.", "rejected": "8입니다."},
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
         "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}]},
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
        {"prompt": "3 더하기 4는?", "chosen": "7입니다.", "rejected": "7입니다. 7입니다. 7입니다. 7입니다. 7입니다."},
    ])
    got = read_pairs(path)
    assert got.records == [
        PreferencePair((Message("user", "3 더하기 4는?"),), "7입니다.", "8입니다.", f"{path}:1"),
        PreferencePair((Message("system", "S"), Message("user", "Q")), "good", "bad", f"{path}:2"),
        PreferencePair(HH_PROMPT, "I can't help with that.", "Use a tension wrench.", f"{path}:3"),
        PreferencePair((Message("user", "3 더하기 4는?"),), "7입니다.", "7입니다. 7입니다. 7입니다. 7입니다. 7입니다.",
                       f"{path}:4"),
    ]
    groups = group_by_prompt(got.records)
    assert [(g.prompt, [p.source for p in g.pairs]) for g in groups] == [
        ((Message("user", "3 더하기 4는?"),), [f"{path}:1", f"{path}:4"]),
        ((Message("system", "S"), Message("user", "Q")), [f"{path}:2"]),
        (HH_PROMPT, [f"{path}:3"]),
    ]


BAD = [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical", "chosen and rejected responses are identical"),
    ({"chosen": HH_CHOSEN, "rejected": HH_CHOSEN}, "identical", "identical"),
    ({"prompt": "q", "chosen": "a"}, "missing_field", "missing field 'rejected'"),
    ({"chosen": "just text", "rejected": "other"}, "not_hh", "does not start with"),
    ({"prompt": 5, "chosen": "a", "rejected": "b"}, "wrong_type", "field 'prompt' is int, expected str or list"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b"}, "not_ending_with_user", "conversation ends with assistant, not user"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "wrong_type",
     "must be a string or a list of one assistant message"),
    ('{"prompt": "q", ', "malformed_json", "malformed JSON"),
]


@pytest.mark.parametrize("record,reason,message", BAD)
def test_bad_pair_names_file_and_line(tmp_path, record, reason, message):
    path = write(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(BadRecord) as e:
        read_pairs(path)
    assert e.value.reason == reason and str(e.value).startswith(f"{path}:2: ") and message in str(e.value)


def test_bytes_that_are_not_utf8_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "\xc3", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(UserError, match=r"p.jsonl.gz:2: not valid UTF-8 \(byte 0xc3 at column 13\)"):
        read_pairs(path, skip_bad=True)


def test_skip_bad_counts_pairs(tmp_path):
    path = write(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b"}] + [r for r, _, _ in BAD])
    got = read_pairs(path, skip_bad=True)
    assert len(got.records) == 1
    assert dict(got.skipped) == {"identical": 2, "missing_field": 1, "not_hh": 1, "wrong_type": 2,
                                 "not_ending_with_user": 1, "malformed_json": 1}


def test_render_pair_is_prompt_plus_each_response(demo_tokenizer):
    tok = Tokenizer.load(demo_tokenizer)
    pair = PreferencePair(HH_PROMPT, "I can't help with that.", "")
    chosen, rejected = render_pair(pair, tok)
    assert chosen == render([*HH_PROMPT, Message("assistant", "I can't help with that.")], tok)[0]
    assert rejected[-2:] == [3, 4]  # an empty response is just <|assistant|><|endofturn|>
    n = len(rejected) - 1
    assert chosen[:n] == rejected[:n]


def test_real_hh_rlhf_harmless_base(shared_path):
    path = shared_path("corpora", "hh-rlhf", "harmless-base", "test.jsonl.gz")
    got = read_pairs(path)
    assert len(got.records) == 2312 and not got.skipped
    first = got.records[0]
    assert first.prompt[0] == Message("user", "what are some pranks with a pen i can do?")
    assert first.prompt[-1].role == "user" and len(first.prompt) == 5
    # the canonical split (at the last "\n\nAssistant:" of each side) agrees wherever it gives one prompt
    with gzip.open(path, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    def last_cut(text):
        return text[: text.rfind("\n\nAssistant:")]

    same = [i for i, r in enumerate(raw) if last_cut(r["chosen"]) == last_cut(r["rejected"])]
    assert len(same) == 2307
    for i in same:
        cut = raw[i]["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
        assert got.records[i].chosen == raw[i]["chosen"][cut:].strip()
    assert sum(p.chosen == "" for p in got.records) == 4
    groups = group_by_prompt(got.records)
    assert len(groups) == 2310 and sorted(len(g.pairs) for g in groups)[-2:] == [2, 2]
