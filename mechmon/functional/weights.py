"""Weight-norm and gradient-weight alignment formulas (docs/metrics.md A4, A5).

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


CHUNK = 4 * 2**20  # elements per chunk: three float32 temporaries of 16 MiB each at most


def _chunks(t: Tensor) -> list[Tensor]:
    flat = t.detach().reshape(-1)
    return [flat[i : i + CHUNK] for i in range(0, flat.numel(), CHUNK)]


def _total(parts, like: Tensor) -> Tensor:
    """Sum of 0-d fp32 tensors, starting from a device zero (an empty tensor sums to 0)."""
    return sum(parts, torch.zeros((), device=like.device))


def square_norms(tensors: Sequence[Tensor]) -> Tensor:
    """Per-tensor squared Frobenius norms Σp², fp32 each, returned as fp64 ``[P]``.

    Read ``CHUNK`` elements at a time: the extra memory is at most 48 MiB whatever the tensors' sizes.
    """
    return torch.stack([_total((c.float().pow(2).sum() for c in _chunks(t)), t) for t in tensors]).double()


def dots_and_square_norms(directions: Sequence[Tensor | None], params: Sequence[Tensor], sign: float = 1.0) -> Tensor:
    """``[3, P]`` fp64: ⟨d_p, p⟩, ‖d_p‖², ‖p‖² per tensor, with d_p = ``sign`` x ``directions[p]`` (fp32 each).

    Args:
        directions: per-tensor directions (the gradient, with ``sign=-1`` for the descent direction; the update
            for the update form); ``None`` is a zero direction (a parameter without a gradient).
        params: the matching parameters (same shapes).
        sign: +1 or -1 (no negated copy of the directions is made).

    Read ``CHUNK`` elements at a time: the extra memory is at most 48 MiB whatever the tensors' sizes.
    """
    rows = []
    for d, p in zip(directions, params, strict=True):
        p_sq = _total((c.float().pow(2).sum() for c in _chunks(p)), p)
        if d is None:
            zero = torch.zeros((), device=p.device)
            rows.append(torch.stack([zero, zero, p_sq]))
            continue
        dot = _total(((dc.float() * pc.float()).sum() for dc, pc in zip(_chunks(d), _chunks(p), strict=True)), p)
        d_sq = _total((c.float().pow(2).sum() for c in _chunks(d)), p)
        rows.append(torch.stack([sign * dot, d_sq, p_sq]))
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
