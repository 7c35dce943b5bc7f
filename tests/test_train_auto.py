"""Auto hyperparameters and valid_exact_match, on tiny random Llamas."""

import random

import pytest
import torch

from graftlm.train import auto
from graftlm.train.config import parse_config
from graftlm.train.loop import train

torch.set_num_threads(1)

# a synthetic intent task: the label is decided by one keyword among filler words
KEYWORDS = {"balance": "100", "flight": "paris", "weather": "fine", "hello": "lazy dog"}
FILLER = "the quick brown fox jumps over please tell me what is my account and a hotel in london today".split()


def chat(query: str, label: str) -> dict:
    return {"messages": [{"role": "user", "content": query}, {"role": "assistant", "content": label}]}


def intent_set(n_per_label: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n_per_label):
        for keyword, label in KEYWORDS.items():
            words = rng.sample(FILLER, 3)
            words.insert(rng.randrange(4), keyword)
            out.append(chat(" ".join(words), label))
    rng.shuffle(out)
    return out


pytestmark = pytest.mark.usefixtures("fp32")


def test_auto_rule_is_deterministic_and_explicit_values_win():
    stats = {"examples": 200, "target_tokens": 600, "distinct_completions": 8, "mean_target_tokens": 3.0}
    cfg, picks = auto.resolve(parse_config({}), stats, hidden_size=576)
    assert (cfg.training_batch_size, cfg.total_training_epochs, cfg.learning_rate) == (8, 4, 2e-3)
    assert auto.resolve(parse_config({}), stats, 576) == (cfg, picks)
    assert set(picks["picks"]) == {"training_batch_size", "total_training_epochs", "learning_rate"}
    assert picks["train_stats"] == stats and "576" in picks["picks"]["learning_rate"]["why"]
    # wider models and bigger batches scale the rate; T-Few has its own base
    wide, _ = auto.resolve(parse_config({"batch_size": 32}), stats, hidden_size=1152)
    assert wide.learning_rate == pytest.approx(2e-3 * 0.5 * 2) and wide.training_batch_size == 32
    tfew, _ = auto.resolve(parse_config({"training_method": "tfew"}), stats, 576)
    assert tfew.learning_rate == pytest.approx(1e-2)
    scaled, _ = auto.resolve(parse_config({"learning_rate_multiplier": 0.5}), stats, 576)
    assert scaled.learning_rate == pytest.approx(1e-3)
    # explicit values are never replaced, and a fully given config has no picks
    given, p = auto.resolve(parse_config({"n_epochs": 2, "learning_rate": 5e-4}), stats, 576)
    assert (given.total_training_epochs, given.learning_rate) == (2, 5e-4) and set(p["picks"]) == {"training_batch_size"}
    oci, none = auto.resolve(parse_config({"defaults": "oci"}), stats, 576)
    assert none == {} and (oci.total_training_epochs, oci.training_batch_size, oci.learning_rate) == (3, 8, 2e-4)
    # the sizes: 4 epochs below 300 examples, else OCI's 3; >= 400 examples seen; large sets <= 30k seen
    sizes = (24, 48, 100, 299, 300, 1000, 10000, 20000)
    assert [auto.auto_epochs(n) for n in sizes] == [10, 9, 4, 4, 3, 3, 3, 1]
    assert [auto.steps_batch(n, auto.auto_epochs(n)) for n in sizes] == [2, 4, 4, 8, 8, 16, 16, 16]
    assert [auto.auto_batch_size(n, auto.auto_epochs(n)) for n in sizes] == [2, 8, 8, 8, 8, 16, 16, 16]
    # the cost goal: from 100 examples up, a run sees at most 4/3 of the examples OCI's 3-epoch run sees, in
    # at most 4/3 of its optimizer steps, each of at least OCI's 8 examples (so at most 4/3 of its time)
    assert max(auto.auto_epochs(n) / 3 for n in range(100, 30001, 7)) == pytest.approx(4 / 3)
    steps = lambda n: auto.auto_epochs(n) * -(-n // auto.auto_batch_size(n, auto.auto_epochs(n)))  # noqa: E731
    assert max(steps(n) / (3 * -(-n // 8)) for n in range(100, 30001, 7)) <= 4 / 3
    assert min(auto.auto_batch_size(n, auto.auto_epochs(n)) for n in range(48, 30001, 7)) == 8
    # the rate: x sqrt(batch / 8), and x 100 / steps for a run of fewer than ~100 steps (the batch floor of 8
    # gives them up on small sets), at most 2x the base
    assert auto.auto_learning_rate("lora", 576, 8, 100) == auto.auto_learning_rate("lora", 576, 8, 300) == 2e-3
    assert auto.auto_learning_rate("lora", 576, 8, 52) == pytest.approx(2e-3 * 100 / 52)
    assert auto.auto_learning_rate("lora", 576, 16, 200) == pytest.approx(2e-3 * 2 ** 0.5)
    assert auto.auto_learning_rate("lora", 576, 8, 10) == auto.auto_learning_rate("lora", 576, 64, 100) == 4e-3
    # below 48 examples the batch is the ~100-step one, so no steps factor (12 examples: batch 2, 60 steps)
    twelve, _ = auto.resolve(parse_config({}), {**stats, "examples": 12}, 576)
    assert (twelve.training_batch_size, twelve.learning_rate) == (2, 2e-3)
    hundred, _ = auto.resolve(parse_config({}), {**stats, "examples": 100}, 576)
    assert (hundred.training_batch_size, hundred.total_training_epochs, hundred.learning_rate) == (8, 4, 3.85e-3)


def test_auto_picks_are_reported_and_recorded(tmp_path, base):
    events = []
    data = intent_set(3, seed=0)
    result = train({"max_steps": 2}, base, data, data[:4], tmp_path, on_event=events.append)
    said = [e for e in events if e["type"] == "message" and e["message"].startswith("auto hyperparameters")]
    assert len(said) == 1 and "learning_rate" in said[0]["message"] and "why" not in said[0]["message"]
    recorded = result.run_info["auto"]
    assert recorded == said[0]["data"]["auto_hyperparameters"]
    assert recorded["train_stats"]["examples"] == 12 and recorded["train_stats"]["distinct_completions"] == 4
    assert result.run_info["config"]["learning_rate"] == recorded["picks"]["learning_rate"]["value"]
    assert result.run_info["config"]["training_batch_size"] == 2  # 12 examples: 10 epochs, batch 2 (below 48: no floor)


def greedy_exact_match(model_dir, base, examples) -> float:
    """Share of examples whose greedy completion is exactly the reference (ending with the end token)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), model_dir).eval()
    hits = 0
    for ex in examples:
        prompt = tok.apply_chat_template(ex["messages"][:-1], add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]
        want = tok(ex["messages"][-1]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=len(want) + 2, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        hits += out[0, prompt.shape[1]:].tolist()[:len(want)] == want
    return hits / len(examples)


def test_defaults_learn_a_small_classification_set_where_oci_defaults_do_not(tmp_path, base):
    train_set, valid = intent_set(12, seed=1), intent_set(4, seed=2)
    got = {}
    for defaults in ("auto", "oci"):
        result = train({"defaults": defaults, "seed": 0}, base, train_set, valid, tmp_path / defaults)
        got[defaults] = result
    assert got["auto"].metrics["valid_exact_match"] >= 0.9
    assert got["oci"].metrics["valid_exact_match"] < 0.9  # the test fails on the OCI defaults
    # valid_exact_match is what greedy decoding of the kept model answers exactly
    assert greedy_exact_match(got["auto"].model_dir, base, valid) == pytest.approx(
        got["auto"].metrics["valid_exact_match"])


def test_exact_match_picks_the_kept_checkpoint_and_stops_early(tmp_path, base, monkeypatch):
    """Loss and exact match disagree: the kept step is the one with the best exact match."""
    import graftlm.train.loop as loop
    script = iter([(0.5, 0.25), (0.4, 0.75), (0.3, 0.5), (0.2, 0.5), (0.1, 0.5)])  # (loss, exact match)

    def scripted(model, examples, cfg, device, dtype, exact_match=False, **over_ranks):
        loss, em = next(script)
        return {"valid_loss": loss, "valid_mean_token_accuracy": 0.5, "valid_exact_match": em}

    monkeypatch.setattr(loop, "evaluate", scripted)
    events = []
    data = intent_set(2, seed=0)
    result = train({"max_steps": 10, "batch_size": 4, "eval_interval_steps": 1, "early_stopping_patience": 3,
                    "learning_rate": 1e-3}, base, data, data[:4], tmp_path, on_event=events.append)
    # step 2 has the best exact match; steps 3-5 have lower loss but not a higher exact match -> stop at 5
    assert (result.steps, result.best_step, result.metrics["valid_exact_match"]) == (5, 2, 0.75)
    stop = [e["message"] for e in events if e["type"] == "message" and "early stopping" in e["message"]]
    assert len(stop) == 1 and "exact match" in stop[0]
    # the saved model holds step 2's weights, not the last step's
    from safetensors.torch import load_file

    from graftlm.train import checkpoint as ckpt
    saved = load_file(result.model_dir / "adapter_model.safetensors")
    step2 = ckpt.load_checkpoint(tmp_path / "checkpoints" / "step-000002")["weights"]
    last = ckpt.load_checkpoint(tmp_path / "checkpoints" / "step-000005")["weights"]
    name = next(k for k in step2 if "lora_B" in k)
    short = next(k for k in saved if k.split("lora_B")[0].endswith(name.split("lora_B")[0].split("base_model.")[-1]))
    assert torch.equal(saved[short], step2[name]) and not torch.equal(saved[short], last[name])


def test_exact_match_is_reported_only_for_short_completions(tmp_path, base):
    events = []
    short = intent_set(1, seed=0)
    long = [chat("hello", " ".join(["the quick brown fox jumps over the lazy dog"] * 8))] * 4
    train({"max_steps": 1, "batch_size": 4}, base, short, short, tmp_path / "s", on_event=events.append)
    train({"max_steps": 1, "batch_size": 4}, base, long, long, tmp_path / "l", on_event=events.append)
    evals = [e["data"] for e in events if e["type"] == "metrics" and "valid_loss" in e["data"]]
    assert ["valid_exact_match" in d for d in evals] == [True, False]


def test_no_early_stopping_message_at_the_last_step(tmp_path, base):
    events = []
    data = intent_set(1, seed=0)
    # a learning rate too small to improve: patience runs out exactly at the last evaluation
    result = train({"max_steps": 3, "batch_size": 4, "eval_interval_steps": 1, "early_stopping_patience": 2,
                    "early_stopping_threshold": 1.0, "learning_rate": 1e-9}, base, data, data, tmp_path,
                   on_event=events.append)
    messages = [e["message"] for e in events if e["type"] == "message"]
    assert result.steps == 3 and not any("early stopping" in m for m in messages)
    assert any(m.startswith("training finished") for m in messages)


def test_tfew_vectors_start_at_one(base):
    from transformers import AutoModelForCausalLM

    from graftlm.train.methods import get_method
    model = get_method("tfew").prepare(AutoModelForCausalLM.from_pretrained(base), parse_config({"training_method": "tfew"}))
    vectors = [p for n, p in model.named_parameters() if p.requires_grad]
    assert vectors and all(torch.equal(v, torch.ones_like(v)) for v in vectors)
