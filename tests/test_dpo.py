"""DPO as a fine-tuning objective in the same loop: OpenAI's DPO JSONL validated with line/field errors, held-out
reward accuracy rising from 0.5 on a tiny model (adapter and vanilla), an exact resume after a kill, and a DPO job through the SDK."""

from __future__ import annotations

import io
import json

import pytest
import torch

from graftlm.data.formats import normalize
from graftlm.data.validate import validate_file
from graftlm.train import checkpoint as ckpt
from graftlm.train.loop import train

torch.set_num_threads(1)

TOPICS = ["the weather", "my balance", "a flight", "the news", "a recipe", "my card", "the bus", "a song",
          "the rent", "a movie", "my order", "the park", "a hotel", "the bank", "my phone", "a train",
          "the gym", "a book", "my car", "the shop", "a taxi", "the school", "my loan", "a doctor"]


def line(topic: str) -> dict:
    return {"input": {"messages": [{"role": "user", "content": f"tell me about {topic}"}]},
            "preferred_output": [{"role": "assistant", "content": "gladly"}],
            "non_preferred_output": [{"role": "assistant", "content": "no"}]}


PAIRS = [normalize(line(t), "preference") for t in TOPICS]
TRAIN, HELD_OUT = PAIRS[:16], PAIRS[16:]
HP = {"objective": "dpo", "training_method": "lora", "learning_rate": 1e-2, "lora_dropout": 0.0, "seed": 3,
      "warmup_ratio": 0.0, "batch_size": 4, "dpo_beta": 0.1, "early_stopping_patience": 0}


pytestmark = pytest.mark.usefixtures("fp32")


def metrics_events(events):
    return [e["data"] for e in events if e["type"] == "metrics"]


def test_held_out_reward_accuracy_rises_from_a_half(tmp_path, base):
    events = []
    result = train({**HP, "max_steps": 12, "eval_interval_steps": 4}, base, TRAIN, HELD_OUT, tmp_path / "out",
                   on_event=events.append)
    assert result.status == "succeeded"
    ref = torch.load(tmp_path / "out" / "valid_dpo_reference.pt")  # the reference, computed once, cached
    start_margin = (ref[:, 0] - ref[:, 1]).mean().item()  # the policy starts as the reference: accuracy 0.5
    evals = [m for m in metrics_events(events) if "valid_reward_accuracy" in m]
    assert [m["step"] for m in evals] == [4, 8, 12]
    assert evals[-1]["valid_reward_accuracy"] == 1.0
    assert evals[-1]["valid_logps_margin"] > start_margin + 1.0  # chosen - rejected log-prob grows
    assert evals[0]["valid_reward_margin"] < evals[-1]["valid_reward_margin"]
    assert evals[-1]["valid_loss"] < 0.6931 < 0.7  # below -log sigmoid(0), where it starts
    first = metrics_events(events)[0]
    assert {"train_loss", "train_reward_accuracy", "train_reward_margin", "train_logps_margin",
            "train_mean_token_accuracy"} <= set(first)
    assert first["train_loss"] == pytest.approx(0.6931, abs=1e-3)  # step 1's forward is the reference itself


def test_kill_and_resume_gives_the_same_curve(tmp_path, base):
    hp = {**HP, "max_steps": 8, "checkpoint_interval_steps": 3}
    full = []
    train(hp, base, TRAIN, HELD_OUT, tmp_path / "a", on_event=full.append)

    class Killed(Exception):
        pass

    first = []

    def die_after_step_5(event):
        first.append(event)
        if event["type"] == "metrics" and event["data"]["step"] == 5:
            raise Killed

    with pytest.raises(Killed):
        train(hp, base, TRAIN, HELD_OUT, tmp_path / "b", on_event=die_after_step_5)
    latest = ckpt.latest_checkpoint(tmp_path / "b")
    resumed = []
    train(hp, base, TRAIN, HELD_OUT, tmp_path / "b", on_event=resumed.append, resume_from=latest)
    step = int(latest.name.split("-")[-1])
    got = {m["step"]: m["train_loss"] for m in metrics_events(first) if m["step"] <= step}
    got |= {m["step"]: m["train_loss"] for m in metrics_events(resumed)}
    ref = {m["step"]: m["train_loss"] for m in metrics_events(full)}
    assert sorted(got) == sorted(ref) == list(range(1, 9))
    for s in ref:
        assert got[s] == pytest.approx(ref[s], rel=1e-5, abs=1e-6), s


