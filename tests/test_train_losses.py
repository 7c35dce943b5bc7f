"""T-Few's unlikelihood and length-normalised losses (label_set_losses), on tiny random Llamas."""

import math

import pytest
import torch

from graftlm.errors import GraftError
from graftlm.train import losses
from graftlm.train.config import parse_config
from graftlm.train.loop import encode_examples, target_logits, train

torch.set_num_threads(1)

LABELS = ["100", "paris", "fine", "lazy dog"]


def chat(query: str, label: str, system: str | None = None) -> dict:
    turns = [{"role": "system", "content": system}] if system else []
    return {"messages": turns + [{"role": "user", "content": query}, {"role": "assistant", "content": label}]}


def labelled(n: int) -> list[dict]:
    words = "balance flight weather hello".split()
    return [chat(f"what about the {words[i % 4]} today", LABELS[i % 4]) for i in range(n)]


pytestmark = pytest.mark.usefixtures("fp32")


@pytest.fixture(scope="module")
def tok_model(base):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base).eval()


def reference_terms(model, rows_per_example):
    """The paper's formulas computed one candidate at a time with a plain HF forward."""
    lm = ul = ln = 0.0
    for rows in rows_per_example:
        betas = []
        for c, row in enumerate(rows):
            ids = torch.tensor([row["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            tok = [(t, row["labels"][t]) for t in range(1, len(row["labels"])) if row["labels"][t] != -100]
            lps = [logp[t - 1, y].item() for t, y in tok]
            betas.append(sum(lps) / len(lps))
            if c == 0:
                lm -= sum(lps)
            else:
                ul -= sum(math.log(1 - math.exp(lp)) for lp in lps)
        ln -= betas[0] - math.log(sum(math.exp(b) for b in betas))
    return lm, ul, ln


def test_terms_match_the_papers_formulas(tok_model):
    tok, model = tok_model
    cfg = parse_config({"label_set_losses": True})
    encoded = encode_examples(tok, labelled(8), cfg)
    label_set = losses.label_set(encoded)
    assert len(label_set) == 4
    rng = losses.step_rng(0, 1)
    per_example = [losses.candidate_rows(e, label_set, rng) for e in encoded[:3]]
    # the reference row is the example itself; the candidates are the three other labels, same prompt
    assert per_example[0][0]["input_ids"] == encoded[0]["input_ids"][:len(per_example[0][0]["input_ids"])]
    assert len(per_example[0]) == 4 and len({tuple(r["input_ids"]) for r in per_example[0]}) == 4
    rows = [r for rs in per_example for r in rs]
    owner = [j for j, rs in enumerate(per_example) for _ in rs]
    with torch.no_grad():
        lm, hits, ul, ln, n_candidate = losses.label_set_terms(model, rows, owner, torch.device("cpu"), target_logits)
    want = reference_terms(model, per_example)
    assert (lm.item(), ul.item(), ln.item()) == pytest.approx(want, rel=1e-4)
    assert n_candidate == sum(losses.completion_span(r)[1] - losses.completion_span(r)[0]
                              for rs in per_example for r in rs[1:])


def test_candidates_are_a_seeded_sample_when_there_are_many_labels(tok_model):
    tok, _ = tok_model
    many = [chat(f"item {i}", f"{i} {i}") for i in range(12)] * 2
    encoded = encode_examples(tok, many, parse_config({"label_set_losses": True}))
    label_set = losses.label_set(encoded)
    draw = lambda step: [r["input_ids"] for r in losses.candidate_rows(encoded[0], label_set, losses.step_rng(0, step))]  # noqa: E731
    assert len(draw(1)) == 1 + losses.MAX_CANDIDATES
    assert draw(1) == draw(1) and draw(1) != draw(2)  # a replayed step scores the same wrong labels


@pytest.mark.parametrize("data, why", [
    ([chat(f"q {i}", f"answer {i}") for i in range(6)], "distinct answers"),
    ([chat("q", "same")] * 6, "same answer"),
    ([chat("q", " ".join(["the quick brown fox"] * 20))] * 2 + [chat("r", "x")] * 2, "token answer"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "100"},
                    {"role": "user", "content": "b"}, {"role": "assistant", "content": "fine"}]}] * 4, "answer span"),
])
def test_data_that_is_not_a_label_set_is_refused_naming_the_field(tmp_path, base, data, why):
    with pytest.raises(GraftError) as err:
        train({"label_set_losses": True, "max_steps": 1}, base, data, None, tmp_path)
    assert err.value.param == "label_set_losses" and why in str(err.value)


def test_continued_pretraining_is_refused():
    with pytest.raises(GraftError) as err:
        parse_config({"label_set_losses": True, "task_type": "CONTINUED_PRETRAIN"})
    assert err.value.param == "label_set_losses"


def held_out_terms(model_dir, base, data) -> tuple[float, float]:
    """(unlikelihood per wrong-label token, length-normalised loss per example) of a trained adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    encoded = encode_examples(AutoTokenizer.from_pretrained(base), data, parse_config({}))
    label_set = losses.label_set(encoded)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), model_dir).eval()
    per_example = [losses.candidate_rows(e, label_set, losses.step_rng(0, 1)) for e in encoded]
    rows = [r for rs in per_example for r in rs]
    owner = [j for j, rs in enumerate(per_example) for _ in rs]
    with torch.no_grad():
        _, _, ul, ln, n_candidate = losses.label_set_terms(model, rows, owner, torch.device("cpu"), target_logits)
    return ul.item() / n_candidate, ln.item() / len(encoded)


def test_label_set_losses_train_wrong_labels_down(tmp_path, base):
    """Same data, seed and steps with and without the option: with it, the wrong labels end less likely
    (unlikelihood) and the right one ranks higher among the labels (length-normalised loss)."""
    events, data = [], labelled(16)
    hp = {"max_steps": 12, "batch_size": 8, "learning_rate": 3e-3, "seed": 0}
    with_losses = train({**hp, "label_set_losses": True}, base, data, data[:8], tmp_path / "on", on_event=events.append)
    plain = train(hp, base, data, data[:8], tmp_path / "off")
    (ul_on, ln_on), (ul_off, ln_off) = (held_out_terms(r.model_dir, base, data) for r in (with_losses, plain))
    assert ul_on < ul_off and ln_on < ln_off
    said = [e["message"] for e in events if e["type"] == "message"]
    assert any(m.startswith("label_set_losses: unlikelihood and length-normalised losses over 4 labels") for m in said)
    steps = [e["data"] for e in events if e["type"] == "metrics"]
    assert all("train_unlikelihood_loss" in d and "train_length_normalized_loss" in d for d in steps)
    assert steps[-1]["train_length_normalized_loss"] < steps[0]["train_length_normalized_loss"]
    assert steps[-1]["train_loss"] < steps[0]["train_loss"]  # the reference answer's cross-entropy still trains
    assert with_losses.run_info["config"]["label_set_losses"] is True
    # billed tokens are the training examples' (12 steps x 8 = 6 epochs of 16), not the scored candidates'
    assert with_losses.trained_tokens == plain.trained_tokens
