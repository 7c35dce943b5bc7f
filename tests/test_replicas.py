"""Engine replicas in their own processes (serve.remote): the same greedy tokens as the in-process engine,
adapter-affinity routing, 429 across replicas, cancel, kill -9 and hung replicas replaced, resize draining.

One module-wide set of 2 replica processes (tiny fp32 model, 1 thread each) serves every test here but the
routing ones (pure); the fault tests run last since they replace replicas.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from graftlm.serve.engine import Engine, EngineUnavailable
from graftlm.serve.remote import ReplicaSet, pick
from graftlm.serve.sampler import SamplingParams
from graftlm.serve.scheduler import QueueFull

PROMPTS = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17], [3, 1, 4, 1, 5, 9, 2, 6]]


def fake(slot, load=0, adapters=()):
    return SimpleNamespace(slot=slot, load=load, adapters=set(adapters))


def route_sequentially(replicas, names, overload):
    """Route one request at a time (light load: each finishes before the next), registering as the set does."""
    for name in names:
        r = pick(replicas, name, overload)
        r.adapters.add(name)


def test_light_load_puts_each_adapter_on_exactly_one_replica():
    replicas = [fake(0), fake(1)]
    route_sequentially(replicas, ["a", "b", "c", "d"] * 3, overload=4)
    assert sorted(replicas[0].adapters | replicas[1].adapters) == ["a", "b", "c", "d"]
    assert not replicas[0].adapters & replicas[1].adapters
    assert len(replicas[0].adapters) == len(replicas[1].adapters) == 2  # spread, not all on the first


def test_holder_is_preferred_until_it_is_overloaded():
    a, b = fake(0, load=3, adapters={"x"}), fake(1, load=0)
    assert pick([a, b], "x", overload=4) is a  # busier, but it has x: no second load of x
    a.load = 4  # overloaded: the idle replica loads x
    assert pick([a, b], "x", overload=4) is b
    b.load, b.adapters = 6, {"y"}  # every other replica busier than the overloaded holder: stay
    assert pick([a, b], "x", overload=4) is a
    holders = [fake(0, 2, {"x"}), fake(1, 1, {"x"})]
    assert pick(holders, "x", overload=4).slot == 1  # the least loaded holder
    assert pick([fake(0, 2, {"x"}), fake(1, 1)], None, overload=4).slot == 1  # base rows: least loaded


@pytest.fixture(scope="module")
def model(varied_model_dir, tmp_path_factory):
    from graftlm.testing.adapters import make_peft_adapter, make_peft_adapters

    d = tmp_path_factory.mktemp("replica-adapters")
    loras = make_peft_adapters(varied_model_dir, [d / f"lora{i}" for i in range(4)], "lora", r=4, seeds=[1, 2, 3, 4])
    ia3 = make_peft_adapter(varied_model_dir, d / "ia3", kind="ia3", seed=5)
    return SimpleNamespace(path=varied_model_dir, loras=loras, ia3=ia3)


@pytest.fixture(scope="module")
def replicas(model):
    rs = ReplicaSet(model.path, units=2, dtype="float32", max_batch_size=2, max_queue=2, max_seq_len=256,
                    threads=1, name="test", hang_s=4.0)
    for i, path in enumerate(model.loras):
        rs.register_adapter(f"lora{i}", path)
    rs.register_adapter("tfew", model.ia3)
    yield rs
    rs.stop()


def greedy(n=10, **kw):
    return SamplingParams(max_tokens=n, temperature=0, **kw)


def test_greedy_outputs_match_the_in_process_engine(replicas, model):
    engine = Engine(model.path, dtype="float32", max_seq_len=256, max_batch_size=8)
    engine.register_adapter("lora0", model.loras[0])
    engine.register_adapter("tfew", model.ia3)
    rows = [(p, greedy(12, logprobs=2), a) for p in PROMPTS[:3] for a in (None, "lora0", "tfew")]
    want = engine.generate(rows)
    got = replicas.generate(rows)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert [o.text for o in got] == [o.text for o in want]
    assert [o.finish_reason for o in got] == [o.finish_reason for o in want]
    # logprobs: the same top tokens; values to fp32 rounding (the replicas batch the rows differently)
    assert [[[t for t, _ in i.top] for i in o.logprobs] for o in got] == \
        [[[t for t, _ in i.top] for i in o.logprobs] for o in want]
    assert max(abs(a - b) for o, w in zip(got, want) for i, j in zip(o.logprobs, w.logprobs)
               for (_, a), (_, b) in zip(i.top, j.top)) < 1e-4
    for (prompt, params, adapter), out in zip(rows, want):  # streamed: the same deltas' text and tokens
        deltas = list(replicas.submit(prompt, params, adapter))
        assert "".join(d.text for d in deltas) == out.text
        assert [t for d in deltas for t in d.token_ids] == out.token_ids
        assert deltas[-1].finish_reason == out.finish_reason
    lg = [(PROMPTS[0], None), (PROMPTS[1], "lora0"), (PROMPTS[2], "tfew")]
    assert (replicas.logits(lg) - engine.logits(lg)).abs().max().item() < 1e-4
    engine.stop()


def replica_adapters(rs) -> dict[int, set[str]]:
    """What each replica process itself reports registered (its heartbeat), not the router's view."""
    time.sleep(0.5)
    return {r.slot: set(r.stats.get("adapters", ())) for r in rs.replicas}


