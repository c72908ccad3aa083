"""Model backends: a local Hugging Face causal LM (OpenHCX checkpoints included) and an HTTP endpoint.

`HFBackend` scores continuations the way lm-evaluation-harness does (same tokenization of context and
continuation, same left truncation, same float32 sum) but faster: a question whose choices are single
tokens (or that has one choice) is one plain causal pass, with no attention mask; otherwise the context
runs once and the choices run after it against its key-value cache, at restarted positions and with a
mask over the choices only, so each sees the context and itself. Questions of the causal kind whose
contexts open with the same tokens (a task's fixed few-shot examples, as in MMLU, where they are 85-90% of
every prompt) share one pass over that opening: its keys and values are computed once and each question runs
only the rest against them. Rows are length-sorted and batched by a token budget; the vocabulary projection
runs only at the positions that are scored; no cache is built while scoring beyond these shared ones.
Not here: generation (generation.py: local checkpoints and OpenAI-compatible endpoints), prompts, few-shot
assembly or metrics (harness.py, metrics.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from openhcx.io import UserError


@dataclass(frozen=True)
class Request:
    """A context and the continuations scored after it (the choices of one question share a context)."""

    context: str
    continuations: tuple[str, ...]


Scores = list[tuple[float, bool]]  # per continuation: (sum log-prob, greedy decoding reproduces it)
SHARED_OPENING = 64  # tokens that contexts must share before their opening is run once for all of them


class Backend(Protocol):
    fingerprint: str  # identifies model weights and numerics; part of every cache key

    def loglikelihood(self, requests: list[Request]) -> Iterator[tuple[int, Scores]]: ...


def _files_fingerprint(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    desc = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]
    return hashlib.sha256(json.dumps([str(path.resolve()), desc]).encode()).hexdigest()[:16]


def load_hf(path: str | Path, dtype: str = "auto", device: str = "cpu"):
    """(model, tokenizer) from a Hugging Face model directory or a GGUF file (dequantized)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: model not found (expected a Hugging Face model directory or a .gguf file)")
    kwargs = {}
    if path.suffix == ".gguf":
        kwargs["gguf_file"] = path.name
        path = path.parent
    if dtype == "auto":
        torch_dtype = torch.float32 if device == "cpu" else "auto"
    else:
        torch_dtype = getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs).to(device).eval()
    return model, tok


