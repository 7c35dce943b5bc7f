"""Evaluations: scorers, bootstrap CIs, an eval runner, LLM-as-judge, forgetting checks, failure
clusters, the customization ladder and synthetic data."""

from graftlm.evals.scorers import SCORERS, score
from graftlm.evals.stats import accuracy, bootstrap_ci, cohen_kappa

__all__ = ["SCORERS", "accuracy", "bootstrap_ci", "cohen_kappa", "score"]
