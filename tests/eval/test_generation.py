"""Generation in the harness: batched and sampled decoding on a real checkpoint, the resumable cache, recorded
failures, the OpenAI-compatible client against a live HTTP server, and judged two-turn chats (MT-Bench)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from openhcx.eval.cache import Cache
from openhcx.eval.generation import GenRequest, LocalGenerator, OpenAIGenerator
from openhcx.eval.harness import Scoring, evaluate_backend, generate_cached, run_generation_task
from openhcx.eval.tasks import REGISTRY, Generation, Item, Task
from openhcx.eval.tasks.mt_bench import KOREAN_ONLY, judge_prompts, rating
from openhcx.io import UserError


class Scripted:
    """A generator whose replies a function of the request decides; it records every request it is given."""

    def __init__(self, reply, fingerprint="scripted"):
        self.reply, self.fingerprint, self.seen = reply, fingerprint, []

    def generate(self, requests):
        for i, r in enumerate(requests):
            self.seen.append(r)
            yield i, self.reply(r)


def echo_task(items, **gen):
    """A generation task over fixed items whose score is whether the completion equals the item's target."""
    def score(items, completions, ctx):
        return [{"match": float(c[0] == it.target), "n": len(c)} for it, c in zip(items, completions)]

    return Task(name="echo", family="echo", load=lambda folder, split: items, eval_split="test", metrics=("match",),
                primary="match", output="generate", generation=Generation(**gen), score=score)


ITEMS = [Item(query=f"Q{i}:", choices=(), gold=0, target=f"A{i}") for i in range(5)]


def test_greedy_batches_decode_as_each_prompt_alone(tiny_ckpt):
    gen = LocalGenerator(tiny_ckpt, batch_tokens=64)  # small budget: several batches of mixed lengths
    prompts = ["안녕하세요", "The following are", "질문: 전쟁이 시작되었다. 병사들이", "A B C D", "예"]
    reqs = [GenRequest(p, max_new_tokens=12) for p in prompts]
    together = dict(gen.generate(reqs))
    alone = [dict(gen.generate([r]))[0] for r in reqs]
    assert [together[i] for i in range(len(reqs))] == alone
    assert all(len(r) == 1 and isinstance(r[0], str) for r in alone)


def test_a_row_that_stops_hands_its_place_to_the_next_prompt(tiny_ckpt):
    """Two rows for five prompts, longest first; the second prompt's stop string comes early. Its row takes the
    third prompt at once, so the five take fewer decoding steps than fixed batches of two (which carry a stopped
    row to the end of its batch), and every answer is what the prompt gives alone."""
    from openhcx.model.generate import Sampling, generate

    gen = LocalGenerator(tiny_ckpt)
    net, codec = gen.load()
    prompts = ["질문: 전쟁이 시작되었다. 병사들이", "The following are", "안녕하세요", "A B C D", "예"]
    free = [dict(gen.generate([GenRequest(p, max_new_tokens=16)]))[0][0] for p in prompts]
    ids = {i: gen.encode(GenRequest(p, max_new_tokens=16))[0] for i, p in enumerate(prompts)}
    order = sorted(ids, key=lambda i: -len(ids[i]))
    early = order[1]
    others = [f for i, f in enumerate(free) if i != early]
    cut, stop = next((k, free[early][k:k + 2]) for k in range(1, len(free[early]) - 1)
                     if "\ufffd" not in free[early][k:k + 2] and free[early].find(free[early][k:k + 2]) == k
                     and not any(free[early][k:k + 2] in f for f in others))
    reqs = [GenRequest(p, max_new_tokens=16, stop=(stop,)) for p in prompts]
    steps = []
    net.forward = lambda x, _f=net.forward, **kw: (steps.append(x.shape[1] == 1), _f(x, **kw))[1]
    gen.batch_tokens = 2 * (len(ids[order[0]]) + 16)  # two rows
    results = list(gen.generate(reqs))
    continuous, steps[:] = sum(steps), []
    sampling = Sampling(16, stop_ids=codec.end_ids, stop_strings=(stop,))
    for pair in (order[:2], order[2:4], order[4:]):
        generate(net, [ids[i] for i in pair], sampling, decode=codec.decode, pad_id=codec.pad_id)
    got = dict(results)
    assert got[early] == [free[early][:cut]] and [got[i][0] for i in range(5) if i != early] == others
    assert results[0][0] == early and continuous < sum(steps)


