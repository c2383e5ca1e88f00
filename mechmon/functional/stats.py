"""Means over what was seen: NaN, never a plausible 0, when nothing was."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["finite_or_nan", "mean_or_nan"]


def mean_or_nan(total: Tensor, count: Tensor) -> Tensor:
    """``total / count`` where ``count > 0``, NaN where it is 0 (broadcast; no host sync).

    Args:
        total: summed values, any shape.
        count: how many were summed, broadcastable to ``total`` (>= 0).

    Returns:
        The mean in ``total``'s floating dtype (float32 for integer totals); NaN where ``count == 0``.
    """
    dtype = total.dtype if total.is_floating_point() else torch.float32
    mean = total.to(dtype) / count.clamp_min(1).to(dtype)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


def finite_or_nan(values: Tensor) -> Tensor:
    """``values`` with every non-finite entry (the ``-inf`` start of a running max that saw nothing) set to NaN."""
    return torch.where(torch.isfinite(values), values, torch.full_like(values, float("nan")))