def test_affinity_on_the_replicas_themselves(replicas, model):
    for i, path in enumerate(model.loras):  # forget where the earlier tests' batches put them
        replicas.unregister_adapter(f"lora{i}")
        replicas.register_adapter(f"lora{i}", path)
    for _ in range(2):
        for i in range(4):
            replicas.generate([(PROMPTS[0], greedy(2), f"lora{i}")])
    on = replica_adapters(replicas)
    for i in range(4):
        assert sum(f"lora{i}" in names for names in on.values()) == 1, on
    holder = next(slot for slot, names in on.items() if "lora0" in names)
    # overload: more rows of lora0 than its holder runs at once (max_batch_size 2): the other replica loads it
    handles = [replicas.submit(PROMPTS[1], greedy(40, ignore_eos=True), "lora0") for _ in range(3)]
    for h in handles:
        h.result(timeout=120)
    on = replica_adapters(replicas)
    assert all("lora0" in names for names in on.values()), (holder, on)


def test_errors_cross_the_boundary_with_their_status(replicas):
    from graftlm.errors import GraftError

    with pytest.raises(GraftError) as e:
        replicas.submit([10**6], greedy())
    assert e.value.status_code == 400 and e.value.param == "prompt"
    with pytest.raises(GraftError) as e:
        replicas.submit([1, 2], greedy(), "nope")
    assert e.value.status_code == 404 and e.value.param == "model"
    # a full queue on every replica is a 429 with Retry-After (2 running + 2 waiting on each of 2)
    handles, refused = [], None
    for _ in range(12):
        try:
            handles.append(replicas.submit(PROMPTS[2], greedy(200, ignore_eos=True)))
        except QueueFull as q:
            refused = q
            break
    assert refused is not None and refused.status_code == 429 and refused.retry_after >= 1
    assert len(handles) >= 8  # both replicas' queues were used before the refusal
    for h in handles:
        h.cancel()
    for h in handles:
        assert h.result(timeout=60).finish_reason == "cancelled"
    deadline = time.time() + 10
    while replicas.num_running + replicas.num_waiting and time.time() < deadline:
        time.sleep(0.1)
    assert replicas.num_running + replicas.num_waiting == 0  # cancel freed the rows in the replicas


