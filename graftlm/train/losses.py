"""T-Few's losses for data whose completions come from a small label set (Liu et al. 2022, section 3.2).

With ``label_set_losses: true`` a training step adds, to the usual cross-entropy on the reference answer
(L_LM), two terms computed over the other labels of the training split (the *candidates*):

- unlikelihood, L_UL = - sum over candidate tokens of log(1 - p(token | prompt, candidate prefix)),
  divided by the number of candidate tokens in the step: pushes probability away from wrong labels;
- length-normalised, L_LN = - log softmax_c(beta_c)[reference] with beta_c the mean log-probability per
  token of label c: the reference must outrank every candidate, whatever their lengths (mean over the
  step's examples).

The loss is L_LM + L_UL + L_LN, as in the paper. A step scores at most ``MAX_CANDIDATES`` wrong labels
per example (all of them when there are fewer; else a sample drawn from (seed, step), so a resumed run
sees the same ones): each costs one more short sequence in the forward pass, so a step costs up to
(1 + MAX_CANDIDATES)x a plain one. ``train_loss`` stays OCI's cross-entropy; the two extra terms are
reported as ``train_unlikelihood_loss`` and ``train_length_normalized_loss``.

The data must look like labels: every example ends with one assistant answer of at most
``EXACT_MATCH_MAX_TARGETS`` tokens, there are at least 2 distinct answers and at most half as many as
examples (each label seen twice on average). Otherwise training is refused, naming ``label_set_losses``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from graftlm.errors import GraftError
from graftlm.train.batching import IGNORE_INDEX, pad_rows

MAX_CANDIDATES = 7  # wrong labels scored per example and step
MAX_LABEL_TOKENS = 48  # = loop.EXACT_MATCH_MAX_TARGETS (kept here to avoid an import cycle)


def completion_span(example: dict) -> tuple[int, int] | None:
    """[start, end) of the example's target tokens when they form one contiguous span, else None."""
    idx = [t for t in range(1, len(example["labels"])) if example["labels"][t] != IGNORE_INDEX]
    if not idx or idx[-1] - idx[0] + 1 != len(idx):
        return None
    return idx[0], idx[-1] + 1


def label_set(encoded: list[dict]) -> list[tuple[int, ...]]:
    """The distinct answers (token sequences) of a training split that qualifies; GraftError otherwise."""
    def refuse(why: str) -> GraftError:
        return GraftError(f"label_set_losses needs completions from a small label set: {why}",
                          param="label_set_losses", code="invalid_hyperparameter")

    labels = set()
    for i, ex in enumerate(encoded):
        span = completion_span(ex)
        if span is None:
            raise refuse(f"training example {i + 1} has more than one answer span (several assistant turns)")
        if span[1] - span[0] > MAX_LABEL_TOKENS:
            raise refuse(f"training example {i + 1} has a {span[1] - span[0]}-token answer "
                         f"(at most {MAX_LABEL_TOKENS})")
        labels.add(tuple(ex["input_ids"][span[0]:span[1]]))
    if len(labels) < 2:
        raise refuse("every training example has the same answer")
    if 2 * len(labels) > len(encoded):
        raise refuse(f"{len(labels)} distinct answers in {len(encoded)} examples (at most half as many)")
    return sorted(labels)


def candidate_rows(example: dict, labels: list[tuple[int, ...]], rng: np.random.Generator) -> list[dict]:
    """The example's reference row first, then its candidate (wrong-label) rows: same prompt, other answer."""
    start, end = completion_span(example)
    prompt, own = list(example["input_ids"][:start]), tuple(example["input_ids"][start:end])
    others = [lab for lab in labels if lab != own]
    if len(others) > MAX_CANDIDATES:
        others = [others[i] for i in sorted(rng.choice(len(others), MAX_CANDIDATES, replace=False))]
    return [{"input_ids": prompt + list(lab), "labels": [IGNORE_INDEX] * start + list(lab)}
            for lab in [own, *others]]


def step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, 2022])


def group_examples(rows_per_example: list[list[dict]], max_tokens: int) -> list[list[int]]:
    """Examples grouped so that each group's padded rows fit the token budget (at least one example)."""
    groups, current, rows, width = [], [], 0, 0
    for j, rows_j in enumerate(rows_per_example):
        w = max(width, max(len(r["input_ids"]) for r in rows_j))
        if current and (rows + len(rows_j)) * w > max_tokens:
            groups.append(current)
            current, rows, w = [], 0, max(len(r["input_ids"]) for r in rows_j)
        current.append(j)
        rows, width = rows + len(rows_j), w
    if current:
        groups.append(current)
    return groups


def label_set_terms(model, rows: list[dict], owner: list[int], device, target_logits):
    """Sums over one forward pass of candidate rows: (LM cross-entropy of the reference rows, their argmax
    hits, unlikelihood over the candidate rows, length-normalised loss per example, candidate tokens).

    ``rows``: reference row then candidates for each example, ``owner[r]`` the example of row r (0-based
    within these rows, contiguous, reference first)."""
    batch = pad_rows(rows)
    logits, targets, row_of = target_logits(model, batch, device)
    logp = -F.cross_entropy(logits, targets, reduction="none")
    n_rows = len(rows)
    reference = torch.zeros(n_rows, dtype=torch.bool, device=logp.device)
    firsts = [r for r in range(n_rows) if r == 0 or owner[r] != owner[r - 1]]
    reference[firsts] = True
    is_ref_tok = reference[row_of]
    lm_sum = -logp[is_ref_tok].sum()
    hits = (logits.detach().argmax(-1) == targets)[is_ref_tok].sum()
    p = logp[~is_ref_tok].exp().clamp(max=1 - 1e-6)
    ul_sum = -torch.log1p(-p).sum()
    per_row = torch.zeros(n_rows, device=logp.device, dtype=logp.dtype).index_add(0, row_of, logp)
    count = torch.zeros(n_rows, device=logp.device, dtype=logp.dtype).index_add(0, row_of, torch.ones_like(logp))
    beta = per_row / count.clamp(min=1)
    ln_sum = logp.new_zeros(())
    bounds = firsts + [n_rows]
    for a, b in zip(bounds[:-1], bounds[1:]):
        ln_sum = ln_sum - torch.log_softmax(beta[a:b], dim=0)[0]
    return lm_sum, hits, ul_sum, ln_sum, int((~is_ref_tok).sum())
