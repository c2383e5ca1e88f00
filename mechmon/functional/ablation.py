"""Mean ablation of attention heads and the overlap of head sets: pure formulas.

Mean ablation (*Induction Signatures Are Not Enough*; Wang et al. 2022, "Interpretability in the Wild") replaces a
head's output by its mean over the batch's positions, keeping what the head writes on average and removing what it
writes about each position: the loss it then loses is what the model relied on the head for.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mean_ablate", "top_heads", "jaccard"]


def mean_ablate(z_NHD: Tensor, mask_H: Tensor) -> Tensor:
    """The heads where ``mask_H`` is true replaced by their mean over the rows.

    Args:
        z_NHD: per-head outputs ``[N, H, d_head]``, one row per (batch, position).
        mask_H: bool ``[H]``, the heads to ablate.

    Returns:
        ``[N, H, d_head]`` in ``z_NHD``'s dtype; the other heads unchanged (the same values).
    """
    mean_1HD = z_NHD.mean(dim=0, keepdim=True)
    return torch.where(mask_H[None, :, None], mean_1HD.expand_as(z_NHD), z_NHD)


def top_heads(scores_LH: Tensor, k: int) -> Tensor:
    """Flat indices ``l * H + h`` of the ``k`` highest scores ``[k]``, highest first (ties: the lower index)."""
    flat = scores_LH.flatten()
    return torch.topk(flat, min(k, flat.numel()), sorted=True).indices


def jaccard(a: set[int], b: set[int]) -> float:
    """|a ∩ b| / |a ∪ b| in [0, 1]; NaN when both are empty (nothing to compare)."""
    union = a | b
    return len(a & b) / len(union) if union else float("nan")
