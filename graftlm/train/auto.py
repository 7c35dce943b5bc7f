"""``defaults: "auto"``: epochs, batch size and learning rate chosen from the dataset and the model.

The rule (deterministic: the same dataset, method and model give the same picks; explicit values win):

- epochs: 4 below 300 training examples, else 3 (OCI's default, what auto replaces), so a run costs at
  most 4/3 of OCI's default run (a step's compute is proportional to its examples); a run sees at least
  400 examples (more epochs below 100 examples, at most 10); above 10,000 examples fewer than 3, so that
  a run sees at most 30,000 examples.
- batch size: the largest power of two, from 8 (OCI's batch) to 16, that still gives about 100 optimizer
  steps over those epochs (up to 533 examples: 8; 1,000: 16). With a batch of at least OCI's, a run makes
  at most 4/3 of OCI's steps, none dearer than OCI's, so from 100 examples up it costs at most 4/3 of OCI's
  default run in any measure. The previous rule went down to batch 2 to get ~100 steps on small sets:
  measured on SmolLM2-135M (bench/auto_cost.py, travel10, 1 torch thread, CPU seconds of the process), a
  4-example step cost 1.22x per example an 8-example one, so that rule's run projected to 1.63x OCI's
  (this rule's: 1.26x). Wall-clock ratios on the shared CPU moved from 0.45x to 1.9x between runs: they
  measured the other jobs, not the steps. Below 48 examples the ~100-step batch (2 or 4) stays: on the
  tiny proxy, 24 examples at batch 8 reached 0.32 exact match at 2x the rate, at batch 2 0.95; such runs
  see at most 400 examples (the cost of a 100-example run), more than OCI's 3 epochs of them anyway.
- learning rate: the method's base x min(1, 576 / hidden_size) x sqrt(batch / 8) x 100 / steps when the
  run makes fewer than 100 optimizer steps, the batch-and-steps factor at most 2, times
  ``learning_rate_multiplier`` when given. sqrt(batch / 8) is the square-root rule for Adam above OCI's
  batch; 100 / steps pays back, in rate, the steps the batch floor gives up on small sets (100 examples:
  52 steps, 1.92x); only a batch above the ~100-step one gets it (below 48 examples: none). Measured: on the tiny proxy (bench/auto_rule.py, 4 labels, 2 seeds) batch 8 at 48
  and 100 examples reached 0.69 / 0.53 exact match at the base rate, 0.91 / 0.73 at x sqrt(2) and 1.00 /
  0.91 at 2x (the batch-4 rule: 1.00 / 1.00); on SmolLM2-135M travel10 (bench/quality.py), LoRA at batch 8 for 52 steps
  scored 0.91 at 2.83e-3, 0.92 at 4e-3 and 0.97 at this rule's 3.85e-3 (T-Few 0.82 at 1.41e-2, 0.89 at
  1.92e-2), the hand-set PEFT loop 0.87 (README). The LoRA and T-Few bases come from runs on
  SmolLM2-135M (hidden 576, fp32 CPU) on the CLINC150 banking slice (LoRA at 2e-3: 0.887 exact label
  accuracy, at OCI's 2e-4: 0.725; T-Few at 1e-2: 0.838). Vanilla's 5e-5 is a common full fine-tuning rate
  for small models, not yet measured here. Wider models get proportionally smaller rates (the usual width
  scaling).
- no learning-rate probe: the picks cost nothing beyond the run itself.

Training-set statistics (examples, target tokens, distinct completions) are reported with the picks.
"""

from __future__ import annotations

import math

from graftlm.train.batching import IGNORE_INDEX, target_count
from graftlm.train.config import AUTO_BASE_LEARNING_RATE, AUTO_MAX_LR_SCALE, FineTuneConfig
REFERENCE_HIDDEN = 576  # SmolLM2-135M, where the bases were measured
OCI_EPOCHS = 3  # what auto replaces: OCI's default run is 3 epochs
SMALL_SET = 300  # below this many examples, one more epoch than OCI (cost 4/3 of its run)
MIN_EXAMPLES_SEEN = 400  # a run sees at least this many examples (only matters below 100 examples)
MAX_EPOCHS = 10
MAX_EXAMPLES_SEEN = 30_000
TARGET_STEPS = 100  # the batch size is chosen for about this many optimizer steps
MIN_BATCH, MAX_BATCH = 8, 16  # OCI's batch is the floor: a smaller step costs more per example here
STEPS_BATCH_MIN = 2  # the ~100-step batch goes down to 2
FLOOR_FROM = 48  # the batch floor of 8 applies from this many training examples up
MAX_LR_FACTOR = AUTO_MAX_LR_SCALE  # the batch factor of the learning rate is at most 2


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


def steps_batch(n: int, epochs: int) -> int:
    """The power of two from 2 to 16 that gives about 100 optimizer steps over ``epochs`` of ``n`` examples."""
    per_step = max(epochs * n / TARGET_STEPS, 1)
    return min(MAX_BATCH, max(STEPS_BATCH_MIN, 2 ** int(math.log2(per_step))))


def auto_batch_size(n: int, epochs: int) -> int:
    """The ~100-step batch, but at least OCI's 8 (a smaller step costs more per example on a CPU) from 48
    examples up; below, the ~100-step batch itself (2 or 4: 8 lost accuracy there on the tiny proxy)."""
    wanted = steps_batch(n, epochs)
    return wanted if n < FLOOR_FROM else max(MIN_BATCH, wanted)


def auto_learning_rate(method: str, hidden_size: int, batch: int, steps: int | None = None) -> float:
    """The method's base x min(1, 576 / hidden) x the batch factor (``batch_factor``)."""
    width = min(1.0, REFERENCE_HIDDEN / hidden_size)
    return AUTO_BASE_LEARNING_RATE[method] * width * batch_factor(batch, steps)


def batch_factor(batch: int, steps: int | None = None) -> float:
    """sqrt(batch / 8) (the square-root rule for Adam) x 100 / steps when a run makes fewer than ~100
    optimizer steps (the batch floor of 8 gives them up on small sets), at most 2."""
    short = TARGET_STEPS / steps if steps and steps < TARGET_STEPS else 1.0
    return min(MAX_LR_FACTOR, math.sqrt(max(batch, MIN_BATCH) / MIN_BATCH) * short)


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
    batch, wanted = cfg.training_batch_size, steps_batch(n, epochs)
    if batch is None:
        batch = update["training_batch_size"] = auto_batch_size(n, epochs)
        picks["training_batch_size"] = {"value": batch, "why": f"about {TARGET_STEPS} optimizer steps over "
                                        f"{epochs} epochs of {n} examples at batch {wanted}, a power of two "
                                        f"from {MIN_BATCH} (OCI's) to {MAX_BATCH}"}
    if cfg.learning_rate is None:
        base = AUTO_BASE_LEARNING_RATE[cfg.training_method]
        # the steps factor pays back what a batch above the ~100-step one gives up (the floor, or a given batch)
        steps = (cfg.max_steps or epochs * math.ceil(max(n, 1) / batch)) if batch > wanted else TARGET_STEPS
        lr = auto_learning_rate(cfg.training_method, hidden_size, batch, steps)
        why = (f"{cfg.training_method} base {base:g} x min(1, {REFERENCE_HIDDEN}/{hidden_size} hidden) "
               f"x {batch_factor(batch, steps):.3g} (sqrt({max(batch, MIN_BATCH)}/{MIN_BATCH}) for batch {batch}"
               + (f" x {TARGET_STEPS}/{steps} steps" if steps < TARGET_STEPS else "")
               + f", at most {MAX_LR_FACTOR:g})")
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