def max_length_of(model, tokenizer) -> int:
    """The context limit lm-eval would use for this model (config, then tokenizer, then 2048)."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if hasattr(model.config, attr):
            return getattr(model.config, attr)
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if limit and limit < 10**12 else 2048


class HFBackend:
    def __init__(self, model, tokenizer, fingerprint: str, batch_tokens: int = 4096, max_length: int | None = None,
                 share_context: bool = True):
        self.model, self.tok, self.fingerprint = model, tokenizer, fingerprint
        self.batch_tokens, self.share_context = batch_tokens, share_context
        self.max_length = max_length or max_length_of(model, tokenizer)
        self.device = next(model.parameters()).device
        bos = tokenizer.bos_token_id
        self.prefix_id = bos if bos is not None else tokenizer.eos_token_id
        cfg = model.config
        # Projecting only scored positions is exact unless the head post-processes logits.
        self.head_only = not (getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None))

    @classmethod
    def from_path(cls, path: str | Path, dtype: str = "auto", device: str = "cpu", **kwargs) -> "HFBackend":
        model, tok = load_hf(path, dtype, device)
        return cls(model, tok, f"hf:{_files_fingerprint(Path(path))}:{model.dtype}", **kwargs)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        bos = self.tok.bos_token  # a text that already starts with BOS gets no second one
        return [self.tok(t, add_special_tokens=not (bos and t.startswith(bos)))["input_ids"] for t in texts]

    def encode(self, req: Request) -> tuple[list[int], list[list[int]]]:
        """Context ids and continuation ids, split as lm-eval's HFLM splits them."""
        context, conts = req.context, list(req.continuations)
        if not context:
            return [self.prefix_id], self._encode(conts)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:  # trailing spaces belong to the continuation, for word-boundary tokenization
            conts = [context[-n_spaces:] + c for c in conts]
            context = context[:-n_spaces]
        ctx, *wholes = self._encode([context] + [context + c for c in conts])
        conts_enc = [w[len(ctx):] for w in wholes]
        keep = self.max_length + 1 - max(len(c) for c in conts_enc)  # lm-eval keeps the last max_length+1
        return (ctx[-keep:] if len(ctx) > keep else ctx), conts_enc

    def loglikelihood(self, requests: list[Request]) -> Iterator[tuple[int, Scores]]:
        """Yield (request index, scores) batch by batch: plain causal rows first, then rows whose choices
        share a context, each longest first."""
        packed = []  # (request index, first continuation index, context ids, continuation ids)
        for i, req in enumerate(requests):
            ctx, conts = self.encode(req)
            if self.share_context:
                packed.append((i, 0, ctx, conts))
            else:
                packed.extend((i, k, ctx, [c]) for k, c in enumerate(conts))
        causal, rest = [], []
        for p in packed:
            (causal if self._causal(p[3]) else rest).append(p)
        rest.sort(key=lambda p: -self._width(p))
        plan = [(opening, rows, True) for opening, rows in self._openings(causal)] + [(0, rest, False)]
        pending: dict[int, list] = {i: [None] * len(r.continuations) for i, r in enumerate(requests)}
        for opening, rows, plain in plan:
            kv = self._opening_kv(rows[0][2][:opening]) if opening else None
            for batch in self._batches(rows, opening):
                scores = self._score_causal(batch, opening, kv) if plain else self._score_shared(batch)
                for (i, k, _, _), got in zip(batch, scores):
                    pending[i][k:k + len(got)] = got
                    if None not in pending[i]:
                        yield i, pending.pop(i)

    def _openings(self, rows) -> list[tuple[int, list]]:
        """Causal rows in groups whose contexts open with the same run of at least SHARED_OPENING tokens, each
        group with that run's length and longest row first; the rows that share none last, with 0.

        Sorting the contexts puts shared openings next to each other, and along the sorted order a row's common
        run with the group's first row only shortens; a row joins while the run stays at least half as long as
        it was (so a stray question that shares only the task's header does not cost its group the shots).
        A context's last token is never in the run: its output is what scores the first continuation token.
        """
        groups, alone, run, length = [], [], [], 0
        for p in [*sorted(rows, key=lambda p: p[2]), None]:
            if p is not None and run:
                first, ctx = run[0][2], p[2]
                shared = min(len(os.path.commonprefix([first, ctx])), len(first) - 1, len(ctx) - 1)
                if shared >= SHARED_OPENING and (len(run) == 1 or 2 * shared >= length):
                    run, length = run + [p], shared
                    continue
            if len(run) > 1:
                groups.append((length, sorted(run, key=lambda p: -self._width(p))))
            else:
                alone += run
            run, length = [p], 0
        return [*groups, (0, sorted(alone, key=lambda p: -self._width(p)))]

    def _opening_kv(self, ids: list[int]) -> list[tuple]:
        """Per layer, the (keys, values) of one pass over a shared opening."""
        import torch

        with torch.inference_mode():
            out = self.model.get_decoder()(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
        return [(layer.keys, layer.values) for layer in out.cache.layers]

    @staticmethod
    def _causal(conts: list[list[int]]) -> bool:
        """One plain causal pass scores these continuations: a lone one, or only single tokens."""
        return len(conts) == 1 or all(len(c) == 1 for c in conts)

    @classmethod
    def _width(cls, packed) -> int:
        """Tokens a packed row puts through the model (a continuation's last token is never an input)."""
        ctx, conts = packed[2], packed[3]
        return len(ctx) + (len(conts[0]) - 1 if cls._causal(conts) else sum(len(c) - 1 for c in conts))

    def _batches(self, packed, opening: int = 0):
        """Consecutive rows in batches of at most `batch_tokens` padded tokens, past a shared opening."""
        batch, width = [], 0
        for p in packed:
            n = self._width(p) - opening
            width = max(width, n)
            if batch and width * (len(batch) + 1) > self.batch_tokens:
                yield batch
                batch, width = [], n
            batch.append(p)
        if batch:
            yield batch

    def _score_causal(self, batch, opening: int = 0, kv: list[tuple] | None = None) -> list[Scores]:
        """One plain causal pass per row over the context and a lone continuation less its last token; with
        `kv`, over what follows the shared opening only, against its keys and values.

        Right padding needs no mask (a real position never attends to the pads after it), so without `kv`
        attention takes SDPA's causal kernel and no T x T mask is built. Single-token continuations are all
        read at the context's last position, as lm-eval reads them.
        """
        import torch
        from transformers import DynamicCache

        seqs = [(ctx + conts[0][:-1])[opening:] for _, _, ctx, conts in batch]
        ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
        rows, cols, targets = [], [], []
        for b, (seq, (_, _, ctx, conts)) in enumerate(zip(seqs, batch)):
            ids[b, :len(seq)] = torch.tensor(seq)
            for cont in conts:
                rows += [b] * len(cont)
                cols += range(len(ctx) - 1 - opening, len(ctx) - 1 - opening + len(cont))
                targets += cont
        kwargs = dict(input_ids=ids)
        if kv is not None:  # every row sees the same opening: the one copy, broadcast over the batch
            kwargs["cache"] = DynamicCache([(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1))
                                            for k, v in kv])
        return self._read(batch, kwargs, rows, cols, targets)

    def _score_shared(self, batch) -> list[Scores]:
        """The choices of one context scored behind a single copy of it, in two passes.

        Pass 1 runs the context less its last token causally (no mask) and keeps the key-value cache.
        Pass 2 runs the last context token, then each continuation less its last token at restarted
        positions, against that cache; its mask lets each continuation see the context and itself and
        is (tail x context + tail), never (T x T).
        """
        import torch

        heads = [ctx[:-1] for _, _, ctx, _ in batch]
        tails, segs, poss, rows, cols, targets = [], [], [], [], [], []
        for b, (_, _, ctx, conts) in enumerate(batch):
            L = len(ctx)
            tail, seg, pos = [ctx[-1]], [0], [L - 1]  # segment 0 is seen by every continuation
            for k, cont in enumerate(conts, start=1):
                m = len(cont)
                rows += [b] * m
                cols += [0, *range(len(tail), len(tail) + m - 1)][:m]  # the position that predicts each token
                targets += cont
                tail += cont[:-1]
                seg += [k] * (m - 1)
                pos += range(L, L + m - 1)
            tails.append(tail), segs.append(seg), poss.append(pos)
        B, W1, W2 = len(batch), max(map(len, heads)), max(map(len, tails))
        head_ids, ids, pos = (torch.zeros(B, n, dtype=torch.long) for n in (W1, W2, W2))
        seg = torch.full((B, W2), -1, dtype=torch.long)  # -1: padding
        for b in range(B):
            head_ids[b, :len(heads[b])] = torch.tensor(heads[b], dtype=torch.long)
            n = len(tails[b])
            ids[b, :n], pos[b, :n], seg[b, :n] = torch.tensor(tails[b]), torch.tensor(poss[b]), torch.tensor(segs[b])
        cached = torch.arange(W1)[None, :] < torch.tensor([len(h) for h in heads])[:, None]  # not padding
        own = torch.ones(W2, W2, dtype=torch.bool).tril() & (seg[:, None, :] >= 0)
        own &= (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
        own |= torch.eye(W2, dtype=torch.bool)  # padding rows attend to themselves (no NaN)
        mask = torch.cat([cached[:, None, :].expand(B, W2, W1), own], dim=2)
        cache = None
        if W1:  # every context is one token long when W1 is 0: nothing to cache
            with torch.inference_mode():
                out = self.model.get_decoder()(input_ids=head_ids.to(self.device), use_cache=True)
            cache = out.cache
        kwargs = dict(input_ids=ids, position_ids=pos, attention_mask=mask[:, None], cache=cache)
        return self._read(batch, kwargs, rows, cols, targets)

    def _read(self, batch, kwargs, rows, cols, targets) -> list[Scores]:
        """Forward pass; log-prob and greedy match of each target at the (row, column) that predicts it."""
        import torch

        dev = self.device
        kwargs = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        kwargs["use_cache"] = kwargs.get("cache") is not None  # build no cache while scoring
        with torch.inference_mode():
            r, c = torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)
            if self.head_only:
                hidden = self.model.get_decoder()(**kwargs).last_hidden_state
                logits = self.model.get_output_embeddings()(hidden[r, c])
            else:
                logits = self.model(**kwargs).logits[r, c]
            logp = torch.log_softmax(logits.float(), dim=-1)
            tgt = torch.tensor(targets, device=dev)
            tok_lp = logp.gather(1, tgt[:, None])[:, 0]
            hit = logp.argmax(-1) == tgt
            sizes = [len(cont) for _, _, _, conts in batch for cont in conts]
            # per continuation, a float32 sum in token order: the reduction lm-eval performs
            sums = [float(x.sum()) for x in tok_lp.split(sizes)]
            greedy = [bool(x.all()) for x in hit.split(sizes)]
        scored = iter(zip(sums, greedy))
        return [[next(scored) for _ in conts] for _, _, _, conts in batch]


def open_backend(model: str, dtype: str = "auto", device: str = "cpu", batch_tokens: int = 4096) -> Backend:
    """A local HF model for multiple-choice scoring; an endpoint is refused (no token log-probabilities)."""
    if model.startswith(("http://", "https://")):
        raise UserError(f"{model}: multiple-choice scoring needs token log-probabilities, which an "
                        "OpenAI-compatible endpoint does not give; evaluate a local model directory instead")
    return HFBackend.from_path(model, dtype=dtype, device=device, batch_tokens=batch_tokens)
