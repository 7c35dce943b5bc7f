"""Token statistics against the tokenizer itself; the 80:20 split; loading and hashing datasets."""

from __future__ import annotations

import hashlib
import math

import orjson
import pytest

from graftlm.data.split import dataset_hash, load_examples, split_examples, split_indices
from graftlm.data.validate import validate_file
from graftlm.errors import GraftError
from graftlm.testing.models import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "system", "content": "answer"}, {"role": "user", "content": user},
                         {"role": "assistant", "content": answer}]}


RECORDS = [chat("what is my account balance " * k, "balance " * (1 + k % 3)) for k in range(1, 21)]


def write(tmp_path, records, name="d.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


def test_token_stats_match_the_tokenizer(tmp_path, tokenizer):
    report = validate_file(write(tmp_path, RECORDS), tokenizer=tokenizer, context_length=60, epochs=2)
    lengths = sorted(len(tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False),
                                   add_special_tokens=False)["input_ids"]) for r in RECORDS)
    trainable = sum(len(tokenizer(r["messages"][2]["content"], add_special_tokens=False)["input_ids"]) + 1
                    for r in RECORDS)  # the answer plus its <|im_end|>
    tokens = report["stats"]["tokens"]
    assert report["valid"]
    assert (tokens["min"], tokens["max"], tokens["total"]) == (lengths[0], lengths[-1], sum(lengths))
    assert tokens["mean"] == round(sum(lengths) / len(lengths), 2)
    assert tokens["p95"] == lengths[math.ceil(0.95 * len(lengths)) - 1]
    assert tokens["trainable_total"] == trainable
    assert tokens["over_context_length"] == sum(n > 60 for n in lengths) > 0
    assert tokens["truncation"] == "right" and tokens["context_length"] == 60
    assert tokens["total_after_truncation"] == sum(min(n, 60) for n in lengths)
    assert report["stats"]["estimated_training_tokens"] == 2 * tokens["total_after_truncation"]


def test_examples_whose_answer_is_cut_off_are_counted(tmp_path, tokenizer):
    long_prompt = chat("what is my account balance " * 30, "balance")
    report = validate_file(write(tmp_path, [long_prompt, RECORDS[0]]), tokenizer=tokenizer, context_length=40)
    assert report["stats"]["tokens"]["over_context_length"] == 1
    assert report["stats"]["tokens"]["no_trainable_tokens_after_truncation"] == 1


def test_without_tokenizer_there_are_no_token_stats(tmp_path):
    report = validate_file(write(tmp_path, RECORDS))
    assert report["stats"]["tokens"] is None and report["stats"]["estimated_training_tokens"] is None
    assert report["stats"]["examples"] == 20


def test_text_format_counts_every_token_plus_eos(tmp_path, tokenizer):
    records = [{"text": "the quick brown fox"}, {"text": "hello how are you"}]
    report = validate_file(write(tmp_path, records), tokenizer=tokenizer)
    direct = [len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) + 1 for r in records]
    assert report["stats"]["tokens"]["total"] == report["stats"]["tokens"]["trainable_total"] == sum(direct)


def test_invalid_lines_are_not_tokenized(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_bytes(orjson.dumps(RECORDS[0]) + b"\n{bad\n")
    report = validate_file(str(path), tokenizer=tokenizer)
    assert report["stats"]["tokens"]["examples"] == 1 and report["error_count"] == 1


@pytest.mark.parametrize("n", [0, 1, 2, 5, 10, 101, 1000])
def test_split_is_disjoint_covering_and_80_20(n):
    train, validation = split_indices(n, seed=7)
    assert sorted(train + validation) == list(range(n))
    assert not set(train) & set(validation)
    if n >= 2:
        assert len(validation) == max(1, round(n * 0.2))


def test_split_is_deterministic_in_the_seed():
    assert split_indices(500, seed=1) == split_indices(500, seed=1)
    assert split_indices(500, seed=1) != split_indices(500, seed=2)
    # pinned: a change here silently changes every user's validation split
    assert split_indices(10, seed=0) == ([0, 1, 2, 3, 4, 5, 6, 9], [7, 8])


def test_split_examples_keeps_order_within_parts():
    items = [f"e{i}" for i in range(50)]
    train, validation = split_examples(items, seed=3)
    assert len(train) == 40 and len(validation) == 10
    assert train == sorted(train, key=items.index) and validation == sorted(validation, key=items.index)


def test_split_rejects_a_bad_fraction():
    with pytest.raises(GraftError):
        split_indices(10, seed=0, validation_fraction=1.0)


def test_load_examples_normalizes(tmp_path):
    fmt, examples = load_examples(write(tmp_path, [{"prompt": "2+2=", "completion": "4"}]))
    assert fmt == "prompt_completion"
    assert examples == [{"messages": [{"role": "user", "content": "2+2=", "weight": 0},
                                      {"role": "assistant", "content": "4", "weight": 1}]}]


def test_load_examples_refuses_a_bad_file_naming_the_line(tmp_path):
    with pytest.raises(GraftError, match=r"line 2, messages\[1\].role: two user messages"):
        load_examples(write(tmp_path, [RECORDS[0], {"messages": [{"role": "user", "content": "a"}] * 2}]))


def test_dataset_hash_is_sha256_of_the_bytes(tmp_path):
    path = write(tmp_path, RECORDS)
    assert dataset_hash(path) == hashlib.sha256(open(path, "rb").read()).hexdigest()
