"""``LogitsProbe`` against the paper's own code, row for row, on rows inside the band where the result depends on
the summation order.

Reference: Prieto, Barsbey, Mediano, Birdal, *Grokking at the Edge of Numerical Stability* (ICLR 2025), the authors'
repository LucasPrietoAl/grokking-at-the-edge-of-numerical-stability: ``logger.py``
``MetricsLogger.compute_softmax_collapse`` (the logits cast to the cross-entropy dtype, the row maximum subtracted,
``exp``, ``sum`` over the classes, the rows whose sum equals 1) and ``utils.py`` ``softmax_cross_entropy`` (the
cross-entropy as ``-log_softmax(logits, dtype=ce_dtype)`` at the label; ``compute_zero_terms`` counts the rows where it
is exactly 0). Written again here, not taken from mechmon.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from mechmon.probes.logits import LogitsProbe


def paper_collapsed(output, ce_dtype):
    """Per row: the paper's softmax-collapse test (``compute_softmax_collapse`` before its mean)."""
    output = output.to(ce_dtype)
    shifted = output - output.amax(dim=1, keepdim=True)
    return torch.sum(torch.exp(shifted), dim=-1) == 1


def paper_loss(logits, labels, ce_dtype):
    """Per row: the paper's ``softmax_cross_entropy(..., reduction="none", dtype=ce_dtype)``."""
    logprobs = F.log_softmax(logits, dim=-1, dtype=ce_dtype)
    return -torch.gather(logprobs, dim=-1, index=labels.view(-1, 1)).squeeze(-1)


def band_rows(n, vocab, tau, dtype, seed=0):
    """Rows whose top-1 gap spans ln(2/eps_tau) - 1 .. ln(2 V / eps_tau) + 1: the band where the order decides.

    Labels: the argmax for 3 rows in 4 (zero-loss candidates), another class otherwise.
    """
    gen = torch.Generator().manual_seed(seed)
    low = math.log(2 / torch.finfo(tau).eps) - 1
    gaps = low + (math.log(vocab) + 2) * torch.rand(n, generator=gen, dtype=torch.float64)
    rows = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 0.7
    top = torch.randint(0, vocab, (n,), generator=gen)
    rows[torch.arange(n), top] = rows.amax(dim=1) + gaps
    labels = torch.where(torch.rand(n, generator=gen) < 0.75, top, (top + 1) % vocab)
    return rows.to(dtype), labels


def measured(probe):
    return {k.split("/", 2)[2]: v.item() for k, v in probe.compute().items()}


CASES = [  # (vocab, logits dtype, tau): tau None is the probe's default for that dtype
    (113, torch.float32, None),
    (113, torch.bfloat16, None),
    (113, torch.float16, None),
    (113, torch.float32, torch.float64),
    (50257, torch.float32, None),
    (50257, torch.bfloat16, None),
]


@pytest.mark.parametrize(("vocab", "dtype", "tau"), CASES)
@pytest.mark.parametrize("shape", ["NC", "BTV"])
def test_collapse_zero_loss_and_loss_equal_the_papers_code_row_for_row(vocab, dtype, tau, shape):
    ce = tau or (torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype)
    n = 400 if vocab < 1000 else 120
    logits, labels = band_rows(n, vocab, ce, dtype)
    ignored = torch.zeros(n, dtype=torch.bool)
    ignored[::7] = True
    probe = LogitsProbe(loss_dtype=tau, fp64=True)
    if shape == "NC":
        probe.update({"logits": logits}, (None, labels.masked_fill(ignored, -100)))
    else:  # [B, T, V] with aligned targets, -100 where ignored
        probe.update({"logits": logits.view(4, n // 4, vocab)}, (None, labels.masked_fill(ignored, -100).view(4, -1)))
    keep = ~ignored
    rows = int(keep.sum())
    got = measured(probe)
    collapsed = paper_collapsed(logits[keep], ce)
    zero = paper_loss(logits[keep], labels[keep], ce) == 0
    fp64 = paper_collapsed(logits[keep], torch.float64)
    assert 0 < int(collapsed.sum()) < rows and 0 < int(zero.sum()) < rows  # the band really splits the rows
    assert round(got["softmax_collapse_frac"] * rows) == int(collapsed.sum())
    assert round(got["zero_loss_frac"] * rows) == int(zero.sum())
    assert round(got["softmax_collapse_frac_fp64"] * rows) == int(fp64.sum())
    losses = paper_loss(logits[keep], labels[keep], ce).double()
    assert got["loss_nats"] == pytest.approx(float(losses.sum()) / rows, rel=1e-12)  # the same per-row values


def test_the_fp64_band_is_counted_as_the_papers_float64_code_does():
    logits, labels = band_rows(400, 113, torch.float64, torch.float32, seed=1)
    probe = LogitsProbe(fp64=True)
    probe.update({"logits": logits}, (None, labels))
    fp64 = paper_collapsed(logits, torch.float64)
    assert 0 < int(fp64.sum()) < 400
    assert round(measured(probe)["softmax_collapse_frac_fp64"] * 400) == int(fp64.sum())
