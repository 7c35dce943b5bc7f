"""Forgetting check: a small general-knowledge set, answered by the base model and by a custom model."""

from __future__ import annotations

from pathlib import Path

from graftlm.evals.run import compare_runs, run_eval

# Shipped inside the package (pyproject packages graftlm/resources/**), so installed copies have it too.
RESOURCES = Path(__file__).resolve().parents[1] / "resources" / "forgetting"
GENERAL_KNOWLEDGE = RESOURCES / "general_knowledge.jsonl"


def forgetting_check(custom_model: str, base_model: str | None = None, data: str | Path | None = None, *,
                     scorer: str = "contains", max_tokens: int = 32, tolerance: float = 0.05) -> dict:
    """Score base and custom model on the general-knowledge set. Returns {"before", "after", "change",
    "ci_low", "ci_high", "forgot"}: forgot when the paired drop is significant and larger than ``tolerance``."""
    from graftlm.models.catalog import base_model_of

    base_model = base_model or base_model_of(custom_model)["id"]
    data = data or GENERAL_KNOWLEDGE
    before = run_eval(base_model, data, scorers=[scorer], max_tokens=max_tokens, save=False)
    after = run_eval(custom_model, data, scorers=[scorer], max_tokens=max_tokens, save=False)
    diff = compare_runs(before, after, scorer)
    return {"base_model": base_model, "custom_model": custom_model, "data": str(data), "scorer": scorer,
            "n": diff["n"], "before": diff["a_mean"], "after": diff["b_mean"], "change": diff["diff"],
            "ci_low": diff["ci_low"], "ci_high": diff["ci_high"],
            "forgot": bool(diff["ci_high"] < 0 and -diff["diff"] > tolerance),
            "examples_lost": [r["question"] for r, q in zip(before["results"], after["results"])
                              if r["scores"][scorer] > q["scores"][scorer]]}
