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

    A chunk's temporaries are bounded by 32 bytes per logit (:func:`row_stats` keeps one ``[R, V]`` of the chunk at a
    time, plus a float32 copy of 16-bit logits; a τ other than the logits' dtype, or the float64 test, a copy in
    that dtype and its ``exp``: 16 bytes), so the probe's extra peak is at most that budget whatever the batch,
    vocabulary or dtype.
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
    first = collapsed_G.to(torch.int8).argmax().view(1)
    smallest = gaps_G.index_select(0, first)[0]  # caveat: gaps_G[first] with a 0-d tensor is .item(), a host sync
    return torch.where(collapsed_G.any(), smallest, torch.full_like(gaps_G[0], math.inf))


def row_stats(logits_RV: Tensor, targets_R: Tensor, dtype: torch.dtype, fp64: bool = False) -> dict[str, Tensor]:
    """Every per-row statistic of the logits probe, equal row for row to the paper's own code (A1-A3, A8).

    The collapse test is the authors' ``compute_softmax_collapse``: in τ, ``sum(exp(z - max)) == 1`` summed by
    ``torch.sum`` (one exponential pass when τ is the logits' compute dtype, :func:`softmax_collapse` otherwise).
    The loss is their ``softmax_cross_entropy``: ``-log_softmax(z, dtype=τ)`` at the target, so a zero loss is
    exactly their zero term (the log-softmax kernel sums in its own order: no other formula gives the same rows).
    Log Z = max + log of that sum (``logsumexp`` when τ is another dtype), in float32. Temporaries: one
    ``[R, V]`` at a time in τ (plus the float32 copy of 16-bit logits; with ``fp64``, a float64 copy and its
    ``exp``).

    Args:
        logits_RV: logits ``[R, V]`` of any float dtype, ``V >= 2``.
        targets_R: int64 class ids ``[R]`` in [0, V).
        dtype: τ, the loss dtype.
        fp64: also run the collapse test in float64 (the paper's counterfactual; a float64 pass over the logits).

    Returns:
        ``[R]`` each: ``collapsed`` (bool), ``loss`` (nats, in τ), ``gap`` (nats), ``max``, ``norm`` and ``log_z``
        (float32), ``correct`` (bool), and with ``fp64`` ``collapsed_fp64`` (bool).
    """
    z_RV = logits_RV if logits_RV.dtype in (torch.float32, torch.float64) else logits_RV.float()
    top = z_RV.topk(2, dim=-1)
    m_R = top.values[:, 0]
    if dtype == z_RV.dtype:
        s_R = torch.sub(z_RV, m_R[:, None]).exp_().sum(dim=-1)  # one [R, V] temporary
        collapsed, log_z = s_R == 1, m_R + s_R.log()
    else:
        collapsed, log_z = softmax_collapse(z_RV, dtype), torch.logsumexp(z_RV, dim=-1)
    logp_RV = F.log_softmax(z_RV, dim=-1, dtype=dtype)
    out = {
        "collapsed": collapsed,
        "loss": -logp_RV.gather(1, targets_R[:, None])[:, 0],
        "log_z": log_z.float(),
        "gap": (m_R - top.values[:, 1]).float(),
        "max": m_R.float(),
        "norm": torch.linalg.vector_norm(z_RV, dim=-1).float(),
        "correct": top.indices[:, 0] == targets_R,
    }
    del logp_RV
    if fp64:
        out["collapsed_fp64"] = softmax_collapse(z_RV, torch.float64)
    return out
