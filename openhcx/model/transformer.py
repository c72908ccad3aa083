"""The one decoder-only Transformer OpenHCX trains, aligns and serves.

- rotary position embeddings, HF Llama "rotate_half" convention (HF Llama weights load without permutation),
  base `rope_theta` configurable
- RMSNorm pre-normalization (norm computed in fp32), a final RMSNorm before the head
- grouped-query attention: `n_kv_heads` key/value heads shared by `n_heads` query heads
- SwiGLU MLP: down(silu(gate(x)) * up(x))
- torch.nn.functional.scaled_dot_product_attention (flash/efficient kernels where the device has them)
- untied or tied input/output embeddings (`tie_embeddings`)
- no biases anywhere
- parameter names equal HF LlamaForCausalLM's, so a state dict is directly a HF checkpoint
- optional scalar head `score` (reward/value models; HF LlamaForSequenceClassification with one label)
- right padding, packed-document masking (`doc_ids`, positions reset per document) and a KV cache
- `forward(ids, targets=...)` returns the next-token loss (sum, count) through the fused head + cross-entropy
  of openhcx.train.losses, so training never holds (tokens x vocab) logits; it runs inside forward so that
  FSDP2's hooks have gathered the head weight when the loss reads it

Deliberately absent: dropout, RoPE scaling variants (llama3/yarn), sliding windows, MoE, parallelism
(FSDP/DDP wrap this module from outside), and loss formulas of its own (they live in openhcx.train.losses).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openhcx.io import UserError
from openhcx.train.losses import linear_cross_entropy

HEADS = ("lm", "scalar")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the model; field names follow the recipe, `to_hf_config` maps them to LlamaConfig."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    max_seq_len: int = 4096
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    head: str = "lm"  # "lm": next-token logits; "scalar": one value per position (reward / value model)
    init_std: float = 0.02
    # Special token ids written to config.json so HF tools (padding, generate) agree with our tokenizer.
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        hints = typing.get_type_hints(ModelConfig)
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), hints[f.name]
            optional = kind == (int | None)
            base = int if optional else kind
            if optional and value is None:
                continue
            ok = isinstance(value, base) and not (base is not bool and isinstance(value, bool))
            if base is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise UserError(f"model.{f.name}={value!r}: expected {kind}")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise UserError(f"model.{name}={getattr(self, name)}: must be positive")
        for name in ("rope_theta", "norm_eps", "init_std"):
            if getattr(self, name) <= 0:
                raise UserError(f"model.{name}={getattr(self, name)}: must be positive")
        if self.dim % self.n_heads:
            raise UserError(f"model.dim={self.dim}: must be a multiple of n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise UserError(f"model.n_kv_heads={self.n_kv_heads}: must divide n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise UserError(f"model.dim/n_heads={self.head_dim}: rotary embeddings need an even head size")
        if self.head not in HEADS:
            raise UserError(f"model.head={self.head!r}: expected one of {HEADS}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def replace(self, **changes) -> ModelConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise UserError(f"model.{unknown[0]}: unknown model field (known: {_field_names()})")
        return dataclasses.replace(self, **changes)

    def layer_params(self) -> int:
        hd = self.head_dim
        attn = self.dim * hd * (2 * self.n_heads + 2 * self.n_kv_heads)
        return attn + 3 * self.dim * self.ffn_dim + 2 * self.dim

    def num_params(self) -> int:
        """Distinct trainable parameters (a tied output matrix counts once)."""
        embed = self.vocab_size * self.dim
        if self.head == "scalar":
            head = self.dim
        else:
            head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return embed + self.n_layers * self.layer_params() + self.dim + head

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token, PaLM appendix B convention, for MFU.

        6 x (parameters used in matmuls: layers and output head, not the embedding lookup) plus
        12 x layers x dim x seq_len for attention scores and weighted values (causal savings ignored).
        """
        seq_len = self.max_seq_len if seq_len is None else seq_len
        head = self.dim if self.head == "scalar" else self.vocab_size * self.dim
        matmul = self.n_layers * (self.layer_params() - 2 * self.dim) + head
        return 6.0 * matmul + 12.0 * self.n_layers * self.n_heads * self.head_dim * seq_len


def _field_names() -> str:
    return ", ".join(f.name for f in dataclasses.fields(ModelConfig))


