"""LLM-as-judge: pointwise 1–5 rubric scores and pairwise A/B verdicts judged in both orders.

A judge is any model id (base or custom) or a function ``judge_fn(list_of_messages) -> list_of_texts``
(tests and remote judges). Scores are parsed leniently; an unparseable answer scores None, never a guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from graftlm.errors import GraftError
from graftlm.evals.stats import accuracy, cohen_kappa

JudgeFn = Callable[[list[list[dict]]], list[str]]
JUDGE_PREFIX = "judge:"  # the scorer name "judge:<model>"

POINTWISE_RUBRIC = """You are a strict grader. Rate the ANSWER to the QUESTION on a 1-5 scale:
5 = correct, complete and grounded in the reference; 4 = correct with minor omissions;
3 = partly correct; 2 = mostly wrong; 1 = wrong, off-topic or empty.
QUESTION: {question}
{reference_block}ANSWER: {answer}
Reply with "Score: <1-5>" and one short sentence of reasons."""

PAIRWISE_RUBRIC = """You are a strict grader. Which answer to the QUESTION is better (correct, helpful, concise)?
QUESTION: {question}
{reference_block}ANSWER A: {a}
ANSWER B: {b}
Reply with "Verdict: A", "Verdict: B" or "Verdict: tie"."""


def judge_model_of(name: str) -> str | None:
    """``"judge:<model>"`` -> ``"<model>"``; None for any other scorer name."""
    return name[len(JUDGE_PREFIX):] if name.startswith(JUDGE_PREFIX) else None


def model_judge(model: str, *, max_tokens: int = 48) -> JudgeFn:
    from graftlm.inference.service import chat_batch

    return lambda prompts: [o["text"] for o in chat_batch([(model, p) for p in prompts], max_tokens=max_tokens)]


def _judge_fn(judge: str | JudgeFn) -> JudgeFn:
    return model_judge(judge) if isinstance(judge, str) else judge


def parse_score(text: str, lo: int = 1, hi: int = 5) -> int | None:
    """'Score: 4', '4/5', 'rating of 4', '**4**' → 4; the first labelled score wins, else the first lone
    number in range; None when nothing fits."""
    text = str(text)
    for pat in (r"(?:score|rating|grade)\s*(?:is|of|[:=])?\s*\**\s*(\d+(?:\.\d+)?)", r"(\d+(?:\.\d+)?)\s*/\s*" + str(hi),
                r"(?<![\d.])(\d)(?![\d.])"):
        for m in re.finditer(pat, text, flags=re.I):
            value = float(m.group(1))
            if lo <= value <= hi:
                return int(round(value))
    return None


def parse_verdict(text: str) -> str | None:
    """'Verdict: A' / 'Answer B is better' / 'tie' → "A" | "B" | "tie"; None when unclear."""
    text = str(text)
    m = re.search(r"verdict\s*[:=]?\s*\**\s*(A|B|tie)\b", text, flags=re.I)
    if m:
        v = m.group(1)
        return "tie" if v.lower() == "tie" else v.upper()
    if re.search(r"\b(tie|equal(ly)?|both)\b", text, flags=re.I):
        return "tie"
    found = set(re.findall(r"\b(?i:answer|response|option)\s+([AB])\b", text))
    if len(found) == 1:
        return found.pop()
    stripped = text.strip().strip("*.:() ").upper()
    return stripped if stripped in ("A", "B") else None


def _ref_block(item: dict) -> str:
    return f"REFERENCE: {item['reference']}\n" if item.get("reference") else ""


def judge_pointwise(items: list[dict], judge: str | JudgeFn, *, rubric: str = POINTWISE_RUBRIC) -> list[dict]:
    """items: [{"question", "answer", "reference"?}] → [{"score": 1..5 | None, "raw"}]."""
    prompts = [[{"role": "user", "content": rubric.format(question=it["question"], answer=it["answer"],
                                                          reference_block=_ref_block(it))}] for it in items]
    return [{"score": parse_score(t), "raw": t} for t in _judge_fn(judge)(prompts)]


_MIRROR = {"A": "B", "B": "A", "tie": "tie", None: None}


def judge_pairwise(items: list[dict], judge: str | JudgeFn, *, rubric: str = PAIRWISE_RUBRIC) -> list[dict]:
    """items: [{"question", "a", "b", "reference"?}] → [{"winner": "A"|"B"|"tie", "verdicts", "consistent"}].

    Each pair is judged as (a, b) and as (b, a); the swapped verdict is mirrored back. A winner needs
    both orders to agree; disagreement (position bias) or an unparseable verdict is a tie.
    """
    def prompt(it, x, y):
        return [{"role": "user", "content": rubric.format(question=it["question"], a=x, b=y,
                                                          reference_block=_ref_block(it))}]

    prompts = [p for it in items for p in (prompt(it, it["a"], it["b"]), prompt(it, it["b"], it["a"]))]
    texts = _judge_fn(judge)(prompts)
    out = []
    for i in range(len(items)):
        first, second = parse_verdict(texts[2 * i]), _MIRROR[parse_verdict(texts[2 * i + 1])]
        consistent = first == second and first is not None
        out.append({"winner": first if consistent else "tie", "verdicts": [first, second], "consistent": consistent,
                    "raw": texts[2 * i:2 * i + 2]})
    return out


def win_rate(verdicts: list[dict]) -> dict:
    n = len(verdicts) or 1
    counts = {w: sum(v["winner"] == w for v in verdicts) for w in ("A", "B", "tie")}
    return {**counts, "b_win_rate": (counts["B"] + 0.5 * counts["tie"]) / n,
            "position_consistency": sum(v["consistent"] for v in verdicts) / n}


def calibrate(judge_scores: list, human_scores: list, *, kappa_warning: float = 0.4) -> dict:
    """Agreement of judge and human labels on a labelled subset, and a judge→human mapping.

    Returns {"n", "kappa", "accuracy", "linear": {"slope", "intercept"}, "isotonic": {judge score: human},
    "warning"}; pairs where the judge gave no score are left out (and counted in "unparsed").
    """
    from sklearn.isotonic import IsotonicRegression

    pairs = [(j, h) for j, h in zip(judge_scores, human_scores) if j is not None]
    if len(pairs) < 2:
        raise ValueError("calibration needs at least two judged, human-labelled examples")
    j, h = np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs], float)
    kappa = cohen_kappa(j.tolist(), h.tolist())
    slope, intercept = np.polyfit(j, h, 1) if len(set(j)) > 1 else (0.0, float(h.mean()))
    iso = IsotonicRegression(out_of_bounds="clip").fit(j, h)
    grid = sorted(set(j.tolist()) | set(range(int(min(j.min(), h.min())), int(max(j.max(), h.max())) + 1)))
    warning = None
    if kappa < kappa_warning:
        warning = (f"judge/human agreement is low (Cohen's kappa {kappa:.2f} < {kappa_warning}): "
                   "do not trust this judge's scores without changing the judge model or rubric")
    return {"n": len(pairs), "unparsed": len(judge_scores) - len(pairs), "kappa": kappa,
            "accuracy": accuracy(j.tolist(), h.tolist()),
            "linear": {"slope": float(slope), "intercept": float(intercept)},
            "isotonic": {int(g): float(iso.predict([g])[0]) for g in grid}, "warning": warning}


# stored runs scored with judge:<model> ------------------------------------------------------------------

def judge_scorer(run: dict, scorer: str | None = None) -> str:
    """The run's ``judge:<model>`` scorer: ``scorer`` when given (the run must have it), else its first one."""
    listed = ", ".join(run["scorers"])
    if scorer is None:
        judged = [s for s in run["scorers"] if judge_model_of(s) is not None]
        if not judged:
            raise GraftError(f"run {run['id']} was not scored by an LLM judge (scorers: {listed}); "
                             "run the eval with --scorer judge:<model>", param="scorer")
        return judged[0]
    if scorer not in run["scorers"]:
        raise GraftError(f"run {run['id']} has no scorer {scorer!r}; its scorers: {listed}", param="scorer")
    if judge_model_of(scorer) is None:
        raise GraftError(f"scorer {scorer!r} is not an LLM judge; use a judge:<model> scorer", param="scorer")
    return scorer


