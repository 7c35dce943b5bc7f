"""``defaults: "auto"``: epochs, batch size and learning rate chosen from the dataset and the model.

The rule (deterministic: the same dataset, method and model give the same picks; explicit values win):

- epochs: 4 below 300 training examples, else 3 (OCI's default, what auto replaces), so a run costs at
  most 4/3 of OCI's default run (a step's compute is proportional to its examples); a run sees at least
  400 examples (more epochs below 100 examples, at most 10); above 10,000 examples fewer than 3, so that
  a run sees at most 30,000 examples.
- batch size: the largest power of two, from 2 to 16, that still gives about 100 optimizer steps over those
  epochs (100 examples: batch 4; 200: 8; 1,000: 16). Small sets get more steps from smaller batches
  instead of more epochs: the previous rule (batch 4/8/16, epochs for ~100 steps) trained 8 epochs at
  100 examples, 2.7x OCI's cost. bench/auto_rule.py measures the trade on a tiny model (README).
- learning rate: the method's base x min(1, 576 / hidden_size) x sqrt(batch / 8) above batch 8 (the
  base at and below 8), times ``learning_rate_multiplier`` when given. The LoRA and T-Few bases come
  from runs on SmolLM2-135M (hidden 576, fp32 CPU) on the CLINC150 banking slice (LoRA at 2e-3: 0.887
  exact label accuracy, at OCI's 2e-4: 0.725; T-Few at 1e-2: 0.838), checked on held-out travel intents
  by bench/quality.py (README). Vanilla's 5e-5 is a common full fine-tuning rate for small models, not
  yet measured here. Wider models get proportionally smaller rates (the usual width scaling), larger
  batches sqrt-scaled ones.
- no learning-rate probe: the picks cost nothing beyond the run itself.

Training-set statistics (examples, target tokens, distinct completions) are reported with the picks.
"""

from __future__ import annotations

import math

from graftlm.train.batching import IGNORE_INDEX, target_count
from graftlm.train.config import AUTO_BASE_LEARNING_RATE, FineTuneConfig
REFERENCE_HIDDEN = 576  # SmolLM2-135M, where the bases were measured
OCI_EPOCHS = 3  # what auto replaces: OCI's default run is 3 epochs
SMALL_SET = 300  # below this many examples, one more epoch than OCI (cost 4/3 of its run)
MIN_EXAMPLES_SEEN = 400  # a run sees at least this many examples (only matters below 100 examples)
MAX_EPOCHS = 10
MAX_EXAMPLES_SEEN = 30_000
TARGET_STEPS = 100  # the batch size is chosen for about this many optimizer steps
MIN_BATCH, MAX_BATCH = 2, 16


def dataset_stats(encoded: list[dict]) -> dict:
    """examples, target tokens and distinct completions (target token sequences) of an encoded split."""
    completions = {tuple(t for t in ex["labels"][1:] if t != IGNORE_INDEX) for ex in encoded}
    targets = sum(target_count(ex) for ex in encoded)
    return {"examples": len(encoded), "target_tokens": targets, "distinct_completions": len(completions),
            "mean_target_tokens": round(targets / max(len(encoded), 1), 2)}


def auto_epochs(n: int) -> int:
    """4 below 300 examples, else 3 (OCI's); at least 400 examples seen (<= 10 epochs); <= 30,000 seen."""
    n = max(n, 1)
    if n * OCI_EPOCHS > MAX_EXAMPLES_SEEN:
        return max(1, MAX_EXAMPLES_SEEN // n)
    epochs = OCI_EPOCHS + 1 if n < SMALL_SET else OCI_EPOCHS
    return min(MAX_EPOCHS, max(epochs, math.ceil(MIN_EXAMPLES_SEEN / n)))


def auto_batch_size(n: int, epochs: int) -> int:
    """The largest power of two that still gives about 100 optimizer steps, between 2 and 16."""
    per_step = max(epochs * n / TARGET_STEPS, 1)
    return min(MAX_BATCH, max(MIN_BATCH, 2 ** int(math.log2(per_step))))


def auto_learning_rate(method: str, hidden_size: int, batch: int) -> float:
    """The method's base x min(1, 576 / hidden) x sqrt(batch / 8) above batch 8 (the base below)."""
    width = min(1.0, REFERENCE_HIDDEN / hidden_size)
    return AUTO_BASE_LEARNING_RATE[method] * width * math.sqrt(max(batch, 8) / 8)


def resolve(cfg: FineTuneConfig, stats: dict, hidden_size: int) -> tuple[FineTuneConfig, dict]:
    """(a config with epochs, batch size and learning rate set, the auto picks with their reasons).

    The picks are empty for ``defaults: "oci"`` or when every value was given."""
    if cfg.resolved:
        return cfg, {}
    n, picks, update = stats["examples"], {}, {}
    epochs = cfg.total_training_epochs
    if epochs is None:
        epochs = update["total_training_epochs"] = auto_epochs(n)
        why = ("max_steps is given, so epochs do not count" if cfg.max_steps else
               f"{n} training examples: {OCI_EPOCHS + 1} below {SMALL_SET}, else {OCI_EPOCHS} (OCI's), "
               f"at least {MIN_EXAMPLES_SEEN} examples seen, at most {MAX_EPOCHS} epochs and "
               f"{MAX_EXAMPLES_SEEN:,} examples seen")
        picks["total_training_epochs"] = {"value": epochs, "why": why}
    batch = cfg.training_batch_size
    if batch is None:
        batch = update["training_batch_size"] = auto_batch_size(n, epochs)
        picks["training_batch_size"] = {"value": batch, "why": f"about {TARGET_STEPS} optimizer steps over "
                                        f"{epochs} epochs of {n} examples, a power of two from "
                                        f"{MIN_BATCH} to {MAX_BATCH}"}
    if cfg.learning_rate is None:
        base = AUTO_BASE_LEARNING_RATE[cfg.training_method]
        lr = auto_learning_rate(cfg.training_method, hidden_size, batch)
        why = (f"{cfg.training_method} base {base:g} x min(1, {REFERENCE_HIDDEN}/{hidden_size} hidden) "
               f"x sqrt(max({batch}, 8)/8 batch)")
        if isinstance(cfg.learning_rate_multiplier, float):
            lr *= cfg.learning_rate_multiplier
            why += f" x learning_rate_multiplier {cfg.learning_rate_multiplier:g}"
        update["learning_rate"] = float(f"{lr:.3g}")
        picks["learning_rate"] = {"value": update["learning_rate"], "why": why}
    return cfg.model_copy(update=update), {"picks": picks, "train_stats": stats, "hidden_size": hidden_size}


def describe(auto: dict) -> str:
    """One line for the job's events: what auto chose and why."""
    parts = [f"{name} {p['value']:g} ({p['why']})" for name, p in auto["picks"].items()]
    return "auto hyperparameters: " + "; ".join(parts)
