"""The one training loop on 2 gloo ranks (torchrun, 1 thread each): DDP and FSDP2 give the 1-process loss curve
and weights, FSDP2 holds half the weights per rank, checkpoints resume at another world size.

Cost: each torchrun launch is ~15-25 s on 2 CPU cores (two interpreters importing torch and transformers);
this file launches 7 of them (~3 min; the Ray test is marked slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from graftlm.train.launch import run_spec

torch.set_num_threads(1)

PAIRS = [("hello", "fine"), ("book a flight", "paris"), ("what is my balance", "100"), ("check the weather", "lazy dog")]
TOY = [{"messages": [{"role": "user", "content": q, "weight": 0}, {"role": "assistant", "content": a, "weight": 1}]}
       for q, a in PAIRS * 4]
# batch 5 over 16 examples: steps of 5, 5, 5 and 1 examples (the 1-example step leaves rank 1 without any:
# it runs a padding micro-batch); micro-batches of 2 make ranks run different numbers of real ones
LORA = {"training_method": "lora", "seed": 3, "warmup_ratio": 0.0, "learning_rate": 1e-2, "lora_dropout": 0.0,
        "max_steps": 5, "batch_size": 5, "eval_interval_steps": 4, "micro_batch_size": 2}
VANILLA = {**{k: v for k, v in LORA.items() if not k.startswith("lora")}, "training_method": "vanilla",
           "learning_rate": 3e-3}


pytestmark = pytest.mark.usefixtures("fp32")


def spec(base, out, config, **extra):
    return {"config": config, "base_model_path": str(base), "train_examples": TOY, "valid_examples": TOY[:5],
            "out_dir": str(out), "events": str(out) + ".jsonl", "threads": 1, **extra}


def one_rank(base, out, config, **extra):
    run_spec(spec(base, out, config, **extra))
    return read_events(out)


def launch_two(base, out, config, tmp_path, **extra) -> subprocess.CompletedProcess:
    path = tmp_path / f"{out.name}.json"
    path.write_text(json.dumps(spec(base, out, config, **extra)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--standalone", "-m", "graftlm.train.launch", str(path)],
                          capture_output=True, text=True, env=env, timeout=300)


def two_ranks(base, out, config, tmp_path, **extra):
    proc = launch_two(base, out, config, tmp_path, **extra)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return read_events(out)


def read_events(out):
    return [json.loads(line) for line in open(str(out) + ".jsonl")]


def curve(events):
    return {e["data"]["step"]: e["data"]["train_loss"] for e in events if e["type"] == "metrics"}


def valid(events):
    return {e["data"]["step"]: e["data"]["valid_loss"] for e in events if "valid_loss" in e.get("data", {})}


def ranks_message(events):
    return next(e["data"] for e in events if e.get("message", "").startswith("distributed:"))


def assert_close(a: dict, b: dict, rel: float):
    assert a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]) <= rel * abs(b[k]), (k, a[k], b[k])


def weights_close(dir_a, dir_b, name, rel):
    a, b = load_file(str(dir_a / name)), load_file(str(dir_b / name))
    assert a.keys() == b.keys()
    for k in a:  # relative to the tensor's norm (Adam's sign-like steps amplify fp32 reduction order elementwise)
        diff = ((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)).item()
        assert diff <= rel, (k, diff)


@pytest.fixture(scope="module")
def lora_one_rank(base, tmp_path_factory):
    # module-scoped fixtures are set up before the function-scoped fp32 one: set the dtype here too, or this
    # baseline trains in the machine's default dtype (bf16 autocast where supported) and the fp32 ranks miss it
    out = tmp_path_factory.mktemp("one") / "lora"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_DTYPE", "float32")
        return out, one_rank(base, out, LORA)


def test_ddp_two_ranks_equal_one_rank(base, tmp_path, lora_one_rank):
    one_out, one = lora_one_rank
    two = two_ranks(base, tmp_path / "ddp", LORA, tmp_path)
    assert ranks_message(two)["strategy"] == "ddp" and ranks_message(two)["world_size"] == 2  # auto: adapters
    assert_close(curve(two), curve(one), 1e-5)
    assert_close(valid(two), valid(one), 1e-5)
    weights_close(tmp_path / "ddp" / "model", one_out / "model", "adapter_model.safetensors", 1e-5)
    configs = [json.loads((d / "model" / "adapter_config.json").read_text()) for d in (tmp_path / "ddp", one_out)]
    for c in configs:
        c["target_modules"] = sorted(c["target_modules"])  # PEFT writes a set
    assert configs[0] == configs[1]
    # only rank 0 writes events: one "training started", one per step
    assert sum(e["message"].startswith("training started") for e in two if e["type"] == "message") == 1
    assert sorted(curve(two)) == [1, 2, 3, 4, 5]


def test_fsdp_lora_shards_the_base_and_equals_one_rank(base, tmp_path, lora_one_rank):
    one_out, one = lora_one_rank
    two = two_ranks(base, tmp_path / "fsdp", {**LORA, "distributed": {"strategy": "fsdp"}}, tmp_path)
    info = ranks_message(two)
    assert info["strategy"] == "fsdp" and info["sharding"] == "full"
    assert all(abs(n - info["total_params"] / 2) <= 0.01 * info["total_params"] for n in info["rank_parameters"])
    assert_close(curve(two), curve(one), 1e-4)
    weights_close(tmp_path / "fsdp" / "model", one_out / "model", "adapter_model.safetensors", 1e-4)


def test_fsdp_vanilla_full_shard_equals_one_rank(base, tmp_path):
    one = one_rank(base, tmp_path / "one", VANILLA)
    two = two_ranks(base, tmp_path / "two", VANILLA, tmp_path)
    info = ranks_message(two)
    assert info["strategy"] == "fsdp"  # auto: vanilla at 2 ranks shards
    assert all(abs(n - info["total_params"] / 2) <= 0.01 * info["total_params"] for n in info["rank_parameters"])
    assert_close(curve(two), curve(one), 1e-4)
    weights_close(tmp_path / "two" / "model", tmp_path / "one" / "model", "model.safetensors", 1e-3)


def test_fsdp_cpu_offload_zero2_and_mixed_precision_run(base, tmp_path, lora_one_rank):
    _, one = lora_one_rank
    hp = {**LORA, "distributed": {"strategy": "fsdp", "sharding": "grad_op", "cpu_offload": True,
                                  "mixed_precision": True}}
    two = two_ranks(base, tmp_path / "offload", hp, tmp_path)
    info = ranks_message(two)
    assert info["cpu_offload"] and info["mixed_precision"] and info["sharding"] == "grad_op"
    assert_close(curve(two), curve(one), 2e-2)  # bf16 weights and compute: close, not equal
    assert curve(two)[4] < 0.7 * curve(two)[1]


def test_resume_at_another_world_size(base, tmp_path, lora_one_rank):
    """2 FSDP ranks pause after step 3 -> 1 process resumes; 1 process paused -> 2 DDP ranks resume: the
    next steps' losses are the uninterrupted run's."""
    _, one = lora_one_rank
    fsdp = {**LORA, "distributed": {"strategy": "fsdp"}}
    two_ranks(base, tmp_path / "a", fsdp, tmp_path, stop_after_step=3)
    ckpt = tmp_path / "a" / "checkpoints" / "step-000003"
    assert len(list((ckpt / "dcp").glob("*.distcp"))) == 2  # each rank wrote its shards
    resumed = one_rank(base, tmp_path / "a", LORA, resume_from=str(ckpt))
    assert any(e.get("message") == "resumed from step 3" and e["data"]["checkpoint_world_size"] == 2 for e in resumed)
    assert_close({s: v for s, v in curve(resumed).items() if s > 3}, {4: curve(one)[4], 5: curve(one)[5]}, 1e-4)

    one_rank(base, tmp_path / "b", LORA, stop_after_step=3)
    ckpt = tmp_path / "b" / "checkpoints" / "step-000003"
    resumed = two_ranks(base, tmp_path / "b", LORA, tmp_path, resume_from=str(ckpt))
    assert_close({s: v for s, v in curve(resumed).items() if s > 3}, {4: curve(one)[4], 5: curve(one)[5]}, 1e-5)


def test_kill_9_while_an_async_checkpoint_is_written_resumes_from_the_one_before(base, tmp_path, lora_one_rank):
    """Checkpoints are written in the background (dcp.async_save) by default: both ranks are killed (SIGKILL)
    right after step 3's write started. Step 3 never became a checkpoint (only its temporary directory is
    there), step 2 is the newest complete one, and 2 ranks resuming from it give the uninterrupted curve."""
    _, one = lora_one_rank
    out = tmp_path / "killed"
    proc = launch_two(base, out, {**LORA, "checkpoint_interval_steps": 1}, tmp_path, kill_in_async_save=3)
    assert proc.returncode != 0
    from graftlm.train.checkpoint import latest_checkpoint
    assert latest_checkpoint(out).name == "step-000002"
    assert (out / "checkpoints" / ".tmp-step-000003").is_dir()  # the write had started
    resumed = two_ranks(base, out, {**LORA, "checkpoint_interval_steps": 1}, tmp_path,
                        resume_from=str(latest_checkpoint(out)))
    assert any(e.get("message") == "resumed from step 2" for e in resumed)
    assert_close({s: v for s, v in curve(resumed).items() if s > 2}, {s: curve(one)[s] for s in (3, 4, 5)}, 1e-5)
    assert latest_checkpoint(out).name == "step-000005"  # the resumed run's own async saves were put in place


def test_a_hung_rank_is_caught_by_the_collective_timeout(base, tmp_path):
    """Rank 1 stops responding in step 2: rank 0's all-reduce times out (timeout_seconds 10), it names itself
    and exits, and torchrun ends the group instead of waiting forever."""
    import time
    started = time.monotonic()
    proc = launch_two(base, tmp_path / "hung", {**LORA, "distributed": {"timeout_seconds": 10}}, tmp_path,
                      hang={"rank": 1, "step": 2})
    assert proc.returncode != 0
    assert time.monotonic() - started < 240  # not the 3,600 s rank 1 sleeps
    assert "graftlm: rank 0 of 2:" in proc.stderr, proc.stderr[-3000:]
    assert sorted(curve(read_events(tmp_path / "hung"))) == [1]  # step 1 ran; step 2 never finished


@pytest.mark.slow  # ~3 min on 2 CPU cores (most of it starting a local Ray and its 2 Ray Train workers)
def test_ray_train_two_workers_give_the_same_curve(base, tmp_path, lora_one_rank):
    ray = pytest.importorskip("ray")
    from graftlm.train.ray_ranks import run_on_ray

    _, one = lora_one_rank
    out = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        run_on_ray(lambda cfg: run_spec(cfg["spec"]), 2, address=None, storage=tmp_path / "ray-store", name="t",
                   config={"spec": spec(base, out, LORA), "env": {"OMP_NUM_THREADS": "1", "GRAFT_DTYPE": "float32"}})
    finally:
        ray.shutdown()
    two = read_events(out)
    assert ranks_message(two)["launcher"] == "ray" and ranks_message(two)["world_size"] == 2
    assert_close(curve(two), curve(one), 1e-5)
