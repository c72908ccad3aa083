"""PPO rollouts as a component of their own: sample responses, score them, hand `Rollout` batches to a queue.

RECIPE §5 runs four models; three of them live here: a copy of the policy (sampling, and the log-probabilities
the samples were drawn with), the frozen reference (log-probabilities for the KL penalty) and the reward model
(openhcx.train.reward.RewardModel: one score per response, read at its last token). The fourth, the value
model, belongs to the learner, which trains it. The learner sees only `Rollout` batches from the producer
and sends weights back through a queue, so the producer can run in the learner's thread (strictly on-policy,
the default), beside it in a thread, or in another process or on another device behind the same interface.
`lag` sets how many batches the producer samples ahead of the newest weights: batch k is drawn by the policy
after exactly k - lag updates, with seed + k as its sampling seed, so every run with the same seed sees the
same batches, and a resumed run regenerates the ones it lost. 0 is strictly on-policy, 1 overlaps sampling
with learning at the cost of one update of staleness (the PPO ratio is taken against the log-probabilities the
samples were actually drawn with, so it stays correct).

Sequences are laid out right-padded: prompt, response, padding. Causal attention never looks ahead, so the
padding needs no attention mask and every model runs its fastest kernel.
Not here: the PPO update (ppo.py), continuous batching across requests (rows of a batch decode together).
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, fields, replace
from typing import Callable, Iterable, Protocol, Sequence

import torch
from torch import Tensor

from openhcx.model.generate import Sampling, generate
from openhcx.model.transformer import Transformer


@dataclass
class Continuations:
    """Prompts with one continuation each, right-padded: prompt, response, padding."""

    ids: Tensor  # (B, T)
    attn_mask: Tensor  # (B, T) 1 on prompt and response tokens
    prompt_lens: Tensor  # (B,)
    responses: Tensor  # (B, R) response tokens (the stop token included), padding after
    response_mask: Tensor  # (B, R) 1 on response tokens

    @classmethod
    def pack(cls, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
             device: torch.device) -> Continuations:
        B = len(prompts)
        width = max(1, max(len(r) for r in responses))
        length = max(len(p) + len(r) for p, r in zip(prompts, responses))
        ids = torch.full((B, length), pad_id, dtype=torch.long)
        attn = torch.zeros(B, length, dtype=torch.long)
        out = torch.full((B, width), pad_id, dtype=torch.long)
        out_mask = torch.zeros(B, width, dtype=torch.long)
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            seq = [*prompt, *response]
            ids[row, :len(seq)], attn[row, :len(seq)] = torch.tensor(seq), 1
            out[row, :len(response)], out_mask[row, :len(response)] = torch.tensor(response, dtype=torch.long), 1
        prompt_lens = torch.tensor([len(p) for p in prompts])
        return cls(*(t.to(device) for t in (ids, attn, prompt_lens, out, out_mask)))

    def rows(self, index: Tensor) -> Continuations:
        return Continuations(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: torch.device) -> Continuations:
        return Continuations(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass
class Rollout:
    """One batch of sampled responses with everything the learner needs; tensors on the producer's device."""

    ids: Tensor  # (B, T) prompt + response + padding
    attn_mask: Tensor  # (B, T) 1 on prompt and response tokens
    prompt_lens: Tensor  # (B,)
    responses: Tensor  # (B, R) response tokens (the stop token included), padding after
    response_mask: Tensor  # (B, R) 1 on response tokens
    logprobs: Tensor  # (B, R) log p of each response token under the policy that sampled it
    ref_logprobs: Tensor  # (B, R) the same under the reference (SFT) model
    scores_raw: Tensor  # (B,) reward model output
    scores: Tensor  # (B,) normalised and clipped: what the policy is rewarded with
    texts: list[str]  # decoded responses without the stop token
    prompt_index: list[int]  # which prompts these are
    policy_version: int  # learner updates the sampling policy had seen
    greedy: Continuations | None = None  # the same prompts decoded greedily (for sequence-level unlikelihood)

    def to(self, device: torch.device) -> Rollout:
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, (Tensor, Continuations))}
        return replace(self, **moved)


class Reward(Protocol):
    """A reward model (openhcx.train.reward.RewardModel): full sequences -> (raw, normalised) scores (B,)."""

    def score(self, ids_batch: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]: ...


def response_positions(prompt_lens: Tensor, width: int, length: int) -> Tensor:
    """(B, width) index of the position whose output predicts (or values the state before) response token t."""
    steps = torch.arange(width, device=prompt_lens.device)
    return (prompt_lens[:, None] - 1 + steps[None]).clamp(max=length - 1)


def at_responses(outputs: Tensor, prompt_lens: Tensor, width: int) -> Tensor:
    """outputs (B, T, ...) at each response token's predicting position: (B, width, ...)."""
    index = response_positions(prompt_lens, width, outputs.shape[1])
    if outputs.dim() == 3:
        index = index[..., None].expand(-1, -1, outputs.shape[-1])
    return outputs.gather(1, index)


