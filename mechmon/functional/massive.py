"""Massive activations: the largest |h| of a block's output against its median (docs/metrics.md E1).

Gallego-Feliciano et al., *Hidden Dynamics of Massive Activations in Transformer Training* (arXiv 2508.03616,
2025); the "massive" criterion (|a| > 100 and |a| ≥ 1000 × median) is Sun et al., *Massive Activations in Large
Language Models* (2024). Legend: B sequences, T positions, D width.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["massive_stats", "TOP_K"]

TOP_K = 3


def massive_stats(h_BTD: Tensor, valid_BT: Tensor, level: float = 100.0, factor: float = 1000.0) -> Tensor:
    """Per sequence ``[B, 5]`` float32: the 1st, 2nd and 3rd largest |h|, the median |h|, and the massive count.

    Over every valid position's ``D`` entries (all positions count: massive activations sit on the first and
    delimiter tokens; padding is excluded). The median is the lower median (``torch.nanmedian``), in float32;
    the count is of entries with ``|a| > level`` and ``|a| >= factor · median``. A sequence with no valid position
    gives NaN magnitudes and a count of 0.
    """
    abs_BN = h_BTD.float().abs().masked_fill(~valid_BT.bool()[..., None], float("nan")).flatten(1)
    top_BK = abs_BN.nan_to_num(-1.0).topk(min(TOP_K, abs_BN.shape[1]), dim=1).values
    top_BK = torch.where(top_BK < 0, float("nan"), top_BK)
    median_B = abs_BN.nanmedian(dim=1).values
    massive_B = ((abs_BN > level) & (abs_BN >= factor * median_B[:, None])).sum(dim=1).float()
    return torch.cat([top_BK, median_B[:, None], massive_B[:, None]], dim=1)
