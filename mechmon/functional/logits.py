"""Numerical-stability formulas on logits (docs/metrics.md A1-A3).

Source: Prieto, Barsbey, Mediano, Birdal, *Grokking at the Edge of Numerical Stability* (ICLR 2025);
``logger.py`` (``compute_softmax_collapse``, ``compute_zero_terms``) of the authors' code.
Legend: N rows, V vocabulary (or classes). Rows are masked, never dropped, so nothing syncs with the host.
Pure functions; inputs are never mutated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "log_partition",
    "softmax_collapse",
    "zero_loss",
    "top2_gap",
    "absorption_gap",
    "measured_absorption_gap",
    "flatten_rows",
    "row_chunks",
    "loss_dtype_for",
    "row_stats",
]


def softmax_collapse(logits_NV: Tensor, dtype: torch.dtype) -> Tensor:
    """Softmax-collapse test per row (A1), every operation in ``dtype``.

    m = max_j z_j; S = fl_τ(Σ_j exp(z_j - m)); collapsed iff S == 1, i.e. every non-max term was absorbed.
    Never upcast beyond the loss dtype τ, or the effect vanishes.

    Args:
        logits_NV: logits ``[N, V]`` of any float dtype.
        dtype: τ, the dtype in which the training loss computes its log-sum-exp.

    Returns:
        bool ``[N]``.
    """
    z = logits_NV.to(dtype)
    s = torch.exp(z - z.amax(dim=-1, keepdim=True)).sum(dim=-1)
    return s == 1


def row_losses(logits_NV: Tensor, targets_N: Tensor, dtype: torch.dtype) -> Tensor:
    """Per-row cross-entropy in nats, computed in ``dtype`` by ``F.cross_entropy`` (the training loss per token).

    Args:
        logits_NV: logits ``[N, V]``.
        targets_N: int64 class ids ``[N]`` in [0, V).
        dtype: the loss dtype τ.

    Returns:
        ``[N]`` in ``dtype``, >= 0.
    """
    return F.cross_entropy(logits_NV.to(dtype), targets_N, reduction="none")


def zero_loss(logits_NV: Tensor, targets_N: Tensor, dtype: torch.dtype) -> Tensor:
    """Rows whose cross-entropy, computed in ``dtype`` by ``F.cross_entropy``, is exactly 0 (A2).

    Args:
        logits_NV: logits ``[N, V]``.
        targets_N: int64 class ids ``[N]`` in [0, V) (mask ignored rows before or after).
        dtype: the loss dtype τ.

    Returns:
        bool ``[N]``.
    """
    return row_losses(logits_NV, targets_N, dtype) == 0


def top2_gap(logits_NV: Tensor) -> Tensor:
    """fp32 gap between the largest and second-largest logit per row (A3), in nats; ``[N]``, >= 0."""
    top = logits_NV.float().topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def log_partition(logits_NV: Tensor) -> Tensor:
    """Log Z = logsumexp of each logit row ``[N]``, float32 (docs/metrics.md A8).

    Wortsman et al. (2023): output-logit divergence is log Z drifting far from 0; the z-loss 1e-4·(log Z)² is its
    mitigation. Unit: nats; a model with all-zero logits has log Z = log V.
    """
    return torch.logsumexp(logits_NV.float(), dim=-1)


def loss_dtype_for(logits_dtype: torch.dtype) -> torch.dtype:
    """The dtype in which a training loss is computed from logits of ``logits_dtype`` (τ of the absorption test).

    Half-precision logits (bf16, fp16) have their cross-entropy computed in float32: autocast runs
    ``cross_entropy`` / ``log_softmax`` in float32 (``bf16-mixed``, ``16-mixed``), and Hugging Face's causal-LM loss
    upcasts the logits to float32 before it (``bf16-true`` too). Wider logits keep their own dtype.

    Args:
        logits_dtype: the dtype of the logits the output head produced.

    Returns:
        ``torch.float32`` for 16-bit floating logits, else ``logits_dtype``.
    """
    return torch.float32 if logits_dtype in (torch.bfloat16, torch.float16) else logits_dtype


def absorption_gap(dtype: torch.dtype) -> float:
    """(p+1)·ln 2 for a dtype with p mantissa bits: the smallest top1-top2 gap at which absorption is possible.

    Equals ln(2/eps): 5.55 (bf16), 7.62 (fp16), 16.64 (fp32), 36.74 (fp64). Not a collapse threshold
    (that depends on V and summation order, docs/metrics.md A1); only the lower bound used by ``gap_frac_absorbable``.
    """
    return math.log(2.0 / torch.finfo(dtype).eps)


def flatten_rows(
    logits: Tensor, targets: Tensor, shift: bool, ignore_index: int = -100
) -> tuple[Tensor, Tensor, Tensor]:
    """Align logits with targets as rows, without copying the logits.

    Args:
        logits: ``[B, T, V]`` (LM) or ``[N, C]`` (classifier).
        targets: ``[B, T]`` or ``[N]`` int ids; ``ignore_index`` marks rows to skip.
        shift: LM labels equal to the inputs (HF convention): row t predicts target t+1 (the last row of each
            sequence has no target and is marked invalid, so the logits stay a view of the head's output).
        ignore_index: id of ignored rows.

    Returns:
        ``(logits_NV, targets_N, valid_N)`` with ignored targets replaced by 0 and ``valid_N`` a bool mask.

    Raises:
        ValueError: if the shapes do not line up.
    """
    if tuple(logits.shape[:-1]) != tuple(targets.shape):
        raise ValueError(f"logits {tuple(logits.shape)} do not line up with targets {tuple(targets.shape)}")
    if shift:
        targets = torch.cat([targets[..., 1:], torch.full_like(targets[..., :1], ignore_index)], dim=-1)
    logits_NV, targets_N = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    valid_N = targets_N != ignore_index
    return logits_NV, torch.where(valid_N, targets_N, torch.zeros_like(targets_N)), valid_N


def row_chunks(rows: int, vocab: int, logits_bytes: int, allowance: int = 64 * 2**20) -> int:
    """Rows per chunk so that a chunk's temporaries stay within ``allowance`` + 10 % of the logits' bytes.

    A chunk's temporaries are bounded by 32 bytes per logit (:func:`row_stats` keeps one ``exp`` of the chunk, plus a
    float32 copy of 16-bit logits and, for a τ other than the logits' dtype, a copy in τ and its ``exp``), so the
    probe's extra peak is at most that budget whatever the batch, vocabulary or dtype.
    """
    budget = allowance + logits_bytes // 10
    return max(1, min(rows, budget // (32 * vocab)))


def measured_absorption_gap(vocab: int, dtype: torch.dtype, device: torch.device, resolution: float = 0.05) -> Tensor:
    """Smallest top-logit gap at which a row with ``vocab - 1`` equal other logits collapses, measured here.

    Runs :func:`softmax_collapse` on a grid of gaps in ``dtype`` on ``device``, so it reflects this device's
    summation order and this vocabulary size (docs/metrics.md A1: 16.6 to 27.5 nats in fp32 depending on both). Equal
    non-max logits are the slowest case: real rows can collapse at smaller gaps. No host sync.

    Args:
        vocab: V (>= 2).
        dtype: the loss dtype τ.
        device: where the loss runs.
        resolution: grid step in nats.

    Returns:
        0-d fp64 tensor on ``device``, in nats (``inf`` if no grid gap collapsed).
    """
    low = absorption_gap(dtype) - 0.5
    gaps_G = torch.arange(low, low + math.log(vocab) + 2.0, resolution, dtype=torch.float64, device=device)
    rows_GV = torch.zeros(gaps_G.numel(), vocab, dtype=dtype, device=device)
    rows_GV[:, 0] = gaps_G.to(dtype)
    collapsed_G = softmax_collapse(rows_GV, dtype)
    first = collapsed_G.to(torch.int8).argmax()
    return torch.where(collapsed_G.any(), gaps_G[first], torch.full_like(gaps_G[0], math.inf))


def row_stats(logits_RV: Tensor, targets_R: Tensor, dtype: torch.dtype) -> dict[str, Tensor]:
    """Every per-row statistic of the logits probe from one exponential pass (A1-A3, A8).

    The top-2 values give the maximum m, the argmax and the gap; E = exp(z - m) gives S = Σ E (the absorption
    test in τ when τ is E's dtype, the log-partition m + log S and the loss log S + m - z_target); the
    non-max terms r = S - 1, summed with the argmax term zeroed (so nothing absorbs them), give the float64 test
    1 + r == 1. E is computed in the logits' dtype (float32 for 16-bit logits). Equal to :func:`softmax_collapse`,
    :func:`row_losses`, :func:`top2_gap` and :func:`log_partition` up to the rounding of r and the summation order;
    a τ other than that dtype runs :func:`softmax_collapse` and :func:`row_losses` in τ instead. Temporaries: one
    ``[R, V]`` (plus the float32 copy of 16-bit logits).

    Args:
        logits_RV: logits ``[R, V]`` of any float dtype, ``V >= 2``.
        targets_R: int64 class ids ``[R]`` in [0, V).
        dtype: τ, the loss dtype.

    Returns:
        ``[R]`` each: ``collapsed`` and ``collapsed_fp64`` (bool), ``loss`` (nats, in τ), ``gap`` (nats),
        ``max``, ``norm`` and ``log_z`` (float32), ``correct`` (bool).
    """
    z_RV = logits_RV if logits_RV.dtype in (torch.float32, torch.float64) else logits_RV.float()
    top = z_RV.topk(2, dim=-1)
    m_R1 = top.values[:, :1]
    e_RV = torch.sub(z_RV, m_R1).exp_()  # the only [R, V] temporary
    s_R = e_RV.sum(dim=-1)
    rest_R = e_RV.scatter_(1, top.indices[:, :1], 0.0).sum(dim=-1)
    z_t_R = z_RV.gather(1, targets_R[:, None])[:, 0]
    if dtype == z_RV.dtype:
        collapsed, loss = s_R == 1, s_R.log() + (m_R1[:, 0] - z_t_R)
    else:
        collapsed, loss = softmax_collapse(z_RV, dtype), row_losses(z_RV, targets_R, dtype)
    return {
        "collapsed": collapsed,
        "collapsed_fp64": (1.0 + rest_R.double()) == 1.0,
        "loss": loss,
        "gap": (top.values[:, 0] - top.values[:, 1]).float(),
        "max": m_R1[:, 0].float(),
        "norm": torch.linalg.vector_norm(z_RV, dim=-1).float(),
        "log_z": (m_R1[:, 0] + s_R.log()).float(),
        "correct": top.indices[:, 0] == targets_R,
    }
