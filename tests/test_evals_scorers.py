"""Each scorer against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from graftlm.evals import scorers as S


def test_exact_and_normalized_match():
    assert S.exact_match(" Paris\n", "Paris") == 1.0
    assert S.exact_match("paris", "Paris") == 0.0
    assert S.normalized_match("  PARIS! ", "paris") == 1.0
    assert S.normalized_match("New-York", "new york") == 1.0
    assert S.normalized_match("Paris, France", "paris") == 0.0


@pytest.mark.parametrize("prediction,label,expected", [
    ("Balance.", "balance", 1.0),
    ("balance\nThe user asks about money.", "balance", 1.0),  # first line
    ("pay_bill is the intent", "pay_bill", 1.0),  # first word
    ("PAY BILL\nbecause", "pay bill", 1.0),  # a two-word label must be the whole first line
    ("pay the bill", "pay bill", 0.0),
    ("my balance", "balance", 0.0),  # the label later in the answer does not count
    ("", "balance", 0.0),
])
def test_label_accuracy(prediction, label, expected):
    assert S.label_accuracy(prediction, label) == expected


def test_contains():
    assert S.contains("The capital is Paris.", "paris") == 1.0
    assert S.contains("Parisian food", "paris") == 0.0


def test_token_f1():
    # pred {the, cat, sat}, ref {the, cat, sat, on, the, mat}: 3 common; P = 1, R = 1/2 -> F1 = 2/3
    assert S.token_f1("The cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert S.token_f1("dog", "cat") == 0.0
    assert S.token_f1("", "") == 1.0


def test_rouge_l():
    # LCS("the cat was found under the bed", "the cat was under the bed") = 6; P = 6/7, R = 1 -> F = 12/13
    assert S.rouge_l("the cat was found under the bed", "the cat was under the bed") == pytest.approx(12 / 13)
    assert S.rouge_l("a b c", "c b a") == pytest.approx(1 / 3)  # LCS 1, P = R = 1/3


def test_bleu():
    assert S.bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # 1-gram 5/5; 2-gram (3+1)/(4+1); 3-gram (2+1)/(3+1); 4-gram (1+1)/(2+1); BP = exp(1 - 6/5)
    expected = math.exp(1 - 6 / 5) * (1 * 0.8 * 0.75 * (2 / 3)) ** 0.25
    assert S.bleu("the cat sat on mat", "the cat sat on the mat") == pytest.approx(expected)
    assert S.bleu("dog", "the cat") == 0.0


def test_regex_and_json():
    assert S.regex_match("order #12345 shipped", r"#\d{5}\b") == 1.0
    assert S.regex_match("no order", r"#\d+") == 0.0
    assert S.json_valid('{"a": 1}') == 1.0
    assert S.json_valid('```json\n{"a": [1, 2]}\n```') == 1.0
    assert S.json_valid("{a: 1}") == 0.0
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    assert S.json_schema('{"a": 3}', schema) == 1.0
    assert S.json_schema('{"a": "3"}', schema) == 0.0
    assert S.json_schema('{"b": 3}', '{"type": "object", "required": ["a"]}') == 0.0
    assert S.json_schema("not json", schema) == 0.0


def test_embedding_similarity():
    same = S.embedding_similarity("How do I reset my PIN?", "How do I reset my PIN?")
    close = S.embedding_similarity("How do I reset my PIN?", "I want to change my card's PIN number")
    far = S.embedding_similarity("How do I reset my PIN?", "The weather in Lisbon is sunny")
    assert same == pytest.approx(1.0, abs=1e-5) and close > far


def test_score_batches_and_rejects_unknown():
    from graftlm.errors import GraftError

    assert S.score("normalized_match", ["A", "b"], ["a", "c"]) == [1.0, 0.0]
    with pytest.raises(GraftError):
        S.score("nope", ["a"], ["a"])


def test_judge_scorer_maps_grades_to_unit_range_and_sees_the_question():
    seen = []

    def stub(prompts):
        seen.extend(p[0]["content"] for p in prompts)
        return ["Score: 5", "Score: 1", "Score: 3", "no idea"]

    scores = S.score("judge:any", ["4", "5", "four", "?"], ["4"] * 4, questions=["2+2?"] * 4, judge=stub)
    assert scores == [1.0, 0.0, 0.5, 0.0]  # an unparseable grade counts as wrong
    assert "QUESTION: 2+2?" in seen[0] and "REFERENCE: 4" in seen[0] and "ANSWER: 5" in seen[1]


def test_judge_scorer_with_the_tiny_model_and_unknown_judges(varied_model_dir):
    from graftlm.errors import GraftError
    from graftlm.models.catalog import import_model

    import_model(varied_model_dir, "judge")
    S.check_scorer("judge:judge")
    scores = S.score("judge:judge", ["Paris", "London", ""], ["Paris"] * 3, questions=["Capital of France?"] * 3)
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    with pytest.raises(GraftError, match="unknown judge model 'nope'") as e:
        S.score("judge:nope", ["a"], ["a"])
    assert e.value.param == "scorers"
    with pytest.raises(GraftError, match="needs a model"):
        S.check_scorer("judge:")
    with pytest.raises(GraftError, match="judge:<model>"):  # the error for unknown names mentions judges
        S.check_scorer("jduge:judge")
