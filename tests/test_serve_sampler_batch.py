"""The batched sampler gives every seeded row the token the one-row reference gives it, whatever the mix of
temperatures, top_k, top_p and hostile values in the batch."""

import itertools

import torch

from graftlm.serve.sampler import SamplingParams, sample, sample_row, sample_rows

MIXES = [dict(temperature=0.7), dict(temperature=1.3, top_p=0.9), dict(temperature=0.8, top_k=50, top_p=0.95),
         dict(top_k=3), dict(temperature=1e-300), dict(top_p=1e-300), dict(temperature=2.0, top_k=10 ** 9),
         dict(temperature=1.0, top_p=0.5), dict(temperature=5.0, top_k=1)]


def test_seeded_rows_draw_what_they_would_draw_alone():
    g = torch.Generator().manual_seed(0)
    for trial in range(4):
        logits = torch.randn(len(MIXES) * 2, 500, generator=g) * (2 + 3 * trial)
        logits[3, 7] = float("nan")
        logits[5] = float("-inf")  # no usable logit: the argmax
        logits[6, 11] = float("inf")
        params = [SamplingParams(seed=i, **m) for i, m in enumerate(itertools.islice(itertools.cycle(MIXES),
                                                                                     len(logits)))]
        batch = sample_rows(logits, params, [torch.Generator().manual_seed(100 * trial + i)
                                             for i in range(len(logits))])
        alone = [int(sample_row(logits[i], p, torch.Generator().manual_seed(100 * trial + i)))
                 for i, p in enumerate(params)]
        assert batch == alone, trial
        assert batch[6] == 11


def test_unseeded_rows_stay_in_their_nucleus_and_greedy_rows_take_the_argmax():
    logits = torch.tensor([[5.0, 5.0, -20.0, -20.0]] * 8 + [[0.0, 1.0, 9.0, 2.0]])
    params = [SamplingParams(top_p=0.6)] * 8 + [SamplingParams(temperature=0)]
    for _ in range(20):
        chosen, _ = sample(logits, params, [None] * 9)
        assert set(chosen[:8]) <= {0, 1} and chosen[8] == 2
    seen = {t for _ in range(30) for t in sample(logits, params, [None] * 9)[0][:8]}
    assert seen == {0, 1}


def test_a_nucleus_wider_than_the_prefix_is_found_by_a_full_sort():
    from graftlm.serve import sampler

    logits = torch.zeros(2, 1000)  # flat: top_p 0.9 keeps 900 tokens, past the 256-token prefix
    seen = set()
    for _ in range(300):
        seen.update(sampler.sample_rows(logits, [SamplingParams(top_p=0.9)] * 2, [None, None]))
    assert max(seen) > sampler.NUCLEUS_PREFIX and len(seen) > 300
