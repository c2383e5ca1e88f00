import math

import numpy as np
import pytest
import torch

from mechmon.functional.pathway import (
    mean_edit_distance,
    pair_subset,
    pathway_consistency,
    pathway_selection,
    routing_embeddings,
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


def test_consistency_both_forms_on_a_hand_example():
    # L = 3 layers of d = 2: e1 = (1, 0), e2 = (2, 0), e3 = (0, 1) -> adjacent cosines 1 and 0
    # smoothness = (1 + 0) / 2 = 0.5; paper form = 1 - 0.5 / (max(1, 0) + 1e-8) = 0.5
    # a second sample with equal cosines (1/sqrt2 twice) has paper form 0: it measures non-uniformity
    embed = torch.tensor(
        [
            [[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]],
            [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
        ]
    )
    smooth, paper = pathway_consistency(embed)
    assert smooth.tolist() == pytest.approx([0.5, 2**-0.5])
    assert paper.tolist() == pytest.approx([0.5, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match=">= 2 MoE layers"):
        pathway_consistency(embed[:, :1])


def test_routing_embeddings_and_consistency_match_a_naive_loop():
    gen = torch.Generator().manual_seed(3)
    weights = torch.softmax(torch.randn(4, 3, 5, generator=gen), -1)
    router = torch.randn(3, 5, 7, generator=gen)
    embed = routing_embeddings(weights, router)
    smooth, paper = pathway_consistency(embed)
    for i in range(4):
        e = [sum(weights[i, layer, k] * router[layer, k] for k in range(5)) for layer in range(3)]
        assert torch.allclose(embed[i], torch.stack(e), atol=1e-6)
        cos = [float(e[a] @ e[a + 1] / (e[a].norm() * e[a + 1].norm())) for a in range(2)]
        assert smooth[i].item() == pytest.approx(sum(cos) / 2, abs=1e-6)
        assert paper[i].item() == pytest.approx(1 - (sum(cos) / 2) / (max(cos) + 1e-8), abs=1e-5)
