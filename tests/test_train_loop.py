"""The training loop on tiny random Llamas: learning, metrics, early stopping, resume, cancel, reload."""

import json

import pytest
import torch

from graftlm.testing.models import build_learnable_llama
from graftlm.train import checkpoint as ckpt
from graftlm.train.config import parse_config
from graftlm.train.loop import train
from graftlm.train.methods import count_parameters, get_method

torch.set_num_threads(1)

PAIRS = [("hello", "fine"), ("book a flight", "paris"), ("what is my balance", "100"), ("check the weather", "lazy dog")]
TOY = [{"messages": [{"role": "user", "content": q, "weight": 0}, {"role": "assistant", "content": a, "weight": 1}]}
       for q, a in PAIRS * 4]


pytestmark = pytest.mark.usefixtures("fp32")


def losses(events):
    return {e["data"]["step"]: e["data"]["train_loss"] for e in events if e["type"] == "metrics"}


def run(base, out, events=None, **hp):
    hp = {"seed": 3, "warmup_ratio": 0.0, **hp}
    return train(hp, base, TOY, TOY[:4], out, on_event=(events.append if events is not None else None))


@pytest.mark.parametrize("method,hp,hidden", [
    ("lora", {"learning_rate": 1e-2, "lora_dropout": 0.0, "lora_r": 16, "lora_alpha": 32}, 64),
    ("vanilla", {"learning_rate": 3e-3}, 64),
    ("tfew", {"learning_rate": 1.0}, 128),  # (IA)³ only rescales: a wider model and a large lr to learn the toy task
])
def test_loss_falls_on_a_learnable_task(tmp_path, base, method, hp, hidden):
    model_path = base if hidden == 64 else build_learnable_llama(tmp_path / "wide", hidden=hidden)
    events = []
    result = run(model_path, tmp_path / "out", events, training_method=method, n_epochs=15, batch_size=4,
                 early_stopping_patience=0, **hp)
    curve = losses(events)
    assert result.status == "succeeded"
    assert result.metrics["valid_loss"] < 0.25 * curve[1]
    if method == "tfew":  # a few hundred scaling factors in a random 2-layer model: most tokens, not all
        assert result.metrics["valid_mean_token_accuracy"] >= 0.8
    else:
        assert result.metrics["valid_loss"] < 0.3 and result.metrics["valid_mean_token_accuracy"] == 1.0


def test_qlora_needs_cuda(tmp_path, base):
    if torch.cuda.is_available():
        pytest.skip("qlora training is exercised on CUDA machines only by bench runs")
    from graftlm.errors import GraftError
    with pytest.raises(GraftError) as err:
        run(base, tmp_path, training_method="qlora")
    assert err.value.param == "training_method"


def test_trainable_parameter_counts(base):
    from transformers import AutoModelForCausalLM
    fresh = lambda: AutoModelForCausalLM.from_pretrained(base)  # noqa: E731
    total = count_parameters(fresh())[1]

    lora = get_method("lora").prepare(fresh(), parse_config({"lora_r": 4}))
    expected = sum(4 * (m.in_features + m.out_features) for n, m in fresh().named_modules()
                   if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in parse_config({}).lora_target_modules)
    assert count_parameters(lora)[0] == expected

    tfew = get_method("tfew").prepare(fresh(), parse_config({"training_method": "tfew"}))
    cfg = fresh().config
    per_layer = 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) + cfg.intermediate_size
    trainable, with_adapters = count_parameters(tfew)
    assert trainable == cfg.num_hidden_layers * per_layer and trainable / with_adapters < 0.01

    m = fresh()
    last = get_method("vanilla").prepare(m, parse_config({"training_method": "vanilla", "num_of_last_layers": 1}))
    assert count_parameters(last)[0] == sum(p.numel() for p in m.model.layers[-1].parameters()) + cfg.hidden_size
    full = get_method("vanilla").prepare(fresh(), parse_config({"training_method": "vanilla"}))
    assert count_parameters(full) == (total, total)


def test_metrics_logged_every_step_to_20_then_every_n(tmp_path, base):
    events = []
    train({"n_epochs": 1, "batch_size": 1, "log_model_metrics_interval_in_steps": 7, "max_steps": 36},
          base, TOY, None, tmp_path, on_event=events.append)
    assert sorted(losses(events)) == list(range(1, 21)) + [21, 28, 35]
    m = [e for e in events if e["type"] == "metrics"][0]["data"]
    assert set(m) == {"step", "train_loss", "train_mean_token_accuracy", "trained_tokens", "tokens_per_second"}
    logged = [e["data"] for e in events if e["type"] == "metrics"]
    assert all(b["trained_tokens"] > a["trained_tokens"] for a, b in zip(logged, logged[1:]))
    assert all(d["tokens_per_second"] > 0 for d in logged)
    events.clear()
    train({"max_steps": 6, "batch_size": 1, "log_model_metrics_interval_in_steps": 0, "eval_interval_steps": 3},
          base, TOY, TOY[:2], tmp_path / "b", on_event=events.append)
    evals = [e["data"] for e in events if e["type"] == "metrics"]
    assert [d["step"] for d in evals] == [3, 6] and all("valid_loss" in d for d in evals)


