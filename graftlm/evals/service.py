"""Eval definitions and runs as the REST API and the SDK see them (one place for the checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from graftlm.errors import GraftError
from graftlm.evals import store
from graftlm.evals.scorers import check_scorer
from graftlm.schema import StrictModel

class RunOptions(StrictModel):
    """How to run an eval: the one schema for POST /v1/evals/{id}/runs, fm.evals.run and run_defined_eval."""
    field_kind = "run option"
    strategy: Literal["zero-shot", "few-shot", "rag"] = "zero-shot"
    k: int = Field(4, ge=0, description="shots (few-shot) or passages (rag)")
    train_path: str | None = None
    kb_id: str | None = None
    max_examples: int | None = Field(None, ge=1)
    max_tokens: int = Field(32, ge=1)
    failures: bool = False  # cluster the failed examples and store the clusters with the run


def define_eval(name: str, data_path: str, scorers: list[str] | None = None, *,
                description: str | None = None) -> dict:
    """Store an eval definition after checking its data file exists and every scorer is known."""
    if not Path(data_path).exists():
        raise GraftError(f"{data_path} does not exist", param="data_path")
    scorers = list(scorers or ["label_accuracy"])
    for name_ in scorers:
        check_scorer(name_)
    return store.create_eval(name, data_path, scorers, description=description)


def run_summary(run: dict) -> dict:
    """A run without its per-example results."""
    return {k: v for k, v in run.items() if k != "results"}


def run_defined_eval(eval_id: str, model: str, **options) -> dict:
    """Run a stored eval now (blocking); returns the run summary. ``options``: RunOptions fields."""
    from graftlm.evals.run import run_eval

    opts = RunOptions.parse(options)
    ev = store.get_eval(eval_id)
    return run_summary(run_eval(model, ev["data_path"], scorers=ev["scorers"], eval_id=eval_id, **opts.model_dump()))
