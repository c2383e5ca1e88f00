import math

import pytest
import torch

from mechmon.functional.induction import (
    induction_scores,
    prev_token_scores,
    repeated_sequence_losses,
    repeated_tokens,
)


def naive_induction(pattern, n, s):
    B, H = pattern.shape[:2]
    out = torch.zeros(H)
    for h in range(H):
        total = 0.0
        for b in range(B):
            for i in range(n):
                total += float(pattern[b, h, s + n + i, s + i + 1])
        out[h] = total / (B * n)
    return out


def naive_prev(pattern, s):
    B, H, T, _ = pattern.shape
    out = torch.zeros(H)
    for h in range(H):
        vals = [float(pattern[b, h, q, q - 1]) for b in range(B) for q in range(s + 1, T)]
        out[h] = sum(vals) / len(vals)
    return out


def random_causal_pattern(B, H, T, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, H, T, T, generator=gen)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


@pytest.mark.parametrize("n,s", [(5, 0), (7, 1), (50, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_scores_match_naive_loops(n, s, dtype):
    pattern = random_causal_pattern(2, 3, s + 2 * n + 1).to(dtype)
    torch.testing.assert_close(induction_scores(pattern, n, s), naive_induction(pattern, n, s), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(prev_token_scores(pattern, s), naive_prev(pattern, s), atol=1e-5, rtol=1e-4)


def test_perfect_induction_and_prev_token_heads_score_one():
    n, s = 6, 1
    T = s + 2 * n
    ind = torch.zeros(1, 1, T, T)
    ind[0, 0, :, 0] = 1.0  # rows without a target attend to BOS
    for i in range(n):
        ind[0, 0, s + n + i] = 0
        ind[0, 0, s + n + i, s + i + 1] = 1.0
    assert induction_scores(ind, n, s).item() == 1.0
    prev = torch.zeros(1, 1, T, T)
    prev[0, 0, 0, 0] = 1.0
    for q in range(1, T):
        prev[0, 0, q, q - 1] = 1.0
    assert prev_token_scores(prev, s).item() == 1.0
    assert induction_scores(prev, n, s).item() == 0.0


@pytest.mark.parametrize("n,s", [(50, 0), (50, 1), (10, 1)])
def test_uniform_causal_head_scores_its_analytic_value(n, s):
    T = s + 2 * n
    uniform = torch.ones(T, T).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]
    expected = sum(1 / (s + n + i + 1) for i in range(n)) / n
    assert induction_scores(uniform, n, s).item() == pytest.approx(expected, rel=1e-6)
    if n == 50:
        assert expected == pytest.approx(math.log(2) / n, rel=0.05)
    prev_expected = sum(1 / (q + 1) for q in range(s + 1, T)) / (T - s - 1)
    assert prev_token_scores(uniform, s).item() == pytest.approx(prev_expected, rel=1e-6)


def test_short_pattern_raises():
    with pytest.raises(ValueError, match="shorter"):
        induction_scores(torch.zeros(1, 1, 9, 9), 5, 0)


@pytest.mark.parametrize("s", [0, 1])
def test_repeated_sequence_losses_match_naive(s):
    n, V = 6, 11
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (3, s + 2 * n), generator=gen)
    logits = torch.randn(3, s + 2 * n, V, generator=gen)

    def ce(b, q):  # loss of predicting token q+1 at position q
        return float(-logits[b, q].log_softmax(-1)[tokens[b, q + 1]])

    first = [ce(b, t - 1) for b in range(3) for t in range(s + 1, s + n)]
    rep = [ce(b, t - 1) for b in range(3) for t in range(s + n + 1, s + 2 * n)]
    got = repeated_sequence_losses(logits, tokens, n, s)
    torch.testing.assert_close(got, torch.tensor([sum(first) / len(first), sum(rep) / len(rep)]), atol=1e-5, rtol=1e-5)


def test_losses_of_four_copies_match_naive():
    n, V, s = 5, 11, 1
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, V, (2, s + 4 * n), generator=gen)
    logits = torch.randn(2, s + 4 * n, V, generator=gen)
    expected = []
    for c in range(4):
        losses = [float(-logits[b, t - 1].log_softmax(-1)[tokens[b, t]]) for b in range(2)
                  for t in range(s + c * n + 1, s + (c + 1) * n)]  # fmt: skip
        expected.append(sum(losses) / len(losses))
    got = repeated_sequence_losses(logits, tokens, n, s, copies=4)
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_repeated_tokens_layout():
    allowed = torch.arange(3, 40)
    batch = repeated_tokens(4, 10, allowed, torch.Generator().manual_seed(0), bos_token_id=1)
    assert batch.shape == (4, 21) and (batch[:, 0] == 1).all()
    assert torch.equal(batch[:, 1:11], batch[:, 11:])
    for row in batch[:, 1:11]:
        assert len(set(row.tolist())) == 10 and set(row.tolist()) <= set(allowed.tolist())
    control = repeated_tokens(4, 10, allowed, torch.Generator().manual_seed(0), repeat=False)
    assert not torch.equal(control[:, :10], control[:, 10:])
    again = repeated_tokens(4, 10, allowed, torch.Generator().manual_seed(0), bos_token_id=1)
    assert torch.equal(batch, again)
    with pytest.raises(ValueError, match="usable token ids"):
        repeated_tokens(1, 50, torch.arange(10), torch.Generator())


def test_prefix_matching_score_equals_a_naive_loop_over_copies():
    from mechmon.functional.induction import prefix_matching_scores

    n, copies, s = 5, 4, 1
    T = s + copies * n
    pattern = torch.rand(2, 3, T, T, generator=torch.Generator().manual_seed(7)).tril()
    pattern = pattern / pattern.sum(dim=-1, keepdim=True)
    expected = []
    for h in range(3):
        values = []
        for b in range(2):
            for m in range(1, copies):
                for i in range(n):
                    q = s + m * n + i
                    values.append(sum(pattern[b, h, q, s + c * n + i + 1].item() for c in range(m)))
        expected.append(sum(values) / len(values))
    assert prefix_matching_scores(pattern, n, copies, s).tolist() == pytest.approx(expected, rel=1e-6)


def test_a_perfect_prefix_matching_head_scores_one():
    from mechmon.functional.induction import prefix_matching_scores

    n, copies = 4, 4
    T = copies * n
    pattern = torch.zeros(1, 1, T, T)
    pattern[0, 0, :n] = torch.eye(T)[:n]  # copy 0 attends to itself
    for m in range(1, copies):
        for i in range(n):
            for c in range(m):  # split evenly over the successors of every earlier occurrence
                pattern[0, 0, m * n + i, c * n + i + 1] = 1 / m
    assert prefix_matching_scores(pattern, n, copies).item() == pytest.approx(1.0)