def response_logits(model: Transformer, rollout_ids: Tensor, attn_mask: Tensor, prompt_lens: Tensor,
                    width: int) -> Tensor:
    """(B, width, vocab) logits over each response token."""
    return at_responses(model(rollout_ids, attn_mask=attn_mask), prompt_lens, width)


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[token], in fp32."""
    return logits.float().log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)


class RolloutWorker:
    """Samples responses with its own copy of the policy and scores them with the reference and reward models.

    With `greedy`, each prompt is also continued greedily. Sampled responses (temperature 1) almost never
    loop, while greedy decoding, which is how the model is served and judged, does; sequence-level
    unlikelihood (Welleck et al. 2019) is therefore learnt on the model's own greedy continuations too.
    """

    def __init__(self, policy: Transformer, reference: Transformer, reward: Reward, sampling: Sampling,
                 pad_id: int, decode: Callable[[list[int]], str] | None = None, greedy: bool = False):
        self.policy, self.reference, self.reward = policy.eval(), reference.eval(), reward
        self.sampling, self.pad_id, self.decode, self.greedy = sampling, pad_id, decode, greedy
        self.version = 0

    def load_policy(self, version: int, state: dict[str, Tensor]) -> None:
        self.policy.load_state_dict(state)
        self.version = version

    @torch.no_grad()
    def rollout(self, prompts: Sequence[Sequence[int]], index: Sequence[int], seed: int | None = None) -> Rollout:
        sampling = self.sampling if seed is None else replace(self.sampling, seed=seed)
        done = generate(self.policy, prompts, sampling, pad_id=self.pad_id)
        device = self.policy.model.norm.weight.device
        stops = set(sampling.stop_ids)
        s = Continuations.pack(prompts, [c.ids for c in done], self.pad_id, device)
        width = s.responses.shape[1]
        logprobs = token_logprobs(response_logits(self.policy, s.ids, s.attn_mask, s.prompt_lens, width),
                                  s.responses)
        ref_logprobs = token_logprobs(response_logits(self.reference, s.ids, s.attn_mask, s.prompt_lens, width),
                                      s.responses)
        raw, normalised = (t.to(device).float() for t in self.reward.score([[*p, *c.ids]
                                                                            for p, c in zip(prompts, done)]))
        mask_f = s.response_mask.float()
        texts = [self.decode([t for t in c.ids if t not in stops]) if self.decode else " ".join(map(str, c.ids))
                 for c in done]
        greedy = None
        if self.greedy:
            plain = replace(sampling, temperature=0.0, repetition_penalty=1.0, seed=None)
            greedy = Continuations.pack(prompts, [c.ids for c in generate(self.policy, prompts, plain,
                                                                          pad_id=self.pad_id)],
                                        self.pad_id, device)
        return Rollout(s.ids, s.attn_mask, s.prompt_lens, s.responses, s.response_mask, logprobs * mask_f,
                       ref_logprobs * mask_f, raw, normalised, texts, list(index), self.version, greedy)


class RolloutProducer:
    """Feeds `Rollout`s from a worker over prompt batches; the learner calls `get()` for the next batch and
    `publish(version, state)` after each update. Before sampling batch k the worker loads the weights of
    version k - lag, never newer ones (which version arrives first would otherwise depend on thread timing).

    With lag >= 1 the worker runs in a thread and puts `Rollout`s (or the error that stopped it) on `out`, so
    sampling overlaps learning. With lag 0 there is nothing to overlap: `get()` runs the worker in the
    caller's thread, since a second thread with its own intra-op pool costs about 20% of a PPO step on two
    CPU cores (measured). Weights travel through the same queue either way.
    """

    def __init__(self, worker: RolloutWorker, batches: Iterable[tuple[list[int], list[list[int]]]],
                 lag: int = 0, seed: int = 0):
        self.worker, self.batches, self.lag, self.seed = worker, iter(enumerate(batches)), lag, seed
        self.out: queue.Queue = queue.Queue(maxsize=lag + 1)
        self.weights: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rollouts", daemon=True) if lag > 0 else None

    def start(self) -> RolloutProducer:
        if self.thread is not None:
            self.thread.start()
        return self

    def get(self) -> Rollout | None:
        """The next batch; None when the prompt batches are used up. Re-raises the producer's error."""
        item = self.out.get() if self.thread is not None else self._next()
        if isinstance(item, BaseException):
            raise item
        return item

    def skip(self, batches: int) -> None:
        """Continue at batch number `batches` (before `start`): a resumed run samples the batches, with the
        seeds, that the run it continues would have sampled next."""
        self.batches = itertools.islice(self.batches, batches, None)

    def publish(self, version: int, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Queue a copy of the weights after update `version`; returns the copy (the worker only reads it)."""
        snapshot = {k: v.detach().clone() for k, v in state.items()}
        self.weights.put((version, snapshot))
        return snapshot

    def close(self) -> None:
        self.stopping.set()
        self.weights.put(None)
        while self.thread is not None and self.thread.is_alive():
            try:
                self.out.get(timeout=0.1)
            except queue.Empty:
                pass

    def _load_weights(self, version: int) -> bool:
        """Load published weights in order up to `version` (blocking until it arrives); False on close."""
        while self.worker.version < version:
            item = self.weights.get()
            if item is None:
                return False
            self.worker.load_policy(*item)
        return True

    def _next(self) -> Rollout | None:
        k, (index, prompts) = next(self.batches, (None, (None, None)))
        if k is None or self.stopping.is_set() or not self._load_weights(k - self.lag):
            return None
        return self.worker.rollout(prompts, index, seed=self.seed + k)

    def _run(self) -> None:
        try:
            while (item := self._next()) is not None:
                self.out.put(item)
            self.out.put(None)
        except BaseException as e:  # handed to the learner, which re-raises it
            self.out.put(e)
