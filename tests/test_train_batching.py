"""Packing, label masking, step counting and accumulation."""

import pytest
import torch

from graftlm.data.render import encode_example
from graftlm.testing.models import build_tiny_llama
from graftlm.train.batching import (IGNORE_INDEX, epoch_order, group_micro_batches, micro_batches, pack,
                                    step_examples, steps_per_epoch, target_count)
from graftlm.train.loop import target_loss

torch.set_num_threads(1)


def chat(q, a):
    return {"messages": [{"role": "system", "content": "be brief", "weight": 0},
                         {"role": "user", "content": q, "weight": 0},
                         {"role": "assistant", "content": a, "weight": 1}]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny"))
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_packed_loss_equals_alone(tiny):
    model, tok = tiny
    examples = [encode_example(tok, chat(q, a)) for q, a in
                [("hello", "i am fine thank you"), ("book a flight", "to paris"), ("balance", "100")]]
    with torch.no_grad():
        alone = [target_loss(model, pack([e]), "cpu")[0].item() for e in examples]
        packed = target_loss(model, pack(examples), "cpu")[0].item()
        # and the HF reference: mean loss of each example on its own
        ref = [model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss.item()
               * target_count(e) for e in examples]
    assert packed == pytest.approx(sum(alone), rel=1e-5)
    assert alone == pytest.approx(ref, rel=1e-4)
    # the last example, whose tokens could attend to the first two if isolation failed
    with torch.no_grad():
        two = target_loss(model, pack(examples[:2]), "cpu")[0].item()
    assert packed - two == pytest.approx(alone[2], rel=1e-4)


def test_labels_only_on_assistant_tokens_and_never_across_examples(tiny):
    _, tok = tiny
    e1, e2 = encode_example(tok, chat("hello", "fine")), encode_example(tok, chat("what", "paris"))
    learned = [t for t in e1["labels"] if t != IGNORE_INDEX]
    assert tok.decode(learned) == "fine<|im_end|>"
    row = pack([e1, e2])
    targets = row["targets"][0].tolist()
    n1 = len(e1["input_ids"])
    assert targets[n1 - 1] == IGNORE_INDEX  # last token of example 1 predicts nothing
    assert row["position_ids"][0, n1].item() == 0
    assert sum(t != IGNORE_INDEX for t in targets) == target_count(e1) + target_count(e2)
    text = encode_example(tok, {"text": "the quick brown fox"})
    assert text["labels"] == text["input_ids"]


def test_steps_count_examples_and_orders_are_seeded():
    assert steps_per_epoch(10, 4) == 3
    seen = [i for s in range(3) for i in step_examples(10, 4, seed=7, step=s)[1]]
    assert sorted(seen) == list(range(10))
    assert step_examples(10, 4, seed=7, step=3) == (1, epoch_order(10, 7, 1)[:4])
    assert epoch_order(10, 7, 0) == epoch_order(10, 7, 0) != epoch_order(10, 8, 0)


def test_micro_batches_respect_token_budget():
    examples = [{"input_ids": [1] * n, "labels": [1] * n} for n in (5, 5, 5, 12, 3)]
    groups = group_micro_batches(examples, max_tokens=10)
    assert [[len(e["input_ids"]) for e in g] for g in groups] == [[5, 5], [5], [12], [3]]
    assert len(group_micro_batches(examples, max_tokens=100, max_examples=2)) == 3
    assert sum(b["input_ids"].shape[1] for b in micro_batches(examples, 10, packed=True)) == 30
    padded = micro_batches(examples, 15)
    assert [tuple(b["input_ids"].shape) for b in padded] == [(1, 12), (3, 5), (1, 3)]
    assert sum(b["n_tokens"] for b in padded) == 30


def test_padded_rows_give_the_same_loss_as_alone(tiny):
    model, tok = tiny
    examples = [encode_example(tok, chat(q, a)) for q, a in
                [("hello", "i am fine thank you"), ("book a flight to paris please", "ok"), ("balance", "100")]]
    with torch.no_grad():
        alone = sum(target_loss(model, pack([e]), "cpu")[0].item() for e in examples)
        padded = sum(target_loss(model, b, "cpu")[0].item() for b in micro_batches(examples, 10_000))
    assert padded == pytest.approx(alone, rel=1e-5)


def test_training_prompt_equals_the_serving_prompt_token_for_token(tiny):
    from graftlm.data.render import render_prompt
    from graftlm.train.config import parse_config
    from graftlm.train.loop import encode_examples

    _, tok = tiny  # loaded from the saved model directory, as training and the serve engine both do
    messages = [{"role": "system", "content": "be brief", "weight": 0},
                {"role": "user", "content": "hello how are you", "weight": 0},
                {"role": "assistant", "content": "i am fine thank you", "weight": 0},
                {"role": "user", "content": "book a flight to paris", "weight": 0},
                {"role": "assistant", "content": " paris, 100\nok", "weight": 1}]
    (train_ex,) = encode_examples(tok, [{"messages": messages}], parse_config({}))
    served = render_prompt(tok, [{"role": m["role"], "content": m["content"]} for m in messages[:-1]])
    ids, labels = train_ex["input_ids"], train_ex["labels"]
    first_label = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    assert first_label == len(served)  # the final completion starts right where the served prompt ends
    assert ids[:first_label] == served
    learned = [t for t in labels if t != IGNORE_INDEX]
    assert learned[-1] == tok.eos_token_id
    assert tok.decode(learned) == " paris, 100\nok<|im_end|>"
