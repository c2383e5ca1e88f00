"""Attention row statistics, max logit, entropy, sink rate, massive ratio, log Z: each against a naive loop."""

import math

import pytest
import torch

from mechmon.functional.attention import sdpa_row_stats, sdpa_scores
from mechmon.functional.attention_stats import first_key_mass, head_entropy_sums, head_max_logit, sink_counts
from mechmon.functional.logits import log_partition
from mechmon.functional.massive import massive_stats


def qk(B=3, H=4, Hk=2, T=9, D=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=gen) * 3
    k = torch.randn(B, Hk, T, D, generator=gen) * 3
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 6:] = False  # right padding
    valid[2, 3:] = False
    return q, k, valid


def naive_rows(q, k, valid, scale, bias=None):
    """Per (b, h, i) the visible logits of a causal, padded, grouped-query attention, by plain loops."""
    B, H, T, D = q.shape
    group = H // k.shape[1]
    rows = {}
    for b in range(B):
        for h in range(H):
            for i in range(T):
                if not valid[b, i]:
                    continue
                logits = []
                for j in range(i + 1):
                    if valid[b, j]:
                        z = scale * sum(q[b, h, i, d].item() * k[b, h // group, j, d].item() for d in range(D))
                        logits.append(z + (0.0 if bias is None else bias[h, i, j].item()))
                rows[b, h, i] = logits
    return rows


def bool_mask(valid, T):
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return causal[None, None] & valid[:, None, None, :]


@pytest.mark.parametrize("chunk", [2, 128])
def test_max_logit_with_causal_masking_padding_and_gqa_equals_a_naive_loop(chunk):
    q, k, valid = qk()
    stats = sdpa_row_stats(q, k, attn_mask=bool_mask(valid, 9), scale=0.7, enable_gqa=True, chunk=chunk)
    naive = naive_rows(q, k, valid, 0.7)
    expected = [max(max(v) for (_, h, _), v in naive.items() if h == head) for head in range(4)]
    assert head_max_logit(stats, valid).tolist() == pytest.approx(expected, rel=1e-5)


def test_is_causal_and_an_additive_bias_with_finfo_min_padding_equal_a_naive_loop():
    q, k, valid = qk(Hk=4, seed=1)
    bias = torch.randn(4, 9, 9, generator=torch.Generator().manual_seed(2))  # an ALiBi-like additive bias
    additive = bias[None] + torch.where(valid[:, None, None, :], 0.0, torch.finfo(torch.float32).min)
    stats = sdpa_row_stats(q, k, attn_mask=additive, is_causal=True, scale=0.5, chunk=4)
    naive = naive_rows(q, k, valid, 0.5, bias)
    for (b, h, i), logits in naive.items():
        assert stats[b, h, i, 0].item() == pytest.approx(max(logits), rel=1e-5)
        assert stats[b, h, i, 2].item() == len(logits)  # padding keys are not visible


def test_normalised_entropy_with_padding_equals_a_naive_loop():
    q, k, valid = qk(seed=3)
    stats = sdpa_row_stats(q, k, attn_mask=bool_mask(valid, 9), scale=0.3, enable_gqa=True, chunk=3)
    sums, rows = head_entropy_sums(stats, valid)
    for head in range(4):
        values = []
        for (_, h, _), logits in naive_rows(q, k, valid, 0.3).items():
            if h != head or len(logits) < 2:
                continue
            top = max(logits)
            weights = [math.exp(z - top) for z in logits]
            p = [w / sum(weights) for w in weights]
            values.append(-sum(x * math.log(x) for x in p if x > 0) / math.log(len(logits)))
        assert rows[head].item() == len(values)
        assert sums[head].item() / rows[head].item() == pytest.approx(sum(values) / len(values), rel=1e-5)


def test_entropy_is_one_for_uniform_and_zero_for_one_hot_rows():
    T = 6
    uniform = torch.zeros(1, 1, T, T).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    one_hot = uniform.clone()
    one_hot[..., 0] = 1e4  # every row attends to key 0
    valid = torch.ones(1, T, dtype=torch.bool)
    from mechmon.functional.attention import row_stats

    for scores, expected in ((uniform, 1.0), (one_hot, 0.0)):
        sums, rows = head_entropy_sums(row_stats(scores), valid)
        assert rows.item() == T - 1 and sums.item() / rows.item() == pytest.approx(expected, abs=1e-6)


def test_sink_rate_on_a_hand_made_pattern():
    # two samples, two heads, three queries; A[q, 0] by hand, queries of sample 1 beyond 1 are padding
    first = torch.tensor([[[1.0, 0.5, 0.4], [1.0, 0.1, 0.1]], [[1.0, 0.0, 0.9], [1.0, 0.2, 0.0]]])  # [B, H, Q]
    stats = torch.zeros(2, 2, 3, 4)
    stats[..., 3] = first
    stats[..., 2] = torch.arange(1, 4).float()  # query i sees i + 1 keys
    valid = torch.tensor([[True, True, True], [True, True, False]])
    alpha = first_key_mass(stats, valid)
    assert alpha.flatten().tolist() == pytest.approx([1.9 / 3, 1.2 / 3, 0.5, 0.6])
    sinks, samples = sink_counts(alpha, 0.3)
    assert sinks.tolist() == [2.0, 2.0] and samples.tolist() == [2.0, 2.0]
    assert sink_counts(alpha, 0.55)[0].tolist() == [1.0, 1.0]


def test_massive_ratio_with_a_planted_activation_equals_a_naive_sort():
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(2, 5, 8, generator=gen)
    h[0, 0, 3] = 2000.0  # a massive activation on the first token (Sun: > 100 and >= 1000 x median)
    h[0, 2, 1] = -300.0
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[1, 3:] = False
    out = massive_stats(h, valid)
    for b in range(2):
        values = sorted(abs(x) for t in range(5) if valid[b, t] for x in h[b, t].tolist())
        median = values[(len(values) - 1) // 2]  # the lower median
        assert out[b, :3].tolist() == pytest.approx(values[::-1][:3], rel=1e-6)
        assert out[b, 3].item() == pytest.approx(median, rel=1e-6)
        assert out[b, 4].item() == sum(1 for v in values if v > 100 and v >= 1000 * median)
    assert out[0, 0] / out[0, 3] > 100 and out[0, 4].item() >= 1


def test_log_partition_equals_a_naive_logsumexp():
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16) * 20
    for row, value in zip(logits.float().tolist(), log_partition(logits).tolist(), strict=True):
        top = max(row)
        assert value == pytest.approx(top + math.log(sum(math.exp(z - top) for z in row)), rel=1e-5)


def test_scores_of_a_query_chunk_equal_the_rows_of_the_whole():
    q, k, valid = qk(Hk=4, seed=6)
    whole = sdpa_scores(q, k, is_causal=True)
    torch.testing.assert_close(sdpa_scores(q, k, is_causal=True, rows=slice(3, 7)), whole[..., 3:7, :])
