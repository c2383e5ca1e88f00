"""Per-head attention statistics from row statistics ``[B, H, Q, 4]`` (:func:`~mechmon.functional.attention.row_stats`).

Legend: B batch, H heads, Q query positions. ``valid_BQ`` marks the query rows that count (the probe batch's real
tokens; right padding excluded). Each function reduces over the batch and the queries and never builds a
``[Q, K]`` block: that was done, chunked, when the row statistics were taken.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechmon.functional.attention import ENTROPY, FIRST_MASS, MAX_LOGIT, VISIBLE
from mechmon.functional.stats import mean_or_nan

__all__ = ["head_max_logit", "head_entropy_sums", "first_key_mass", "sink_counts"]


def _rows(stats_BHQ4: Tensor, valid_BQ: Tensor, min_visible: int) -> Tensor:
    """``[B, H, Q]`` rows that count: a valid query that sees at least ``min_visible`` keys."""
    return valid_BQ[:, None, :].bool() & (stats_BHQ4[..., VISIBLE] >= min_visible)


def head_max_logit(stats_BHQ4: Tensor, valid_BQ: Tensor) -> Tensor:
    """Max attention logit per head ``[H]``: max over rows and visible keys of ``scale·q·k + bias`` (metrics A6).

    The max of Megatron-LM's ``max_attention_logit`` and of QK-Clip (Kimi K2, τ = 100). ``-inf`` for a head with no
    counted row. Unit: logit (unbounded).
    """
    rows = _rows(stats_BHQ4, valid_BQ, 1)
    return torch.where(rows, stats_BHQ4[..., MAX_LOGIT], float("-inf")).amax(dim=(0, 2))


def head_entropy_sums(stats_BHQ4: Tensor, valid_BQ: Tensor) -> Tensor:
    """``[2, H]``: sum over rows of the normalised entropy ``Ent(A_i) / log(n_i)``, and the number of rows.

    ``n_i`` is the number of keys query i sees (i + 1 for a causal row without padding; the Active-Dormant heads
    normalisation), so each term is in [0, 1], 1 for uniform attention; rows seeing one key are skipped (their
    entropy is 0 by construction). Zhai et al., *Stabilizing Transformer Training by Preventing Attention Entropy
    Collapse* (ICML 2023); docs/metrics.md A7.
    """
    rows = _rows(stats_BHQ4, valid_BQ, 2)
    normalised = stats_BHQ4[..., ENTROPY] / stats_BHQ4[..., VISIBLE].clamp_min(2).log()
    return torch.stack([torch.where(rows, normalised, 0.0).sum(dim=(0, 2)), rows.sum(dim=(0, 2)).float()])


def first_key_mass(stats_BHQ4: Tensor, valid_BQ: Tensor) -> Tensor:
    """α₀ per sample and head ``[B, H]``: the mean attention key 0 receives from the queries that see it.

    α_k = (1/(T−k))·Σ_{q≥k} A[q, k] with k = 0 (Gu et al., *When Attention Sink Emerges in Language Models*, ICLR
    2025; ``sail-sg/Attention-Sink``); docs/metrics.md E2. In [0, 1]; NaN for a sample with no counted row.
    """
    rows = _rows(stats_BHQ4, valid_BQ, 1)
    total = torch.where(rows, stats_BHQ4[..., FIRST_MASS], 0.0).sum(dim=-1)
    count = rows.sum(dim=-1)
    return mean_or_nan(total, count)


def sink_counts(alpha_BH: Tensor, epsilon: float) -> Tensor:
    """``[2, H]``: samples whose α₀ exceeds ``epsilon`` (a sink, Gu et al.'s Sink^ε₁), and samples measured."""
    measured = torch.isfinite(alpha_BH)
    return torch.stack([(measured & (alpha_BH > epsilon)).sum(dim=0).float(), measured.sum(dim=0).float()])
