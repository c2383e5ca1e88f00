"""Attention entropy probe: the normalised entropy of attention rows per layer and head.

Phenomenon: attention-entropy collapse, Zhai et al., *Stabilizing Transformer Training by Preventing Attention
Entropy Collapse* (ICML 2023): pathologically low entropy goes with loss oscillation and divergence; Wortsman et
al. (2023) reproduce it in small models at high learning rates. docs/metrics.md A7. Each causal row's entropy is divided
by log of the number of keys it sees (Active-Dormant heads normalisation), so 1 is uniform and 0 one-hot; rows
seeing a single key and padding are skipped. Snapshot probe on the fixed batch (see
:mod:`mechmon.probes.attention_rows`).

Logged metrics (``<ns>`` = namespace, scope ``Lxx`` per layer):

===================================  =================================================  ==========  ======
key                                  meaning                                            range/unit  reduce
===================================  =================================================  ==========  ======
``<ns>/attn_entropy/mean``           mean over heads and rows                           [0, 1]      sum/n
``<ns>/attn_entropy/mean/Lxx``       the same for layer xx                              [0, 1]      sum/n
``<ns>/attn_entropy/min_head``       the lowest head's mean                             [0, 1]      sum/n
``<ns>/attn_entropy/collapsed_frac`` heads whose mean is below ``head_level`` (0.1)     [0, 1]      sum/n
``<ns>/attn_entropy/head_mean``      ``[L, H]`` heatmap of the per-head mean            [0, 1]      sum/n
===================================  =================================================  ==========  ======

Alert: ``attention_entropy_collapse`` (warning) when ``collapsed_frac`` is above ``collapsed_level`` (0.5) for
``patience`` (2) evaluations. It watches the share of heads, not one head: induction and previous-token heads are
near one-hot by design, and a model with a few of them is healthy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechmon.alerts import Rule, Threshold
from mechmon.checks import integer, number
from mechmon.functional.attention_stats import head_entropy_sums
from mechmon.functional.stats import mean_or_nan
from mechmon.naming import layer_scope
from mechmon.probes.attention_rows import AttentionRowsProbe

__all__ = ["AttentionEntropyProbe"]


class AttentionEntropyProbe(AttentionRowsProbe):
    """Normalised attention entropy per layer and head on the fixed batch (docs/metrics.md A7).

    Args:
        batch: fixed batch (ids ``[B, T]`` or a mapping); ``None`` takes the first training batch.
        head_level: a head whose mean normalised entropy is below it counts as collapsed (0.1).
        collapsed_level: share of collapsed heads that fires the alert (0.5).
        patience: evaluations the share must stay above it (2).
        max_rows: rows kept from the batch (8).
        seq_len: tokens kept per row (``None``: all).
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads ``blocks.{l}.attn.hook_row_stats`` ``[B, H, T, 4]``.

    Raises:
        ValueError: on bad arguments.

    Example:
        >>> AttentionEntropyProbe().name
        'attn_entropy'
    """

    name = "attn_entropy"
    headline = "mean"

    def __init__(
        self,
        batch: Any = None,
        head_level: float = 0.1,
        collapsed_level: float = 0.5,
        patience: int = 2,
        **kwargs: Any,
    ) -> None:
        number("AttentionEntropyProbe", "head_level", head_level, 0, 1)
        number("AttentionEntropyProbe", "collapsed_level", collapsed_level, 0, 1)
        integer("AttentionEntropyProbe", "patience", patience, 1)
        self.head_level, self.collapsed_level, self.patience = head_level, collapsed_level, patience
        super().__init__(batch, **kwargs)

    def declare(self, n_layers: int, n_heads: int) -> None:
        """``[L, 2, H]`` sums of normalised entropy and row counts."""
        self.add_state("sums_L2H", torch.zeros((n_layers, 2, n_heads)), "sum")

    def reduce_rows(self, stats_BHQ4: Tensor, valid_BQ: Tensor) -> Tensor:
        """``[2, H]`` entropy sum and rows of the layer."""
        return head_entropy_sums(stats_BHQ4, valid_BQ)

    def accumulate(self, per_layer: Tensor) -> None:
        """Add the sums."""
        self.sums_L2H += per_layer

    def compute(self) -> dict[str, Tensor]:
        """Means overall, per layer and per head; the lowest head; the collapsed share (NaN when nothing counted)."""
        total_LH, rows_LH = self.sums_L2H[:, 0], self.sums_L2H[:, 1]
        head_LH = mean_or_nan(total_LH, rows_LH)
        measured = torch.isfinite(head_LH)
        out = {
            self.key("mean"): total_LH.sum() / rows_LH.sum(),
            self.key("min_head"): head_LH.nan_to_num(float("inf")).min().where(measured.any(), float("nan")),
            self.key("collapsed_frac"): (measured & (head_LH < self.head_level)).sum() / measured.sum(),
            self.key("head_mean"): head_LH,
        }
        for layer in range(head_LH.shape[0]):
            out[self.key("mean", layer_scope(layer))] = total_LH[layer].sum() / rows_LH[layer].sum()
        return out

    def default_rules(self) -> list[Rule]:
        """``attention_entropy_collapse``: ``collapsed_frac`` above ``collapsed_level`` for ``patience`` evaluations."""
        return [
            Threshold(
                self.key("collapsed_frac"),
                self.collapsed_level,
                patience=self.patience,
                name="attention_entropy_collapse",
            )
        ]
