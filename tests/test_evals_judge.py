"""LLM-as-judge with stub judges: score parsing, position-bias cancelling, calibration."""

from __future__ import annotations

import re

import pytest

from graftlm.evals.judge import (calibrate, judge_pairwise, judge_pointwise, parse_score, parse_verdict,
                                 win_rate)


def longer_wins(prompts):
    """A fair stub judge: prefers the longer answer, whatever its position."""
    out = []
    for p in prompts:
        text = p[-1]["content"]
        a = re.search(r"ANSWER A: (.*)\n", text).group(1)
        b = re.search(r"ANSWER B: (.*)\n", text).group(1)
        out.append("Verdict: tie" if len(a) == len(b) else f"Verdict: {'A' if len(a) > len(b) else 'B'}")
    return out


def always_a(prompts):
    return ["I think Answer A is better." for _ in prompts]


ITEMS = [{"question": "q1", "a": "short", "b": "a much longer answer"},
         {"question": "q2", "a": "a long detailed answer", "b": "tiny"},
         {"question": "q3", "a": "same", "b": "same"}]


def test_swapping_candidates_mirrors_the_verdict():
    direct = judge_pairwise(ITEMS, longer_wins)
    swapped = judge_pairwise([{**it, "a": it["b"], "b": it["a"]} for it in ITEMS], longer_wins)
    mirror = {"A": "B", "B": "A", "tie": "tie"}
    assert [v["winner"] for v in direct] == ["B", "A", "tie"]
    assert [v["winner"] for v in swapped] == [mirror[v["winner"]] for v in direct]
    assert all(v["consistent"] for v in direct)


def test_position_bias_becomes_a_tie():
    verdicts = judge_pairwise(ITEMS, always_a)
    assert [v["winner"] for v in verdicts] == ["tie"] * 3
    assert not any(v["consistent"] for v in verdicts)
    assert win_rate(verdicts)["position_consistency"] == 0.0


@pytest.mark.parametrize("text,expected", [
    ("Score: 4. Mostly right.", 4), ("I'd give it 3/5", 3), ("**Rating:** 5", 5), ("score = 2", 2),
    ("The answer is good. 4", 4), ("Score: 9", None), ("no idea", None), ("Score: 4.6", 5),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Verdict: B", "B"), ("verdict: **a**", "A"), ("It's a tie.", "tie"), ("Answer B is better", "B"),
    ("B", "B"), ("hmm", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_pointwise_with_a_stub_and_with_the_tiny_model(varied_model_dir):
    items = [{"question": "2+2?", "answer": "4", "reference": "4"}, {"question": "2+2?", "answer": "5"}]
    scored = judge_pointwise(items, lambda ps: ["Score: 5" if "ANSWER: 4" in p[0]["content"] else "Score: 1"
                                                for p in ps])
    assert [s["score"] for s in scored] == [5, 1]
    from graftlm.models.catalog import import_model

    import_model(varied_model_dir, "judge")
    real = judge_pointwise(items, "judge")  # gibberish from a random model: parsed or None, never an error
    assert all(s["score"] is None or 1 <= s["score"] <= 5 for s in real)


def test_calibration_agreement_and_warning():
    human = [1, 2, 3, 4, 5, 5, 4, 3, 2, 1]
    good = calibrate(human, human)
    assert good["kappa"] == 1.0 and good["accuracy"] == 1.0 and good["warning"] is None
    assert good["linear"]["slope"] == pytest.approx(1.0) and good["isotonic"][3] == pytest.approx(3.0)
    shifted = calibrate([min(5, h + 1) for h in human], human)  # a lenient judge: one point too high
    assert shifted["warning"] and shifted["kappa"] < 0.4
    assert shifted["isotonic"][5] < 5  # the mapping pulls lenient scores down
    with_none = calibrate([None, 3, 4], [1, 3, 4])
    assert with_none["unparsed"] == 1 and with_none["n"] == 2
