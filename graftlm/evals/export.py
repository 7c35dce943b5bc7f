"""Judge-scored eval runs as training data: the best answer per example as SFT chat JSONL, and best vs worst
answer (across runs over the same examples) as preference JSONL ({"prompt", "chosen", "rejected", "scores"}).

Runs must be scored with a ``judge:<model>`` scorer; its stored scores are mapped back to the judge's 1–5
grades (graftlm.evals.judge.judge_grades) and fed to graftlm.evals.synth.training_lines.
"""

from __future__ import annotations

from pathlib import Path

from graftlm.errors import GraftError
from graftlm.evals.judge import judge_grades, judge_scorer
from graftlm.evals.prompts import load_examples
from graftlm.evals.synth import training_lines, write_jsonl


def eval_prompts(run: dict) -> dict[str, list[dict]] | None:
    """Example id → prompt messages from the run's eval JSONL (system prompt included); None when the file
    is gone."""
    data = run.get("data")
    if not data or not Path(data).is_file():
        return None
    return {str(e["id"]): e["messages"] for e in load_examples(data)}


def scored_items(runs: list[dict], scorer: str | None = None) -> tuple[list[dict], dict]:
    """One item per example id, in first-run order: {"messages", "scored": [(grade, answer)] with one entry
    per distinct answer, "source"}; plus notes {"scorer", "prompts_from_questions"} for the report."""
    if not runs:
        raise GraftError("give at least one eval run id", param="runs")
    scorer = judge_scorer(runs[0], scorer)
    items: dict[str, dict] = {}
    fallback = 0
    for run in runs:
        judge_scorer(run, scorer)  # every run must carry the same judge
        grades, prompts = judge_grades(run, scorer), eval_prompts(run)
        fallback += prompts is None
        for r in run["results"]:
            key = str(r["id"])
            messages = (prompts or {}).get(key) or [{"role": "user", "content": r["question"]}]
            item = items.setdefault(key, {"messages": messages, "scored": [], "source": {"example_id": r["id"]}})
            if all(answer != r["prediction"] for _, answer in item["scored"]):
                item["scored"].append((grades[key], r["prediction"]))
    return list(items.values()), {"scorer": scorer, "prompts_from_questions": fallback}


def export_sft(runs: list[dict], out: str | Path, *, scorer: str | None = None, min_score: int = 4) -> dict:
    """Write the best answer of each example (judge grade ≥ ``min_score``) as chat JSONL to ``out``."""
    if not 1 <= min_score <= 5:
        raise GraftError("min_score must be from 1 to 5 (the judge's scale)", param="min_score")
    items, notes = scored_items(runs, scorer)
    sft, _ = training_lines(items, min_score=min_score)
    if not sft:
        raise GraftError(f"no answer was graded {min_score} or higher by {notes['scorer']}; nothing written "
                         "(lower --min-score to keep weaker answers)", param="min_score")
    write_jsonl(Path(out), sft)
    return {"path": str(out), "examples": len(items), "written": len(sft), "skipped": len(items) - len(sft), **notes}


def export_preferences(runs: list[dict], out: str | Path, *, scorer: str | None = None) -> dict:
    """Write chosen (best-graded) / rejected (worst-graded) answer pairs for examples whose answers differ in
    grade across ``runs`` (at least two runs over the same eval set)."""
    if len({r["id"] for r in runs}) < 2:
        raise GraftError("preference pairs compare answers from at least two different runs on the same "
                         "examples; give two or more run ids", param="runs")
    items, notes = scored_items(runs, scorer)
    _, pref = training_lines(items)
    if not pref:
        raise GraftError(f"no example has answers graded differently by {notes['scorer']} across these runs; "
                         "nothing written", param="runs")
    write_jsonl(Path(out), pref)
    return {"path": str(out), "examples": len(items), "written": len(pref), "skipped": len(items) - len(pref),
            **notes}
