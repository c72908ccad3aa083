"""The OpenHCX tokenizer: a HF `tokenizers` byte-level BPE plus Korean morpheme pre-segmentation.

Two encode modes share one vocabulary:
- exact: Korean is cut at morpheme boundaries (kiwipiepy) before BPE, exactly as in training, so no token
  crosses a morpheme boundary;
- portable: `tokenizer.json` alone, as any Hugging Face consumer will use it; no analyzer needed.
Text never turns into special tokens here: specials are added by id (no injection from user data).
Not a chat renderer: conversations become (ids, mask) in the data package.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from tokenizers import Tokenizer as HFTokenizer

from openhcx.io import UserError
from openhcx.tokenizer.morphemes import segment, segment_many

LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # Python strings hold them, UTF-8 cannot: only looked for on failure

Mode = Literal["exact", "portable"]

EOT, PAD, USER, ASSISTANT, ENDOFTURN = "<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|endofturn|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
NUM_RESERVED = 32
# Fixed ids 0..31: a later stage may rely on `<|user|>` being id 2 in every OpenHCX tokenizer.
SPECIAL_TOKENS = [EOT, PAD, USER, ASSISTANT, ENDOFTURN, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX]
SPECIAL_TOKENS += [f"<|reserved_{i}|>" for i in range(NUM_RESERVED - len(SPECIAL_TOKENS))]
# What SFT, reward and PPO look up: an imported tokenizer (model.hf.import_hf) holds these at any ids.
CHAT_TOKENS = [EOT, PAD, USER, ASSISTANT, ENDOFTURN]

# GPT-4-style split: contractions, letters with one leading non-letter, digits in groups of three,
# punctuation runs, newlines. Korean words are letters, so morpheme cuts do the finer work.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# RECIPE §5: a Korean preamble opens every conversation; a system message replaces it.
DEFAULT_PREAMBLE = (
    "아래는 AI 언어 모델과 사용자 간의 대화입니다. AI 언어 모델은 사용자의 질문에 친절하고 정확하게 답변합니다."
)
CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% set rest = messages[1:] %}{% else %}" + DEFAULT_PREAMBLE + "{% set rest = messages %}{% endif %}{{ '\\n' }}"
    "{% for m in rest %}{% if m['role'] == 'user' %}<|user|>{% elif m['role'] == 'assistant' %}<|assistant|>"
    "{% else %}{{ raise_exception('unknown role: ' ~ m['role']) }}{% endif %}"
    "{{ m['content'] }}<|endofturn|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass
class Tokenizer:
    hf: HFTokenizer
    morpheme_aware: bool = True
    special_ids: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.hf.encode_special_tokens = True  # special strings in text stay text
        self.hf.no_padding()
        self.hf.no_truncation()
        if [self.hf.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(NUM_RESERVED)):
            self.special_ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
            return
        # An imported tokenizer: its own vocabulary first, our chat tokens added as specials after it.
        added = {t.content: i for i, t in self.hf.get_added_tokens_decoder().items() if t.special}
        missing = [t for t in CHAT_TOKENS if t not in added]
        if missing:
            raise UserError(f"not an OpenHCX tokenizer: special tokens are not at ids 0..{NUM_RESERVED - 1}, "
                            f"and {missing[0]} is not a special token (import_hf with chat_tokens=true adds it)")
        self.special_ids = {t: added[t] for t in CHAT_TOKENS}

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"{path}: tokenizer.json not found")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise UserError(f"{path}: not a valid tokenizer.json ({e})") from e
        # The flag travels in tokenizer_config.json, so checkpoints that copy the tokenizer keep it.
        config = directory / "tokenizer_config.json"
        aware = json.loads(config.read_text(encoding="utf-8")).get("morpheme_aware", False) if config.is_file() else False
        return cls(hf, morpheme_aware=bool(aware))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def id(self, token: str) -> int:
        if token not in self.special_ids:
            raise UserError(f"{token} is not in this tokenizer (an imported one has only {', '.join(CHAT_TOKENS)})")
        return self.special_ids[token]

    def encode(self, text: str, mode: Mode = "exact") -> list[int]:
        return self.encode_batch([text], mode)[0]

    def encode_batch(self, texts: Iterable[str], mode: Mode = "exact", workers: int = 1) -> list[list[int]]:
        if mode not in ("exact", "portable"):
            raise UserError(f"unknown encode mode {mode!r} (exact or portable)")
        texts = list(texts)
        try:
            if mode == "portable" or not self.morpheme_aware:
                return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]
            pieces = segment_many(texts, workers) if workers > 1 else map(segment, texts)
            # One call for all texts: the Rust side encodes them in parallel; an empty list is not valid input.
            encoded = self.hf.encode_batch([p or [""] for p in pieces], is_pretokenized=True, add_special_tokens=False)
            return [e.ids for e in encoded]
        except (UnicodeEncodeError, TypeError):  # what HF raises on a lone surrogate, per mode
            for n, text in enumerate(texts):
                if bad := LONE_SURROGATE.search(text):
                    raise UserError(f"text {n} is not valid Unicode: lone surrogate U+{ord(bad.group()):04X} "
                                    f"at offset {bad.start()}") from None
            raise

    def encode_pieces(self, pieces: list[str]) -> list[int]:
        """Encode text already cut at morpheme boundaries; BPE runs inside each piece only."""
        # An empty piece list is not a valid pretokenized input; "" encodes to nothing anyway.
        return self.hf.encode(pieces or [""], is_pretokenized=True, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def token_bytes(self, ids: list[int]) -> list[int]:
        """Bytes each token stands for: byte-level tokens map one symbol to one byte."""
        return [len(t.encode()) if i < NUM_RESERVED else len(t) for i, t in zip(ids, map(self.hf.id_to_token, ids))]
