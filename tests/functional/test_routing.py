import math

import pytest
import torch

from mechmon.functional.routing import expert_counts, load_stats, routing_entropy


def test_routing_entropy_matches_loop_and_extremes():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=gen) * 3
    total = 0.0
    for row in logits:
        p = torch.softmax(row.double(), 0)
        total += float(-(p * p.log()).sum() / math.log(5))
    got = routing_entropy(logits)
    assert got[0].item() == pytest.approx(total, rel=1e-5) and got[1].item() == 7
    assert routing_entropy(torch.zeros(3, 4))[0].item() == pytest.approx(3.0)  # uniform: 1 per token
    peaked = torch.tensor([[100.0, 0.0, 0.0, 0.0]])
    assert routing_entropy(peaked)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_expert_counts_matches_bincount():
    idx = torch.tensor([[0, 3], [3, 1], [0, 3]])
    assert expert_counts(idx, 5).tolist() == torch.bincount(idx.flatten(), minlength=5).tolist() == [2, 1, 0, 3, 0]


def test_load_stats_hand_cases():
    counts = torch.tensor([[5, 5, 5, 5], [20, 0, 0, 0], [10, 10, 0, 0]])
    stats = load_stats(counts)
    assert stats["load_cv"].tolist() == pytest.approx([0.0, math.sqrt(3), 1.0])
    assert stats["max_load_ratio"].tolist() == pytest.approx([1.0, 4.0, 2.0])
    assert stats["effective_experts"].tolist() == pytest.approx([4.0, 1.0, 2.0])
    assert stats["dead"].tolist() == [0, 3, 2]