@pytest.mark.parametrize("call,reason", [(1, "prefill failed"), (3, "decoding failed")])
def test_a_decoding_step_that_fails_fails_its_rows_requests_only(tiny_ckpt, call, reason):
    """A prefill or a step that raises (the first or third forward pass) ends the requests in its rows with the
    reason, as an endpoint's failure would be recorded; prompts still waiting decode as they would alone."""
    gen = LocalGenerator(tiny_ckpt)
    net, _ = gen.load()
    prompts = ["질문: 전쟁이 시작되었다. 병사들이", "The following are", "안녕하세요"]
    alone = [dict(gen.generate([GenRequest(p, max_new_tokens=6)]))[0] for p in prompts]
    calls = []

    def failing(x, _f=net.forward, **kw):
        calls.append(1)
        if len(calls) == call:
            raise RuntimeError("out of memory")
        return _f(x, **kw)

    net.forward = failing
    width = {i: len(gen.encode(GenRequest(p, max_new_tokens=6))[0]) for i, p in enumerate(prompts)}
    first = max(width, key=width.get)  # admitted first, alone in the one row
    gen.batch_tokens = width[first] + 6
    got = dict(gen.generate([GenRequest(p, max_new_tokens=6) for p in prompts]))
    assert got[first] == f"{reason}: RuntimeError: out of memory"
    assert [got[i] for i in range(3) if i != first] == [a for i, a in enumerate(alone) if i != first]


def test_samples_repeat_by_seed_whatever_else_is_decoded(tiny_ckpt):
    gen = LocalGenerator(tiny_ckpt)
    req = GenRequest("안녕하세요", max_new_tokens=10, temperature=1.0, n=4, seed=7)
    first = dict(gen.generate([req]))[0]
    again = dict(gen.generate([GenRequest("A B C D", max_new_tokens=5, temperature=1.0, n=2, seed=1), req]))[1]
    assert first == again and len(first) == 4 and len(set(first)) > 1  # four draws, not one repeated


def test_stop_strings_cut_and_a_model_that_never_stops_ends_at_the_budget(tiny_ckpt):
    gen = LocalGenerator(tiny_ckpt)
    free = dict(gen.generate([GenRequest("안녕하세요", max_new_tokens=20)]))[0][0]
    stop = free[3:5]
    cut = dict(gen.generate([GenRequest("안녕하세요", max_new_tokens=20, stop=(stop,))]))[0][0]
    assert stop and cut == free[: free.index(stop)]
    # the random model never emits its end token: the budget ends it, with as many tokens as allowed
    net, codec = gen.load()
    from openhcx.model.generate import Sampling, generate
    done = generate(net, [codec.encode("안녕하세요")], Sampling(20, stop_ids=codec.end_ids), decode=codec.decode)
    assert done[0].finish_reason == "length" and len(done[0].ids) == 20 and done[0].text == free


def test_generation_resumes_from_the_cache_and_retries_failures(tmp_path):
    flaky = Scripted(lambda r: "server down" if r.prompt == "Q2:" else [r.prompt.replace("Q", "A")[:-1]])
    scoring = Scoring(1, False, Cache(tmp_path / "cache.jsonl"))
    res, records = run_generation_task(flaky, echo_task(ITEMS), scoring)
    assert res.metrics == {"match": 0.8, "failed_items": 1.0}
    assert records[2]["error"] == "server down" and records[2]["completions"] == [""]
    fixed = Scripted(lambda r: [r.prompt.replace("Q", "A")[:-1]])
    res, _ = run_generation_task(fixed, echo_task(ITEMS), Scoring(1, False, Cache(tmp_path / "cache.jsonl")))
    assert res.metrics == {"match": 1.0} and [r.prompt for r in fixed.seen] == ["Q2:"]  # only the failed one


def test_samples_get_seeds_from_their_requests(tmp_path):
    gen = Scripted(lambda r: [str(r.seed)] * r.n)
    items = ITEMS[:2]
    _, records = run_generation_task(gen, echo_task(items, temperature=0.7, samples=3), Scoring(1, False, Cache()))
    seeds = [r.seed for r in gen.seen]
    assert len(set(seeds)) == 2 and all(rec["n"] == 3 for rec in records)
    gen2 = Scripted(lambda r: [str(r.seed)] * r.n)
    run_generation_task(gen2, echo_task(items[::-1], temperature=0.7, samples=3), Scoring(1, False, Cache()))
    assert sorted(r.seed for r in gen2.seen) == sorted(seeds)  # same prompt, same seed, in any order


