import pytest
import torch
import torch.nn.functional as F

from mechmon.functional.plateau import attention_progress, loss_at_positions, repetition_frac, select_positions
from tests.helpers.naive import naive_apm


def test_select_positions_default_explicit_and_padding():
    attn = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert select_positions(attn).tolist() == [[False, True, True, True, False], [False, True, True, True, True]]
    assert select_positions(attn, exclude_first=False)[1, 0].item()
    assert select_positions(attn, positions=[0, 4]).tolist() == [
        [True, False, False, False, False],
        [True] + [False] * 3 + [True],
    ]
    with pytest.raises(ValueError, match="outside"):
        select_positions(attn, positions=[5])


def test_loss_at_positions_matches_loop():
    gen = torch.Generator().manual_seed(0)
    logits, tokens = torch.randn(2, 6, 7, generator=gen), torch.randint(0, 7, (2, 6), generator=gen)
    attn = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    mask = select_positions(attn)
    total, count = 0.0, 0
    for b in range(2):
        for t in range(5):
            if mask[b, t] and attn[b, t + 1]:
                total += F.cross_entropy(logits[b, t][None], tokens[b, t + 1][None]).item()
                count += 1
    got = loss_at_positions(logits, tokens, mask, attn)
    assert got[1].item() == count == 4 + 2  # row 0: t=1..4; row 1: t=1,2 (t=3 predicts padding)
    assert got[0].item() == pytest.approx(total, rel=1e-5)


def test_repetition_frac_hand_case():
    assert repetition_frac(torch.tensor([[1, 1, 2, 2], [3, 4, 5, 6]])).item() == pytest.approx(2 / 6)
    assert repetition_frac(torch.tensor([[7, 7, 7]])).item() == 1.0


def test_attention_progress_matches_loop_with_signed_scores():
    gen = torch.Generator().manual_seed(3)
    pattern = torch.randn(2, 3, 5, 5, generator=gen).tril()  # linear attention: signed, masked scores
    target = (torch.rand(5, 5, generator=gen) < 0.3).float()
    rows = torch.tensor([[False, True, True, False, True], [True, True, True, True, False]])
    got = attention_progress(pattern, target, rows)
    assert torch.allclose(got, naive_apm(pattern, target, rows).float(), atol=1e-6)
    assert torch.allclose(attention_progress(pattern, target.expand(2, 5, 5), rows), got)


def test_attention_progress_perfect_and_disjoint_maps():
    pattern = torch.zeros(1, 1, 4, 4)
    pattern[0, 0, torch.arange(4), torch.arange(4)] = 1.0  # every query on itself
    rows = torch.ones(1, 4, dtype=torch.bool)
    assert attention_progress(pattern, torch.eye(4), rows).item() == 1.0
    assert attention_progress(pattern, 1 - torch.eye(4), rows).item() == 0.0


def test_token_loss_sums_equal_a_naive_cross_entropy_at_the_1_based_token():
    import math

    from mechmon.functional.icl import token_loss_sums

    gen = torch.Generator().manual_seed(8)
    logits, tokens = torch.randn(2, 12, 5, generator=gen), torch.randint(0, 5, (2, 12), generator=gen)
    real = torch.ones(2, 12, dtype=torch.bool)
    real[1, 9:] = False
    total, count = token_loss_sums(logits, tokens, real, token=10, window=1).tolist()
    expected = []
    for b in range(2):
        for t in (9, 10, 11):  # 1-based tokens, predicted at 0-based position t - 2
            if real[b, t - 1]:
                row = logits[b, t - 2].tolist()
                expected.append(math.log(sum(math.exp(z) for z in row)) - row[tokens[b, t - 1]])
    assert count == len(expected) == 4 and total == pytest.approx(sum(expected), rel=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        token_loss_sums(logits, tokens, real, token=12, window=1)
