"""Weight-norm and gradient-weight alignment formulas (METRICS.md A4, A5).

Source: Prieto, Barsbey, Mediano, Birdal, *Grokking at the Edge of Numerical Stability* (ICLR 2025):
``logger.py`` (``compute_weights_l2``) for norms; naive loss minimization (NLM) for the alignment.
Legend: P parameter tensors. Square sums and dot products in fp32 per tensor, summed across tensors in fp64.
Sign convention (mechmon): a positive cosine means the descent direction grows the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["square_norms", "dots_and_square_norms", "cosines", "global_cosine"]


def square_norms(tensors: Sequence[Tensor]) -> Tensor:
    """Per-tensor squared Frobenius norms Σp², fp32 each, returned as fp64 ``[P]``."""
    return torch.stack([t.detach().float().pow(2).sum() for t in tensors]).double()


def dots_and_square_norms(directions: Sequence[Tensor], params: Sequence[Tensor]) -> Tensor:
    """``[3, P]`` fp64: ⟨d_p, p⟩, ‖d_p‖², ‖p‖² per tensor (fp32 each).

    Args:
        directions: per-tensor directions (``-grad`` for the gradient form, the update for the update form).
        params: the matching parameters (same shapes).
    """
    pairs = [(d.detach().float(), p.detach().float()) for d, p in zip(directions, params, strict=True)]
    rows = [torch.stack([(d * p).sum(), d.pow(2).sum(), p.pow(2).sum()]) for d, p in pairs]
    return torch.stack(rows, dim=1).double()


def cosines(stats_3P: Tensor) -> Tensor:
    """Per-tensor cosines c_p = ⟨d_p, p⟩ / (‖d_p‖·‖p‖) from :func:`dots_and_square_norms`; 0 where a norm is 0.

    Returns:
        ``[P]`` in [-1, 1].
    """
    denom = (stats_3P[1] * stats_3P[2]).sqrt()
    return torch.where(denom > 0, stats_3P[0] / denom.clamp_min(1e-300), torch.zeros_like(denom))


def global_cosine(stats_3P: Tensor) -> Tensor:
    """Global cosine Σ⟨d_p, p⟩ / (√Σ‖d_p‖² · √Σ‖p‖²); 0-d, in [-1, 1]; NaN when a norm is 0 (no gradient seen)."""
    dot, d_sq, p_sq = stats_3P.sum(dim=1)
    denom = (d_sq * p_sq).sqrt()
    return torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.full_like(denom, float("nan")))