RECIPE_VOCAB = 100_000  # RECIPE.md section 2

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(vocab_size=16000, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=384,
                        max_seq_len=512, tie_embeddings=False),
    "125m": ModelConfig(vocab_size=RECIPE_VOCAB, dim=640, n_layers=12, n_heads=10, n_kv_heads=5,
                        ffn_dim=2048, max_seq_len=4096, tie_embeddings=True),
    "350m": ModelConfig(vocab_size=RECIPE_VOCAB, dim=1024, n_layers=20, n_heads=16, n_kv_heads=8,
                        ffn_dim=2816, max_seq_len=4096, tie_embeddings=True),
    "1b": ModelConfig(vocab_size=RECIPE_VOCAB, dim=2048, n_layers=18, n_heads=32, n_kv_heads=8,
                      ffn_dim=5632, max_seq_len=4096, rope_theta=500000.0, tie_embeddings=True),
    "3b": ModelConfig(vocab_size=RECIPE_VOCAB, dim=3072, n_layers=26, n_heads=24, n_kv_heads=8,
                      ffn_dim=8192, max_seq_len=4096, rope_theta=500000.0),
    "7b": ModelConfig(vocab_size=RECIPE_VOCAB, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                      ffn_dim=12288, max_seq_len=4096, rope_theta=500000.0),
    "14b": ModelConfig(vocab_size=RECIPE_VOCAB, dim=5120, n_layers=40, n_heads=40, n_kv_heads=8,
                       ffn_dim=17408, max_seq_len=4096, rope_theta=500000.0),
}


def model_config(preset: str, **overrides) -> ModelConfig:
    """A named preset with fields replaced, e.g. model_config("tiny", vocab_size=tokenizer_size)."""
    if preset not in PRESETS:
        raise UserError(f"model.preset={preset!r}: unknown preset (known: {', '.join(PRESETS)})")
    return PRESETS[preset].replace(**overrides)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one call, same numbers
        # Normalise in fp32 and scale in the input dtype, exactly as HF Llama does (parity in bf16 too).
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


def rope_tables(head_dim: int, max_len: int, theta: float, device=None) -> tuple[Tensor, Tensor]:
    """cos and signed sin for positions 0..max_len-1, each (max_len, head_dim), both halves repeated.

    The sin table's first half is negated: HF's rotate_half(x) * sin equals x.roll(head_dim / 2) * signed sin
    exactly (negation is exact), with one call where rotate_half takes three.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    freqs = torch.arange(max_len, dtype=torch.float, device=device)[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    sign = torch.ones(head_dim, device=device)
    sign[: head_dim // 2] = -1.0
    return angles.cos(), angles.sin() * sign


def apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """x: (B, heads, T, hd); cos/signed_sin: (B, 1, T, hd) at each token's position, in x's dtype."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class KVCache:
    """Decoding state: preallocated keys/values for every layer, which cached slots hold real (non-pad) tokens,
    and optionally a decoding layout of the output head.

    All rows share one write offset (`length`): batched prompts are left-padded so they end together.
    """

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch, config.n_kv_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        # Slots are read only once written and only pads need marking, so unwritten slots start as real.
        self.valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0
        self.padded = False  # any pad slot so far; without one, decoding needs no mask (and no device sync)
        # Real tokens cached per row: the next token's default position, counted as they come in.
        self.real = torch.zeros(batch, dtype=torch.long, device=device)
        # Optional copy of the output head laid out for decoding on CPU (`decoding_head`).
        self.head: Tensor | None = None

    def rows(self, n: int, *, length: int, padded: bool, head: Tensor | None) -> KVCache:
        """The first `n` rows as a cache of their own that shares this one's storage, written from `length` on:
        how a serving engine runs a step on its occupied rows only."""
        view = object.__new__(KVCache)
        view.k, view.v = [k[:n] for k in self.k], [v[:n] for v in self.v]
        view.valid, view.real = self.valid[:n], self.real[:n]
        view.max_len, view.length, view.padded, view.head = self.max_len, length, padded, head
        return view