def test_vanilla_dpo_trains_every_weight_against_the_untrained_base(tmp_path, base):
    """Vanilla DPO: no adapter to disable, so the reference is the base before its first step (precomputed
    log-probs, no frozen copy); held-out reward accuracy rises from 0.5 as with an adapter."""
    events = []
    hp = {**HP, "training_method": "vanilla", "learning_rate": 1e-3, "max_steps": 12, "eval_interval_steps": 4}
    del hp["lora_dropout"]
    result = train(hp, base, TRAIN, HELD_OUT, tmp_path / "out", on_event=events.append)
    assert result.status == "succeeded"
    ref = torch.load(tmp_path / "out" / "valid_dpo_reference.pt")
    rows = metrics_events(events)
    assert rows[0]["train_loss"] == pytest.approx(0.6931, abs=1e-3)  # step 1's policy is the reference
    evals = [m for m in rows if "valid_reward_accuracy" in m]
    assert evals[-1]["valid_reward_accuracy"] == 1.0
    assert evals[-1]["valid_logps_margin"] > (ref[:, 0] - ref[:, 1]).mean().item() + 1.0
    assert any("trainable parameters" in e["message"] and "100.0" in e["message"] for e in events), \
        [e["message"] for e in events if "parameters" in e["message"]]


def test_dpo_refuses_what_it_cannot_train(base, tmp_path):
    from graftlm.errors import GraftError
    from graftlm.train.config import parse_config

    assert parse_config({"objective": "dpo", "training_method": "vanilla"}).dpo_beta == 0.1
    with pytest.raises(GraftError) as e:
        parse_config({"dpo_beta": 0.2})
    assert e.value.param == "dpo_beta"
    sft = [{"messages": [{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a"}]}]
    with pytest.raises(GraftError) as e:
        train({**HP, "max_steps": 1}, base, sft, None, tmp_path / "x")
    assert e.value.param == "training_file"


def test_validator_names_line_and_field(tmp_path):
    good = json.dumps(line("x"))
    bad_role = json.dumps({**line("y"), "preferred_output": [{"role": "user", "content": "hi"}]})
    two = json.dumps({**line("z"), "non_preferred_output": [{"role": "assistant", "content": "a"}] * 2})
    ends_with_assistant = json.dumps({**line("w"), "input": {"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}})
    same = json.dumps({**line("v"), "non_preferred_output": [{"role": "assistant", "content": "gladly"}]})
    path = tmp_path / "dpo.jsonl"
    path.write_text("\n".join([good, bad_role, two, ends_with_assistant, same, '{"messages": []}']) + "\n")
    report = validate_file(path)
    assert report["format"] == "preference" and not report["valid"]
    got = {(e["line"], e["field"]) for e in report["errors"]}
    assert got == {(2, "preferred_output[0].role"), (3, "non_preferred_output"), (4, "input.messages[1].role"),
                   (5, "non_preferred_output[0].content"), (6, "messages")}
    path.write_text(good + "\n" + json.dumps(line("u")) + "\n")
    assert validate_file(path)["valid"]


def test_the_openai_sdk_creates_a_dpo_job_and_lists_its_events(client, tiny_model):
    data = "".join(json.dumps(line(t)) + "\n" for t in TOPICS[:8]).encode()
    f = client.files.create(file=("prefs.jsonl", io.BytesIO(data)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "training_method": "lora"}}})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    again = client.fine_tuning.jobs.retrieve(job.id)
    assert again.method.type == "dpo"
    events = client.fine_tuning.jobs.list_events(job.id)
    assert any("job created" in e.message for e in events.data)
    client.fine_tuning.jobs.cancel(job.id)
    sft = client.files.create(file=("sft.jsonl", io.BytesIO(b'{"prompt": "a", "completion": "b"}\n')),
                              purpose="fine-tune")
    import time

    for _ in range(100):  # the server validates uploads in the background; the format is known once processed
        if client.files.retrieve(sft.id).status == "processed":
            break
        time.sleep(0.1)
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny", training_file=sft.id, method={"type": "dpo"})
    assert e.value.body["param"] == "training_file"


def test_dpo_on_top_of_a_custom_model_starts_from_its_adapter(tmp_path, base):
    """Continuing a trained adapter (a job whose model is a custom model): training starts from its weights, and
    DPO's reference is that model, not the base: step 1's loss is -log sigmoid(0) and the cached reference
    log-probs differ from the adapter-disabled base's."""
    sft = [{"messages": p["messages"][:-1] + [{"role": "assistant", "content": "no"}]} for p in TRAIN]
    first = train({"training_method": "tfew", "learning_rate": 5e-2, "seed": 3, "warmup_ratio": 0.0, "batch_size": 4,
                   "max_steps": 6, "early_stopping_patience": 0}, base, sft, None, tmp_path / "parent")
    assert first.status == "succeeded"
    hp = {**HP, "training_method": "tfew", "max_steps": 8, "eval_interval_steps": 4}
    del hp["lora_dropout"]
    fresh, events = tmp_path / "fresh", []
    train({**hp, "max_steps": 1}, base, TRAIN, HELD_OUT, fresh)
    result = train(hp, base, TRAIN, HELD_OUT, tmp_path / "on-top", on_event=events.append,
                   init_adapter=first.model_dir)
    assert result.status == "succeeded"
    parent_ref = torch.load(tmp_path / "on-top" / "valid_dpo_reference.pt")
    base_ref = torch.load(fresh / "valid_dpo_reference.pt")
    # the parent learnt "no": its reference prefers the rejected answer far more than the base does
    assert (parent_ref[:, 1] - base_ref[:, 1]).mean() > 1.0
    rows = metrics_events(events)
    assert rows[0]["train_loss"] == pytest.approx(0.6931, abs=1e-3)
    evals = [m for m in rows if "valid_reward_accuracy" in m]
    assert evals[-1]["valid_reward_accuracy"] > 0.9


def test_a_job_on_a_custom_model_continues_its_adapter(tmp_path, tiny_model):
    from graftlm.errors import GraftError
    from graftlm.files.service import upload_local
    from graftlm.jobs.service import submit_job
    from graftlm.jobs.spec import JobSpec
    from graftlm.store.db import session
    from graftlm.store.models import FineTuningJob, Model
    from graftlm.testing.adapters import make_peft_adapter

    lora = make_peft_adapter(tiny_model["path"], tmp_path / "lora", kind="lora", r=4)
    with session() as s:
        s.add(Model(id="ft:tiny:mine:ftjob-1", kind="custom", parent="tiny", path=str(lora), adapter_type="lora"))
        s.add(Model(id="ft:tiny:full:ftjob-2", kind="custom", parent="tiny", path=str(lora), adapter_type="full"))
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(line(t)) + "\n" for t in TOPICS[:4]))
    f = upload_local(path, param="training_file")
    job = submit_job(JobSpec(model="ft:tiny:mine:ftjob-1", training_file=f,
                             method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1}}}))
    assert job["model"] == "tiny"
    with session() as s:
        config = s.get(FineTuningJob, job["id"]).config
    assert config["parent_model"] == "ft:tiny:mine:ftjob-1" and config["training_method"] == "lora"
    for model, hyper, param in (("ft:tiny:full:ftjob-2", {}, "model"),
                                ("ft:tiny:mine:ftjob-1", {"training_method": "tfew"}, "training_method"),
                                ("tiny", {"parent_model": "ft:tiny:mine:ftjob-1"}, "hyperparameters.parent_model")):
        with pytest.raises(GraftError) as e:
            submit_job(JobSpec(model=model, training_file=f, hyperparameters=hyper))
        assert e.value.param == param
