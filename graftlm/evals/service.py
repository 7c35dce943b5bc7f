"""Eval definitions and runs as the REST API and the SDK see them (one place for the checks)."""

from __future__ import annotations

from pathlib import Path

from graftlm.errors import GraftError
from graftlm.evals import store
from graftlm.evals.scorers import check_scorer

RUN_OPTIONS = ("strategy", "k", "train_path", "kb_id", "max_examples", "max_tokens", "failures")


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


def check_run_options(options: dict) -> None:
    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise GraftError(f"unknown run option(s) {', '.join(unknown)}; known: {', '.join(RUN_OPTIONS)}")


def run_defined_eval(eval_id: str, model: str, **options) -> dict:
    """Run a stored eval now (blocking); returns the run summary. ``options``: see RUN_OPTIONS."""
    from graftlm.evals.run import run_eval

    check_run_options(options)
    ev = store.get_eval(eval_id)
    return run_summary(run_eval(model, ev["data_path"], scorers=ev["scorers"], eval_id=eval_id, **options))