def test_few_shot_prompts_and_chat_mode():
    shots = [Item(query=f"S{i}:", choices=(), gold=0, target=f"T{i}") for i in range(3)]
    task = Task(name="fs", family="fs", load=lambda folder, split: ITEMS[:1] if split == "test" else shots,
                eval_split="test", fewshot_split="train", shots=2, sampler="first_n", metrics=("match",),
                output="generate", generation=Generation(chat=True), score=echo_task(ITEMS).score)
    gen = Scripted(lambda r: ["x"])
    run_generation_task(gen, task, Scoring(1, False, Cache()))
    assert gen.seen[0].prompt == (("user", "S0: T0\n\nS1: T1\n\nQ0:"),)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("prompt") == "garbage":
            reply = {"nonsense": True}
        elif "messages" in body:
            reply = {"id": "1", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": k, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": body["messages"][-1]["content"][::-1]}}
                                 for k in range(body.get("n", 1))]}
        else:
            reply = {"id": "1", "object": "text_completion", "created": 0, "model": body["model"],
                     "choices": [{"index": k, "text": " 42\n\nQ: next", "finish_reason": "stop", "logprobs": None}
                                 for k in range(body.get("n", 1))]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def test_openai_endpoint_completions_chats_and_failures(server):
    gen = OpenAIGenerator(server, "m", retries=0, timeout=5)
    got = dict(gen.generate([GenRequest("Q: 6*7?\nA:", 16, stop=("\n\n",), n=2),
                             GenRequest((("user", "abc"),), 16), GenRequest("garbage", 16)]))
    assert got[0] == [" 42", " 42"] and got[1] == ["cba"]
    assert isinstance(got[2], str) and server in got[2]
    down = OpenAIGenerator("http://127.0.0.1:9", "m", retries=0, timeout=2)  # nothing listens on port 9
    (_, err), = down.generate([GenRequest("x", 4)])
    assert isinstance(err, str) and "Connection" in err


def test_judge_ratings_are_parsed_and_garbage_leaves_the_turn_ungraded():
    assert rating("Explanation... Rating: [[7]]") == 7 and rating("점수: [8.5]") == 8.5
    assert rating("I refuse") is None and rating("[[11]]") is None and rating(None) is None


def test_mt_bench_two_turns_judged_and_scaled(bench, tmp_path):
    answers = Scripted(lambda r: [f"answer to turn {len(r.prompt) // 2 + 1}"])
    judge = Scripted(lambda r: ["Rating: [[8]]" if "turn 2" in r.prompt[-1][1] else "Rating: [[6]]"], "judge")
    res = evaluate_backend(None, "scripted", ["mt_bench"], generator=answers, judge=judge, limit=3, progress=False,
                           out=str(tmp_path))
    m = res.tasks["mt_bench"].metrics
    assert m == pytest.approx({"score": 0.7, "turn1": 0.6, "turn2": 0.8, "graded": 1.0})
    second = [r for r in answers.seen if len(r.prompt) == 3]  # user, assistant, user
    assert len(second) == 3 and second[0].prompt[1] == ("assistant", "answer to turn 1")
    assert len(judge.seen) == 6 and judge.seen[0].prompt[0][0] == "system"
    chat = res.categories  # MT-Bench feeds its category
    assert any("MT-Bench" in c.benchmarks for c in chat)


def test_a_garbage_judge_leaves_items_ungraded_not_zero(bench):
    answers = Scripted(lambda r: ["..."])
    judge = Scripted(lambda r: ["no idea"], "judge")
    res = evaluate_backend(None, "scripted", ["ko_mt_bench"], generator=answers, judge=judge, limit=2,
                           progress=False)
    assert res.tasks["ko_mt_bench"].metrics == {"graded": 0.0}  # no score at all rather than a zero


def test_korean_judge_prompts_penalise_the_wrong_language(bench):
    prompts = judge_prompts(bench / "mt_bench", korean=True)
    assert set(prompts) == {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"}
    assert all(system.endswith(KOREAN_ONLY) for system, _ in prompts.values())
    assert "{answer}" in prompts["single-v1"][1]
    assert not any(KOREAN_ONLY in s for s, _ in judge_prompts(bench / "mt_bench", korean=False).values())


def test_judged_task_without_judge_is_refused(bench):
    with pytest.raises(UserError, match="judge"):
        evaluate_backend(None, "scripted", ["mt_bench"], generator=Scripted(lambda r: ["x"]), limit=1,
                         progress=False)


def test_mistyped_task_names_get_the_closest_names_and_the_groups():
    with pytest.raises(UserError) as e:
        REGISTRY.expand(["kobest_copaa"])
    msg = str(e.value)
    assert "did you mean kobest_copa" in msg and "groups: " in msg and "kmmlu_taxation" not in msg


def test_generate_cached_keys_on_model_and_settings(tmp_path):
    cache = Cache(tmp_path / "c.jsonl")
    a = Scripted(lambda r: ["a"], "model-a")
    generate_cached(a, [GenRequest("p", 8)], cache)
    generate_cached(a, [GenRequest("p", 8)], cache)
    generate_cached(a, [GenRequest("p", 9)], cache)
    generate_cached(Scripted(lambda r: ["b"], "model-b"), [GenRequest("p", 8)], cache)
    assert len(a.seen) == 2