def test_grammar_compiles_on_the_replica(replicas):
    import json

    pytest.importorskip("xgrammar")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    out = replicas.generate([(PROMPTS[0], greedy(60, grammar=replicas.grammars.json_schema(schema)), "lora1")])[0]
    assert isinstance(json.loads(out.text)["n"], int)


def wait_for(predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def serving(rs, n=2):
    return sum(r.state == "ready" for r in rs.replicas) == n


def test_resize_drains_without_dropping_requests(replicas):
    handles = [replicas.submit(PROMPTS[i % 4], greedy(60, ignore_eos=True)) for i in range(4)]
    replicas.resize(1)
    assert [h.result(timeout=120).finish_reason for h in handles] == ["length"] * 4
    assert wait_for(lambda: len(replicas.replicas) == 1, 30)
    assert replicas.generate([(PROMPTS[0], greedy(3), "lora2")])[0].completion_tokens == 3
    replicas.resize(2)
    assert wait_for(lambda: serving(replicas), 300)


def run_streams(rs, n, tokens):
    """n concurrent streams; each ends as 'ok' or with the error's status (never hangs: a 120 s bound)."""
    results = [None] * n

    def one(i):
        try:
            h = rs.submit(PROMPTS[i % 4], greedy(tokens, ignore_eos=True), f"lora{i % 4}" if i % 2 else None)
            for _ in h:
                pass
            results[i] = "ok"
        except EngineUnavailable as e:
            results[i] = e.status_code
        except Exception as e:  # noqa: BLE001 - anything else is what the test forbids
            results[i] = repr(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results


@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_a_dead_or_hung_replica_is_replaced(replicas, fault):
    assert wait_for(lambda: serving(replicas), 300)
    threads, results = run_streams(replicas, 8, 150)
    assert wait_for(lambda: all(r.load for r in replicas.replicas), 60)  # both replicas have rows
    victim = replicas.replicas[0]
    restarts = replicas.restarts
    os.kill(victim.proc.pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    killed_at = time.time()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert set(results) <= {"ok", 503}, results
    assert victim.proc.poll() is not None  # a hung one was killed, not left stopped
    assert replicas.restarts == restarts + 1
    # the surviving replica serves at once; the replacement comes up and the count recovers
    assert replicas.generate([(PROMPTS[1], greedy(3), "lora3")])[0].completion_tokens == 3
    assert time.time() - killed_at < (10 if fault == "kill" else 10 + replicas.hang_s)
    assert wait_for(lambda: serving(replicas), 300)


@pytest.mark.slow  # a local Ray (2 CPUs) and two actors that each import torch: ~1-2 min on 2 busy cores
def test_replicas_as_ray_actors(model, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    try:
        rs = ReplicaSet(model.path, units=2, dtype="float32", max_batch_size=2, max_seq_len=256, threads=1,
                        name="ray", ray_address="auto")
        try:
            assert all(type(r.proc).__name__ == "RayReplica" for r in rs.replicas)
            for i in range(4):
                rs.register_adapter(f"lora{i}", model.loras[i])
            engine = Engine(model.path, dtype="float32", max_seq_len=256)
            engine.register_adapter("lora1", model.loras[1])
            rows = [(PROMPTS[0], greedy(8), None), (PROMPTS[1], greedy(8), "lora1")]
            assert [o.token_ids for o in rs.generate(rows)] == [o.token_ids for o in engine.generate(rows)]
            engine.stop()
            for i in range(4):  # multiplexed by adapter: each on exactly one actor
                rs.generate([(PROMPTS[2], greedy(2), f"lora{i}")])
            on = replica_adapters(rs)
            assert all(sum(f"lora{i}" in names for names in on.values()) == 1 for i in range(4)), on
            os.kill(rs.replicas[0].proc.pid, signal.SIGKILL)  # a dead actor is replaced too
            assert wait_for(lambda: rs.restarts == 1 and serving(rs), 300)
        finally:
            rs.stop()
    finally:
        ray.shutdown()