def test_early_stopping_stops_at_the_right_evaluation(tmp_path, base):
    events = []
    # a learning rate too small to improve validation loss by the threshold: evaluation 1 sets the best,
    # evaluations 2 and 3 do not improve, patience 2 -> stop after evaluation 3
    result = run(base, tmp_path, events, learning_rate=1e-9, eval_interval_steps=2, max_steps=20, batch_size=2,
                 early_stopping_patience=2, early_stopping_threshold=1.0)
    assert (result.steps, result.best_step) == (6, 2)
    assert any("early stopping" in e.get("message", "") for e in events)
    assert result.metrics["step"] == 2  # the result is the best evaluation


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, base, monkeypatch, dtype):
    monkeypatch.setenv("GRAFT_DTYPE", dtype)
    hp = dict(max_steps=10, batch_size=4, checkpoint_interval_steps=3, learning_rate=1e-2, lora_dropout=0.1,
              warmup_ratio=0.2)
    full = []
    reference = run(base, tmp_path / "a", full, **hp)

    class Killed(Exception):
        pass

    first = []

    def die_after_step_5(event):
        first.append(event)
        if event["type"] == "metrics" and event["data"]["step"] == 5:
            raise Killed  # like kill -9: nothing after step 5 is written; the last checkpoint is the epoch end, step 4

    with pytest.raises(Killed):
        train({"seed": 3, "warmup_ratio": 0.0, **hp}, base, TOY, TOY[:4], tmp_path / "b", on_event=die_after_step_5)
    latest = ckpt.latest_checkpoint(tmp_path / "b")
    assert latest.name == "step-000004"
    assert not [p for p in (tmp_path / "b" / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    resumed = []
    result = train({"seed": 3, "warmup_ratio": 0.0, **hp}, base, TOY, TOY[:4], tmp_path / "b",
                   on_event=resumed.append, resume_from=latest)
    ref = losses(full)
    got = {**{s: l for s, l in losses(first).items() if s <= 4}, **losses(resumed)}
    assert sorted(got) == list(range(1, 11))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step
    assert result.metrics["valid_loss"] == pytest.approx(reference.metrics["valid_loss"], rel=1e-5)
    info = json.loads((tmp_path / "b" / "run_info.json").read_text())
    assert {"torch", "transformers", "peft", "graftlm", "device", "autocast_dtype", "seed", "config"} <= set(info)


def test_pause_then_resume_and_cancel(tmp_path, base):
    hp = dict(max_steps=6, batch_size=4, lora_dropout=0.1)
    ref = []
    run(base, tmp_path / "ref", ref, **hp)
    steps = []
    ask = lambda: "pause" if len(steps) == 2 else None  # noqa: E731
    first = []
    paused = train(
        {"seed": 3, "warmup_ratio": 0.0, **hp}, base, TOY, TOY[:4], tmp_path / "p",
        on_event=lambda e: (first.append(e), e["type"] == "metrics" and steps.append(1)), should_stop=ask)
    assert (paused.status, paused.steps, paused.model_dir) == ("paused", 2, None)
    assert paused.checkpoint_dir.name == "step-000002"
    rest = []
    done = train({"seed": 3, "warmup_ratio": 0.0, **hp}, base, TOY, TOY[:4], tmp_path / "p",
                 on_event=rest.append, resume_from=paused.checkpoint_dir)
    assert done.status == "succeeded"
    assert {**losses(first), **losses(rest)} == pytest.approx(losses(ref), rel=1e-5)

    cancelled = train(
        {"seed": 3, **hp}, base, TOY, TOY[:4], tmp_path / "c", should_stop=lambda: "cancel")
    assert (cancelled.status, cancelled.steps, cancelled.model_dir) == ("cancelled", 1, None)


@pytest.mark.parametrize("method", ["lora", "tfew", "vanilla"])
def test_saved_model_reloads_with_the_trained_weights(tmp_path, base, method):
    from transformers import AutoModelForCausalLM
    result = run(base, tmp_path, None, training_method=method, max_steps=3, batch_size=4,
                 learning_rate={"lora": 1e-2, "tfew": 0.3, "vanilla": 1e-3}[method])
    # the trained model, rebuilt from the last checkpoint's trainable weights
    cfg = parse_config({"training_method": method})
    trained = get_method(method).prepare(AutoModelForCausalLM.from_pretrained(base), cfg)
    ckpt.load_trainable_state(trained, ckpt.load_checkpoint(result.checkpoint_dir)["weights"])
    if method == "vanilla":
        reloaded = AutoModelForCausalLM.from_pretrained(result.model_dir)
        assert (result.model_dir / "tokenizer_config.json").exists()
    else:
        from peft import PeftModel
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in result.model_dir.iterdir()}
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), result.model_dir)
    ids = torch.tensor([[1, 5, 9, 30, 2, 7]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(base)(ids).logits
        want, got = trained.eval()(ids).logits, reloaded.eval()(ids).logits
    assert not torch.allclose(plain, want, atol=1e-4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_continued_pretraining_learns_every_token(tmp_path, base):
    texts = [{"text": "the quick brown fox jumps over the lazy dog"}] * 8
    events = []
    result = train({"task_type": "CONTINUED_PRETRAIN", "training_method": "lora", "learning_rate": 1e-2,
                    "n_epochs": 6, "batch_size": 4, "lora_dropout": 0.0, "context_length": 8}, base, texts, None,
                   tmp_path, on_event=events.append)
    curve = losses(events)
    assert result.status == "succeeded" and curve[max(curve)] < 0.5 * curve[1]
    assert result.trained_tokens % (6 * 8) == 0  # every window of every text, every epoch


def test_accumulation_and_checkpointing_do_not_change_the_math(tmp_path, base):
    curves = []
    for i, extra in enumerate([{}, {"max_tokens_per_micro_batch": 16, "gradient_checkpointing": True}]):
        events = []
        run(base, tmp_path / str(i), events, max_steps=3, batch_size=8, lora_dropout=0.0, **extra)
        curves.append(losses(events))
    assert curves[1] == pytest.approx(curves[0], rel=1e-4)
