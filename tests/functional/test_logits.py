import math

import pytest
import torch

from mechmon.functional.logits import (
    absorption_gap,
    flatten_rows,
    log_partition,
    row_losses,
    row_stats,
    softmax_collapse,
    top2_gap,
    zero_loss,
)

DTYPES = [torch.float16, torch.float32, torch.float64]
# (p+1)·ln2 (p: the mantissa bits), and the V=113 "max last" sequential threshold (p+1)·ln2 + ln(112): the band in
# which the summation order decides whether a row collapses (docs/metrics.md A1).
LOWER = {torch.float16: 7.62, torch.float32: 16.64, torch.float64: 36.74}
UPPER_V113 = {torch.float16: 12.33, torch.float32: 21.36, torch.float64: 41.46}


def naive_collapse(row, dtype):
    """The paper's definition, summed term by term in dtype."""
    z = row.to(dtype)
    m = z.max()
    s = torch.zeros((), dtype=dtype)
    for v in z:
        s = s + torch.exp(v - m)
    return bool(s == 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_absorption_gap_matches_table(dtype):
    assert absorption_gap(dtype) == pytest.approx(LOWER[dtype], abs=0.01)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("delta", [-0.05, 0.05])
def test_two_logit_rows_at_the_threshold(dtype, delta):
    # with one other term the summation order cannot matter: collapse iff e^-g < 2^-(p+1)
    gap = math.log(2.0 / torch.finfo(dtype).eps) + delta
    row = torch.tensor([[gap, 0.0]], dtype=torch.float64)
    assert softmax_collapse(row, dtype).item() is (delta > 0)
    assert naive_collapse(row[0], dtype) is (delta > 0)


def v113_rows(dtype, gaps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for gap in gaps:
        others = -torch.rand(112, generator=gen, dtype=torch.float64) * 3  # spread below the runner-up at 0
        others[0] = 0.0
        rows.append(torch.cat([torch.tensor([gap], dtype=torch.float64), others])[torch.randperm(113, generator=gen)])
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", DTYPES)
def test_v113_rows_on_both_sides_of_the_order_dependent_band(dtype):
    below = [LOWER[dtype] - d for d in (0.02, 0.5, 3.0)]
    above = [UPPER_V113[dtype] + d for d in (0.02, 0.5, 3.0)]
    rows = v113_rows(dtype, below + above)
    got = softmax_collapse(rows, dtype).tolist()
    ref = [naive_collapse(r, dtype) for r in rows]
    assert got == ref == [False] * 3 + [True] * 3


@pytest.mark.parametrize("dtype", DTYPES)
def test_equal_non_max_logits_inside_band_agree_with_bounds(dtype):
    # inside the band the answer depends on the reduction order; it must still be monotone in the gap
    gaps = torch.linspace(LOWER[dtype] - 1, UPPER_V113[dtype] + 1, 60, dtype=torch.float64)
    rows = torch.zeros(60, 113, dtype=torch.float64)
    rows[:, 0] = gaps
    got = softmax_collapse(rows, dtype).tolist()
    first_true = got.index(True)
    assert all(got[first_true:]) and not any(got[:first_true])
    # the switch lies in (gaps[first_true - 1], gaps[first_true]]; it must sit inside that band
    assert float(gaps[first_true]) >= LOWER[dtype] and float(gaps[first_true - 1]) <= UPPER_V113[dtype] + 0.05


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_loss_is_collapse_of_correct_rows(dtype):
    rows = v113_rows(dtype, [LOWER[dtype] - 1, UPPER_V113[dtype] + 1, UPPER_V113[dtype] + 1], seed=3)
    top = rows.argmax(-1)
    wrong = (top + 1) % 113
    targets = torch.stack([top[0], top[1], wrong[2]])
    got = zero_loss(rows, targets, dtype).tolist()
    assert got == [False, True, False]
    assert all(z <= c for z, c in zip(got, softmax_collapse(rows, dtype).tolist(), strict=True))


def test_top2_gap_and_flatten_rows():
    logits = torch.randn(2, 5, 7)
    gap = top2_gap(logits.reshape(-1, 7))
    srt = logits.reshape(-1, 7).sort(-1, descending=True).values
    torch.testing.assert_close(gap, srt[:, 0] - srt[:, 1])
    targets = torch.randint(0, 7, (2, 5))
    targets[0, 3] = -100
    lg, tg, valid = flatten_rows(logits, targets, shift=True)
    assert lg.shape == (10, 7) and tg.shape == (10,) and lg.data_ptr() == logits.data_ptr()  # a view, no copy
    assert valid.tolist() == [True, True, False, True, False, True, True, True, True, False]  # last rows: no target
    assert (tg >= 0).all() and tg[0] == targets[0, 1]
    torch.testing.assert_close(lg[5], logits[1, 0])
    with pytest.raises(ValueError, match="line up"):
        flatten_rows(logits, targets[:, :3], shift=False)
    _, tg2, valid2 = flatten_rows(logits.reshape(10, 7), targets.reshape(10), shift=False)
    assert valid2.sum() == 9 and tg2.shape == (10,)


def test_inputs_are_not_mutated():
    logits = torch.randn(4, 9)
    before = logits.clone()
    softmax_collapse(logits, torch.float16)
    zero_loss(logits, torch.zeros(4, dtype=torch.long), torch.float16)
    top2_gap(logits)
    assert torch.equal(logits, before)


@pytest.mark.parametrize("logits_dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("tau", [torch.float32, torch.float16])
def test_row_stats_equal_the_one_formula_functions(logits_dtype, tau):
    # rows on both sides of the float32 and float64 thresholds, a tie, and ordinary rows; targets right and wrong
    f32, f64 = torch.float32, torch.float64
    gaps = [LOWER[f32] - 1, UPPER_V113[f32] + 1, LOWER[f64] - 2, UPPER_V113[f64] + 2]
    rows = torch.cat([v113_rows(torch.float64, gaps, seed=5), torch.randn(6, 113, dtype=torch.float64) * 4])
    rows[-1, :2] = rows[-1].max() + 1  # two equal maxima: never collapsed, gap 0
    rows = rows.to(logits_dtype)
    top = rows.float().argmax(-1)
    targets = torch.where(torch.arange(10) % 3 == 0, (top + 1) % 113, top)
    got = row_stats(rows, targets, tau, fp64=True)
    assert "collapsed_fp64" not in row_stats(rows, targets, tau)  # the float64 pass only when asked
    assert got["collapsed"].tolist() == softmax_collapse(rows, tau).tolist()
    assert got["collapsed_fp64"].tolist() == softmax_collapse(rows, torch.float64).tolist()
    if logits_dtype != torch.float64:
        assert got["collapsed_fp64"].tolist()[:4] == [False, False, False, True]
    ref_loss = row_losses(rows.float() if logits_dtype == torch.bfloat16 else rows, targets, tau)
    assert torch.equal(got["loss"], ref_loss)  # the same log-softmax kernel in tau: equal, not close
    torch.testing.assert_close(got["gap"], top2_gap(rows))
    torch.testing.assert_close(got["log_z"], log_partition(rows))
    torch.testing.assert_close(got["norm"], rows.float().norm(dim=-1))
    torch.testing.assert_close(got["max"], rows.float().amax(dim=-1))
    assert got["correct"][:-1].tolist() == (rows.float().argmax(-1) == targets)[:-1].tolist()  # a tie: either max
    assert got["gap"][-1] == 0 and not got["collapsed"][-1]
