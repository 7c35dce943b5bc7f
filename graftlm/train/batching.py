"""Which examples make each optimizer step, and how they are packed into forward passes.

- ``training_batch_size`` counts examples: an epoch has ceil(n / batch_size) steps, the last one
  smaller. The order is a seeded permutation per epoch, so step s always sees the same examples
  (this is what makes resuming exact without storing a data-loader state).
- The examples of one step are grouped into micro-batches of at most ``max_tokens`` tokens
  (padding counted), sorted by length to keep padding small, one example per row, padded on the
  right with no attention mask: attention is causal, so real tokens never see the pads after
  them, and pads have no targets. This is exact and lets sdpa take its fast causal path.
  Measured on CPU (SmolLM2-135M, 8 examples of 83 tokens): padded rows 20 s vs one packed row
  55 s per forward+backward, because a packed row pays attention over the whole row.
- ``pack`` (kept for GPUs with varlen flash attention) puts examples side by side in one row,
  ``position_ids`` restarting at 0 for each. Transformers (>= 4.53) reads restarting position_ids with ``attention_mask=None`` as
  packed sequences and builds a block-diagonal causal mask (sdpa, eager, flex) or varlen calls
  (flash), so no token attends across examples; ``tests/test_train_batching.py`` checks that an
  example's loss packed equals its loss alone.
- Targets are shifted inside each example before concatenation, so the last token of one
  example never predicts the first token of the next.
"""

from __future__ import annotations

import math

import numpy as np
import torch

IGNORE_INDEX = -100


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of one epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n_examples).tolist()


def step_examples(n_examples: int, batch_size: int, seed: int, step: int) -> tuple[int, list[int]]:
    """(epoch, example indices) of global optimizer step ``step`` (0-based)."""
    per_epoch = steps_per_epoch(n_examples, batch_size)
    epoch, k = divmod(step, per_epoch)
    order = epoch_order(n_examples, seed, epoch)
    return epoch, order[k * batch_size:(k + 1) * batch_size]


def target_count(example: dict) -> int:
    """Tokens that are predicted with loss: labels after the first position that are not ignored."""
    return sum(1 for t in example["labels"][1:] if t != IGNORE_INDEX)


def group_micro_batches(examples: list[dict], max_tokens: int, max_examples: int | None = None,
                        padded: bool = False) -> list[list[dict]]:
    """Greedy, order-keeping groups whose size fits the token budget (rows x longest row when padded)."""
    groups, current, used = [], [], 0
    for ex in examples:
        n = len(ex["input_ids"])
        after = (len(current) + 1) * max(n, used) if padded else used + n
        full = after > max_tokens or (max_examples is not None and len(current) >= max_examples)
        if current and full:
            groups.append(current)
            current, used = [], 0
        current.append(ex)
        used = max(used, n) if padded else used + n
    if current:
        groups.append(current)
    return groups


def pack(examples: list[dict]) -> dict:
    """One padding-free row: input_ids, position_ids and shifted targets, each shaped (1, T)."""
    ids, positions, targets = [], [], []
    for ex in examples:
        n = len(ex["input_ids"])
        ids.extend(ex["input_ids"])
        positions.extend(range(n))
        targets.extend(list(ex["labels"][1:]) + [IGNORE_INDEX])
    as_row = lambda xs: torch.tensor(xs, dtype=torch.long).unsqueeze(0)  # noqa: E731
    return {"input_ids": as_row(ids), "position_ids": as_row(positions), "targets": as_row(targets),
            "n_tokens": len(ids)}


def pad_rows(examples: list[dict]) -> dict:
    """One example per row, right-padded (no attention mask needed: attention is causal)."""
    width = max(len(ex["input_ids"]) for ex in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for r, ex in enumerate(examples):
        n = len(ex["input_ids"])
        ids[r, :n] = torch.tensor(ex["input_ids"])
        targets[r, :n - 1] = torch.tensor(ex["labels"][1:])
    positions = torch.arange(width).expand(len(examples), -1)
    return {"input_ids": ids, "position_ids": positions, "targets": targets,
            "n_tokens": sum(len(ex["input_ids"]) for ex in examples)}


def micro_batches(examples: list[dict], max_tokens: int, max_examples: int | None = None,
                  packed: bool = False) -> list[dict]:
    if packed:
        return [pack(g) for g in group_micro_batches(examples, max_tokens, max_examples)]
    by_length = sorted(examples, key=lambda ex: len(ex["input_ids"]), reverse=True)
    return [pad_rows(g) for g in group_micro_batches(by_length, max_tokens, max_examples, padded=True)]
