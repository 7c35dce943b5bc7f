"""The bundled CLINC150 sample is valid, balanced, held out, and carries its license."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from graftlm.data.validate import validate_file

HERE = Path(__file__).resolve().parents[1] / "examples" / "clinc150"


def labelled(name: str) -> list[tuple[str, str]]:
    rows = [json.loads(line)["messages"] for line in (HERE / name).read_text().splitlines()]
    return [(m[1]["content"], m[2]["content"]) for m in rows]


def test_sample_dataset_is_valid_balanced_and_held_out():
    for name, per_intent in (("train.jsonl", 25), ("test.jsonl", 10)):
        report = validate_file(HERE / name)
        assert report["valid"] and report["format"] == "chat", report["errors"]
        assert report["stats"]["duplicates"] == 0
        counts = Counter(label for _, label in labelled(name))
        assert len(counts) == 8 and set(counts.values()) == {per_intent}
    train_queries = {q for q, _ in labelled("train.jsonl")}
    assert not train_queries & {q for q, _ in labelled("test.jsonl")}


def test_every_label_is_listed_in_the_system_prompt():
    first = json.loads((HERE / "train.jsonl").read_text().splitlines()[0])["messages"][0]["content"]
    assert all(label in first for _, label in labelled("train.jsonl"))


def test_license_and_attribution_ship_with_the_data():
    assert "Attribution 3.0 Unported" in (HERE / "LICENSE").read_text()
    readme = (HERE / "README.md").read_text()
    assert "Larson et al., 2019" in readme and "CC BY 3.0" in readme