def decoding_head(weight: Tensor, batch: int) -> Tensor:
    """A copy of the (vocab, dim) output head laid out for decoding `batch` rows a step on CPU.

    For two rows or more, oneDNN's packed layout (what torch.compile's CPU freezing uses): oneDNN multiplies 8-64
    rows against it 1.2-3x faster than MKL against a plain layout, 2 rows as fast or faster. One row is fastest
    against a (dim, vocab) copy, by MKL (measured at vocab 2,048-100,000, dim 128, one and two threads). Either
    way the copy holds vocab x dim values for the length of a generate call.
    """
    weight = weight.detach()
    if batch > 1 and torch.backends.mkldnn.is_available():
        try:
            return torch.ops.mkldnn._reorder_linear_weight(weight, batch)
        except RuntimeError:  # a dtype this CPU's oneDNN cannot pack, such as fp16 without AVX512-FP16
            pass
    return weight.t().contiguous()


def decoding_logits(h: Tensor, head: Tensor) -> Tensor:
    """h (..., dim) times a `decoding_head` copy: logits (..., vocab)."""
    if head.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(h, head, None, "none", [], "")
    return h @ head


class Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: KVCache | None,
                layer: int) -> Tensor:
        B, T, _ = x.shape
        # F.linear on the weights: the same product without a module call per projection (decoding overhead).
        q = F.linear(x, self.q_proj.weight).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = F.linear(x, self.k_proj.weight).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = F.linear(x, self.v_proj.weight).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            start, end = cache.length, cache.length + T
            cache.k[layer].narrow(2, start, T).copy_(k)
            cache.v[layer].narrow(2, start, T).copy_(v)
            k, v = cache.k[layer].narrow(2, 0, end), cache.v[layer].narrow(2, 0, end)
        group = self.n_heads // self.n_kv_heads
        if T == 1 and group > 1:
            # One query per head (decoding): the query heads that share a key/value head become that head's
            # queries, so each cached key and value is read once per step, not once per query head (a decoding
            # step is bound by reading the cache: 8 rows x 1,900 cached tokens, 9 heads over 3, 2.7 -> 1.9 ms a
            # layer on 2 CPU cores). A row's mask (B, 1, 1, S) applies to all of them alike.
            out = F.scaled_dot_product_attention(q.view(B, self.n_kv_heads, group, self.head_dim), k, v,
                                                 attn_mask=mask, scale=self.head_dim**-0.5)
            return F.linear(out.reshape(B, 1, -1), self.o_proj.weight)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
            scale=self.head_dim**-0.5, enable_gqa=group > 1,
        )
        return F.linear(out.transpose(1, 2).reshape(B, T, -1), self.o_proj.weight)


class MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.dim, c.ffn_dim, bias=False)
        self.up_proj = nn.Linear(c.dim, c.ffn_dim, bias=False)
        self.down_proj = nn.Linear(c.ffn_dim, c.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = F.linear(x, self.gate_proj.weight), F.linear(x, self.up_proj.weight)
        return F.linear(F.silu(gate) * up, self.down_proj.weight)


class Block(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.dim, c.norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.dim, c.norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """The part HF calls `model`: embeddings, blocks, final norm."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.dim, c.norm_eps)


def positions_in_documents(doc_ids: Tensor) -> Tensor:
    """Index of each token within its run of equal doc ids: RoPE restarts at 0 for every packed document."""
    T = doc_ids.shape[-1]
    idx = torch.arange(T, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return idx - torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=-1).values


def attention_mask(T: int, doc_ids: Tensor | None, cache: KVCache | None, device) -> Tensor | None:
    """Boolean (B, 1, T, S) mask of allowed keys, or None when plain causal attention is exact.

    Every query may see itself, so rows of pad tokens never become all -inf (NaN) and cannot leak NaN
    into real tokens through the values.
    """
    if cache is None and doc_ids is None:
        # Right padding needs no mask: causal attention already keeps real tokens off the pads after them.
        return None
    if cache is None:
        same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        return (same_doc & causal)[:, None]
    start, end = cache.length, cache.length + T
    if not cache.padded:
        # No padding anywhere: a lone query sees every key, a first chunk is plain causal (is_causal).
        return None if T == 1 or start == 0 else _causal_offset(T, end, device)[None, None]
    keys_real = cache.valid[:, :end]
    diag = torch.arange(end, device=device)[None, :] == torch.arange(start, end, device=device)[:, None]
    allowed = (_causal_offset(T, end, device)[None] & keys_real[:, None, :]) | diag[None]
    return allowed[:, None]


def _causal_offset(T: int, S: int, device) -> Tensor:
    """(T, S) causal mask for T new queries that sit at the end of S keys."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Body(config)
        if config.head == "lm":
            self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        else:
            self.score = nn.Linear(config.dim, 1, bias=False)
        self.tie_weights()
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_weights()

    def tie_weights(self) -> None:
        """Share the embedding matrix with the output head when the config asks for it."""
        if self.config.head == "lm" and self.config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def init_rope(self) -> None:
        """RoPE tables are derived, never saved: rebuild them on the parameters' device."""
        c = self.config
        self.rope_cos, self.rope_sin = rope_tables(c.head_dim, c.max_seq_len, c.rope_theta,
                                                   device=self.model.norm.weight.device)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Fresh weights and RoPE tables; call again after `to_empty()` when the model was built on meta."""
        self.init_rope()
        c = self.config
        # Residual-branch outputs get std / sqrt(2 * layers) so the residual stream's variance stays flat.
        out_std = c.init_std / math.sqrt(2 * c.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                std = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else c.init_std
                p.normal_(0.0, std, generator=generator)

    def forward(
        self,
        ids: Tensor,
        *,
        attn_mask: Tensor | None = None,
        doc_ids: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        targets: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, T, vocab) for the lm head, values (B, T) for the scalar head; with `targets`, the loss.

        ids: (B, T) token ids. attn_mask: (B, T), 1 = real token; right padding is free (causal attention
        never looks ahead), left padding needs it with a cache. doc_ids: (B, T) packed-document ids, runs of
        equal ids; attention stays inside a run and positions restart. positions: explicit RoPE positions
        (otherwise derived from doc_ids, or from the count of real tokens so far). cache: KV cache, filled
        in place. last_only: compute the head for the final position only (decoding). targets: (B, T) next
        token ids, IGNORE_INDEX where nothing is scored: returns `linear_cross_entropy`'s (fp32 loss sum,
        scored-token count) instead of logits (lm head only), equal to `token_cross_entropy` of the logits.
        """
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        limit = cache.max_len if cache is not None else self.config.max_seq_len
        if start + T > min(limit, self.config.max_seq_len):
            raise UserError(
                f"context of {start + T} tokens exceeds model.max_seq_len={self.config.max_seq_len}"
                + (f" or the cache size {cache.max_len}" if cache is not None else "")
            )
        if cache is not None:
            if doc_ids is not None:
                raise UserError("doc_ids (packed documents) cannot be combined with a KV cache")
            if attn_mask is not None:
                cache.valid[:, start:start + T] = attn_mask.bool()
                cache.padded = cache.padded or not bool(attn_mask.bool().all())
        if positions is None:
            positions = self._default_positions(B, T, attn_mask, doc_ids, cache, ids.device)
        mask = attention_mask(T, doc_ids, cache, ids.device)
        h = self.model.embed_tokens(ids)
        # Gathered once per forward, shaped and cast for every layer's q and k.
        cos, sin = self.rope_cos[positions][:, None].to(h.dtype), self.rope_sin[positions][:, None].to(h.dtype)
        for i, layer in enumerate(self.model.layers):
            h = layer(h, cos, sin, mask, cache, i)
        if cache is not None:
            cache.length += T
            cache.real += T if attn_mask is None else attn_mask.bool().sum(-1)
        if last_only and T > 1:
            h = h[:, -1:]
        h = self.model.norm(h)
        if targets is not None:
            if self.config.head != "lm":
                raise UserError("targets (next-token loss) need the lm head, not a scalar head")
            return linear_cross_entropy(h, self.lm_head.weight, targets)
        if self.config.head == "scalar":
            return self.score(h).squeeze(-1)
        if cache is not None and cache.head is not None:
            return decoding_logits(h, cache.head)
        return self.lm_head(h)

    @staticmethod
    def _default_positions(B, T, attn_mask, doc_ids, cache, device) -> Tensor:
        if doc_ids is not None:
            return positions_in_documents(doc_ids)
        offset = cache.real[:, None] if cache is not None else torch.zeros(B, 1, dtype=torch.long, device=device)
        if attn_mask is None:
            return offset if T == 1 else offset + torch.arange(T, device=device)[None]
        # Count of real tokens before each one, so left-padded rows start at position 0 like unpadded ones.
        return offset + (attn_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_real(values: Tensor, attn_mask: Tensor) -> Tensor:
    """values (B, T, ...) at each row's last real token: where a reward model's score is read."""
    idx = torch.arange(attn_mask.shape[1], device=attn_mask.device)
    last = (idx * attn_mask.long()).argmax(-1)
    return values[torch.arange(values.shape[0], device=values.device), last]