def judge_grades(run: dict, scorer: str) -> dict[str, int]:
    """Example id → the judge's 1–5 grade, from the stored score (grade − 1) / 4.

    The stored score cannot tell an unparseable grade (stored as 0) from a 1; both come back as 1."""
    return {str(r["id"]): int(round(1 + 4 * r["scores"][scorer])) for r in run["results"]}


def load_human_labels(path) -> dict[str, float]:
    """JSONL of {"id": example id, "score": human grade on the judge's 1–5 scale} → {id: score}."""
    path, labels = Path(path), {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise GraftError(f"{where}: invalid JSON: {e.msg}", param="labels") from e
        score = row.get("score") if isinstance(row, dict) else None
        if not isinstance(row, dict) or "id" not in row:
            raise GraftError(f"{where}: expected {{\"id\": <example id>, \"score\": <1-5>}}", param="labels")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 1 <= score <= 5:
            raise GraftError(f"{where}: \"score\" must be a number from 1 to 5 (the judge's scale)", param="labels")
        labels[str(row["id"])] = float(score)
    if not labels:
        raise GraftError(f"{path.name}: no labels", param="labels")
    return labels


def calibrate_run(run: dict, labels: dict[str, float], *, scorer: str | None = None,
                  kappa_warning: float = 0.4) -> dict:
    """``calibrate`` the run's judge grades against human labels matched by example id."""
    scorer = judge_scorer(run, scorer)
    grades = judge_grades(run, scorer)
    shared = [i for i in labels if i in grades]
    if len(shared) < 2:
        raise GraftError(f"only {len(shared)} labelled example id(s) are in run {run['id']}; calibration needs "
                         f"at least two (label ids must be the eval set's example ids)", param="labels")
    report = calibrate([grades[i] for i in shared], [labels[i] for i in shared], kappa_warning=kappa_warning)
    return {"run": run["id"], "scorer": scorer, "labels_not_in_run": len(labels) - len(shared), **report}
