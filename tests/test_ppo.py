"""PPO: rollouts read the right tokens, the learner starts on-policy, the producer's lag and errors, the KL
controller and early stopping, and two small runs that must show an effect: a reward for one token raises the
reward with the KL bounded, and unlikelihood lowers repetition against weight 0. Ends with the command itself
on tiny checkpoints."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from openhcx.io import UserError
from openhcx.model.generate import Sampling, generate
from openhcx.model.hf import load_checkpoint, save_checkpoint
from openhcx.model.transformer import ModelConfig, Transformer
from openhcx.train.ppo import (
    EarlyStopping, PPOConfig, PPOLearner, PPORun, next_kl_coef, ppo, prompt_batches, read_prompts,
)
from openhcx.train.rollout import RolloutProducer, RolloutWorker

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(vocab_size=32, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=64)
RESPONSE = 12


class FavourTokens:
    """Reward: the share of the last RESPONSE tokens that are in `tokens` (raw and normalised alike)."""

    def __init__(self, tokens):
        self.tokens = set(tokens)

    def score(self, ids_batch):
        raw = torch.tensor([sum(t in self.tokens for t in seq[-RESPONSE:]) / RESPONSE for seq in ids_batch])
        return raw, raw


def random_prompts(n: int, seed: int, low: int = 3, high: int = 7) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 32, (int(torch.randint(low, high, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def make_run(policy: Transformer, reward, prompts, config: PPOConfig, lag: int = 0, temperature: float = 1.0,
             greedy: bool = False) -> PPORun:
    value = Transformer(TINY.replace(head="scalar"))
    worker = RolloutWorker(copy.deepcopy(policy), copy.deepcopy(policy).requires_grad_(False), reward,
                           Sampling(max_new_tokens=RESPONSE, temperature=temperature), pad_id=0, greedy=greedy)
    producer = RolloutProducer(worker, prompt_batches(prompts, config.batch_size, config.seed), lag=lag)
    return PPORun(PPOLearner(policy, value, config), producer)


def test_rollout_tensors_match_unpadded_forward_passes():
    torch.manual_seed(0)
    policy, reference = Transformer(TINY), Transformer(TINY)
    worker = RolloutWorker(policy, reference, FavourTokens({7}), Sampling(max_new_tokens=6, temperature=1.0,
                                                                          stop_ids=(5,)), pad_id=0, greedy=True)
    prompts = [[11, 12, 13], [20, 21, 22, 23, 24, 25, 26], [30]]
    r = worker.rollout(prompts, [0, 1, 2], seed=3)
    greedy = generate(policy, prompts, Sampling(max_new_tokens=6, stop_ids=(5,)), pad_id=0)
    for row, (prompt, done) in enumerate(zip(prompts, greedy)):
        n = len(done.ids)
        assert r.greedy.responses[row, :n].tolist() == done.ids and r.greedy.response_mask[row].sum() == n
        assert r.greedy.ids[row, :len(prompt) + n].tolist() == prompt + done.ids
    for row, prompt in enumerate(prompts):
        n = int(r.response_mask[row].sum())
        response = r.responses[row, :n]
        assert r.ids[row, :len(prompt) + n].tolist() == prompt + response.tolist()
        assert r.attn_mask[row].sum() == len(prompt) + n and (r.response_mask[row, n:] == 0).all()
        if n < 6:
            assert response[-1] == 5  # stopped: the stop token is part of the response
        seq = torch.tensor([prompt + response.tolist()])
        for model, got in ((policy, r.logprobs), (reference, r.ref_logprobs)):
            logp = model(seq)[0, len(prompt) - 1:-1].log_softmax(-1).gather(-1, response[:, None])[:, 0]
            torch.testing.assert_close(got[row, :n], logp, atol=1e-5, rtol=1e-5)
            assert (got[row, n:] == 0).all()
        assert r.scores_raw[row] == sum(t == 7 for t in (prompt + response.tolist())[-RESPONSE:]) / RESPONSE


def test_learner_first_pass_is_on_policy_and_updates_both_models():
    torch.manual_seed(0)
    policy = Transformer(TINY)
    config = PPOConfig(steps=1, batch_size=8, minibatch_size=8, epochs=1, lr=1e-3, value_lr=1e-3)
    run = make_run(policy, FavourTokens({7}), random_prompts(8, 0), config)
    before = {k: v.clone() for k, v in run.learner.value.state_dict().items()}
    result = run.fit()
    m = result.metrics[0]
    assert m.approx_kl < 1e-10 and m.clip_fraction == 0.0  # one minibatch of the sampling policy: ratio 1
    assert m.kl == 0.0  # the reference is the policy that sampled
    assert any(not torch.equal(v, run.learner.value.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(result.policy_state["lm_head.weight"], run.producer.worker.reference.lm_head.weight)


def test_producer_lag_and_errors():
    torch.manual_seed(0)
    config = PPOConfig(steps=4, batch_size=4, minibatch_size=4, epochs=1, lr=1e-3)
    for lag, versions in ((0, [0, 1, 2, 3]), (1, [0, 0, 1, 2])):
        run = make_run(Transformer(TINY), FavourTokens({7}), random_prompts(8, 1), config, lag=lag)
        seen = []
        update = run.learner.update
        run.learner.update = lambda r: (seen.append(r.policy_version), update(r))[1]
        run.fit()
        assert seen == versions

    class Broken:
        def score(self, ids_batch):
            raise UserError("reward model exploded")

    with pytest.raises(UserError, match="exploded"):
        make_run(Transformer(TINY), Broken(), random_prompts(8, 1), config).fit()


def test_kl_controller_and_early_stopping():
    assert next_kl_coef(0.04, kl=10.0, target=None) == 0.04
    assert next_kl_coef(0.04, kl=12.0, target=6.0) == pytest.approx(0.04 * 1.02)  # error clipped to 0.2
    assert next_kl_coef(0.04, kl=5.7, target=6.0) == pytest.approx(0.04 * (1 - 0.1 * 0.05))
    stop, model = EarlyStopping(patience=2), torch.nn.Linear(1, 1)
    assert [stop.observe(s, v, model) for s, v in enumerate([0.5, 0.7, 0.6, 0.7, 0.65, 0.6])] == \
        [False, False, False, False, False, True]
    assert stop.best_step == 3 and stop.best == 0.7  # a tie with the best counts as the best


def test_ppo_raises_the_reward_with_kl_bounded():
    torch.manual_seed(0)
    config = PPOConfig(steps=15, batch_size=16, minibatch_size=8, epochs=4, lr=5e-3, value_lr=1e-3)
    metrics = make_run(Transformer(TINY), FavourTokens({7}), random_prompts(64, 0), config).fit().metrics
    first = sum(m.reward for m in metrics[:3]) / 3
    last = sum(m.reward for m in metrics[-3:]) / 3
    print(f"reward {first:.3f} -> {last:.3f}, KL per response {[round(m.kl, 2) for m in metrics]}")
    assert last > 3 * first and last > first + 0.06
    # a policy that only wrote token 7 would be RESPONSE * ln 32 = 41.6 nats from the reference
    assert all(math.isfinite(m.kl) and m.kl < 6.0 for m in metrics)


def repeating_model() -> Transformer:
    """A tiny model taught to repeat its 4-token prompt: nearly every sample holds a repeated 4-gram."""
    torch.manual_seed(0)
    model = Transformer(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        seq = torch.randint(10, 32, (32, 4), generator=g).repeat(1, 4)
        logits = model(seq[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[:, 3:].reshape(-1, 32), seq[:, 4:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def test_unlikelihood_lowers_repetition_at_equal_steps():
    base, prompts = repeating_model(), random_prompts(64, 2, low=4, high=5)
    rates = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(1)
        config = PPOConfig(steps=7, batch_size=16, minibatch_size=8, epochs=4, lr=1e-3, value_lr=1e-3,
                           unlikelihood_weight=weight)
        metrics = make_run(copy.deepcopy(base), FavourTokens(set()), prompts, config).fit().metrics
        rates[weight] = [m.repetition_rate for m in metrics]
    print("repetition rate per step", rates)
    assert rates[0.0][0] > 0.8 and rates[1.0][0] > 0.8  # equal start: the same model and samples
    assert sum(rates[0.0][-3:]) / 3 > 0.7
    assert sum(rates[1.0][-3:]) / 3 < 0.45


def test_greedy_unlikelihood_lowers_greedy_repetition_when_samples_do_not_repeat():
    """The demo's situation: hot samples almost never repeat, so only the greedy continuations can teach the
    policy that its greedy loops are unlikely; with weight 0 the same run keeps looping."""
    base, prompts = repeating_model(), random_prompts(64, 2, low=4, high=5)
    rates, sampled = {}, {}
    for weight in (0.0, 1.0):
        torch.manual_seed(1)
        config = PPOConfig(steps=10, batch_size=16, minibatch_size=8, epochs=4, lr=1e-3, value_lr=1e-3,
                           unlikelihood_weight=weight)
        metrics = make_run(copy.deepcopy(base), FavourTokens(set()), prompts, config, temperature=4.0,
                           greedy=True).fit().metrics
        rates[weight] = [m.greedy_repetition_rate for m in metrics]
        sampled[weight] = sum(m.repetition_rate for m in metrics) / len(metrics)
    print("greedy repetition rate per step", rates, "sampled", sampled)
    assert sampled[0.0] < 0.1 and sampled[1.0] < 0.1  # the sampled term has almost nothing to act on
    assert rates[0.0][0] == rates[1.0][0] > 0.8  # equal start
    assert min(rates[0.0]) > 0.8
    assert sum(rates[1.0][-3:]) / 3 < 0.4


def test_read_prompts_names_the_bad_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                 '{"messages": [{"role": "assistant", "content": "no user"}]}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"p.jsonl:2"):
        read_prompts([str(f)])
    f.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    assert [m.role for m in read_prompts([str(f)])[0]] == ["user"]


def test_ppo_command_writes_the_policy(demo_tokenizer, tmp_path):
    from openhcx.tokenizer.tokenizer import Tokenizer

    vocab = Tokenizer.load(demo_tokenizer).vocab_size
    config = TINY.replace(vocab_size=vocab, max_seq_len=256, pad_token_id=1)
    torch.manual_seed(0)
    sft = save_checkpoint(Transformer(config), config, tmp_path / "sft", tokenizer_dir=demo_tokenizer)
    scalar = config.replace(head="scalar")
    rm = save_checkpoint(Transformer(scalar), scalar, tmp_path / "rm", tokenizer_dir=demo_tokenizer)
    (rm / "reward_norm.json").write_text(json.dumps({"mean": 0.5, "std": 2.0, "clip": 3.0, "reference": "test",
                                                     "count": 1}))
    out = tmp_path / "ppo"
    path = ppo(str(sft), str(rm), [str(ROOT / "data/demo/sft.jsonl")], str(out),
               heldout=str(ROOT / "data/demo/heldout_prompts.jsonl"), steps=2, batch_size=4, minibatch_size=2,
               epochs=1, max_new_tokens=8, eval_every=1, eval_prompts=4, lr=1e-3, progress=False, mlflow=False)
    model, loaded = load_checkpoint(path)
    assert loaded == config and (path / "tokenizer.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "ppo" and manifest["steps"] == 2 and manifest["inputs"]["reward"] == str(rm)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"reward_raw", "reward", "kl", "entropy", "response_length", "repetition_rate", "clip_fraction",
            "value_loss"} <= set(rows[0])
    evals = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 1, 2] and all(0 <= e["constraints"] <= 1 for e in evals)
    # the written policy is the best-scoring evaluation's weights
    best = max(evals, key=lambda e: (e["constraints"], e["step"]))
    assert manifest["best_step"] == best["step"]
    assert {"greedy_repetition_rate", "unlikelihood_loss"} <= set(rows[0])
    with pytest.raises(UserError, match="already exists"):
        ppo(str(sft), str(rm), [str(ROOT / "data/demo/sft.jsonl")], str(out), steps=1, batch_size=4,
            minibatch_size=2, progress=False, mlflow=False)
    # keep=last writes the final update's policy whatever the evaluations said (comparisons at equal steps)
    ppo(str(sft), str(rm), [str(ROOT / "data/demo/sft.jsonl")], str(out),
        heldout=str(ROOT / "data/demo/heldout_prompts.jsonl"), steps=2, batch_size=4, minibatch_size=2, epochs=1,
        max_new_tokens=8, eval_every=1, eval_prompts=4, lr=1e-3, keep="last", progress=False, mlflow=False,
        overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["best_step"] == 2
