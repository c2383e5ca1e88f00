import math

import numpy as np
import pytest
import torch

from mechmon.functional.pathway import (
    mean_edit_distance,
    pair_subset,
    pathway_selection,
    sample_routing,
    serialize_pathways,
)


def naive_levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_hand_worked_routing_example():
    # sample 0, layer 0: weights e0 .1, e1 .5, e2 .3, e3 .1 -> order 1,2,0,3; cum before: 0, .5, .8 -> keep 1,2
    # sample 0, layer 1: e0 .25 e1 .25 e2 .25 e3 .25 -> ties by lower id; cum before 0,.25,.5,.75 -> keep 0,1,2
    # sample 1, layer 0: e3 .7, e0 .3 -> cum before 0, .7 (= tau, not above) -> keep 3,0
    # sample 1, layer 1: e2 .9 -> keep 2
    w = torch.tensor(
        [
            [[0.1, 0.5, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]],
            [[0.3, 0.0, 0.0, 0.7], [0.05, 0.0, 0.9, 0.05]],
        ]
    )
    order, keep = pathway_selection(w, tau=0.7)
    pathways, per_layer = serialize_pathways(order.numpy(), keep.numpy())
    assert pathways == ["1,2-0,1,2", "3,0-2"]
    assert per_layer == [["1,2", "3,0"], ["0,1,2", "2"]]
    assert mean_edit_distance(pathways) == naive_levenshtein("1,2-0,1,2", "3,0-2") == 6


def test_sample_routing_is_the_token_mean_of_the_softmax_without_padding():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2 * 3, 4, generator=gen)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    got = sample_routing(logits, mask)
    p = torch.softmax(logits, -1).reshape(2, 3, 4)
    assert torch.allclose(got[0], p[0].mean(0)) and torch.allclose(got[1], p[1, 0])
    assert torch.allclose(got.sum(-1), torch.ones(2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_edit_distance_matches_naive_dynamic_programme(seed):
    rng = np.random.default_rng(seed)
    strings = [
        "-".join(",".join(map(str, rng.integers(0, 64, rng.integers(1, 5)))) for _ in range(3)) for _ in range(9)
    ]
    pairs = [(i, j) for i in range(9) for j in range(i + 1, 9)]
    want = np.mean([naive_levenshtein(strings[i], strings[j]) for i, j in pairs])
    assert mean_edit_distance(strings) == pytest.approx(want)
    subset = pair_subset(9, 10, seed)
    assert subset.shape == (10, 2) and (subset[:, 0] < subset[:, 1]).all()
    want_sub = np.mean([naive_levenshtein(strings[i], strings[j]) for i, j in subset])
    assert mean_edit_distance(strings, subset) == pytest.approx(want_sub)


def test_pair_subset_is_fixed_and_none_when_small():
    assert pair_subset(10, 45) is None
    assert np.array_equal(pair_subset(256, 1000, seed=3), pair_subset(256, 1000, seed=3))
    assert math.isnan(mean_edit_distance(["1,2"]))
