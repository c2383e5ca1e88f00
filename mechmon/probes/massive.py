"""Massive-activation probe: the largest |h| of each block's output over its median.

Phenomenon: massive activations, a few residual-stream entries 10²-10⁴ times the median that act as fixed biases
(Sun et al., *Massive Activations in Large Language Models*, 2024); their training dynamics (absent at
initialisation, an early peak in shallow and deep layers, a log increase in the middle ones) are the subject of
Gallego-Feliciano et al., *Hidden Dynamics of Massive Activations in Transformer Training* (arXiv 2508.03616,
2025). docs/metrics.md E1. Snapshot probe on the fixed batch: per sequence, over every real position's entries of the
residual stream after block l, the k-th largest |h| (k = 1, 2, 3) over the median |h|, averaged over sequences.

Logged metrics (``<ns>`` = namespace, scope ``Lxx`` per layer):

===================================  ===================================================  ==========  ======
key                                  meaning                                              range/unit  reduce
===================================  ===================================================  ==========  ======
``<ns>/massive_act/ratio_max``       max over layers of the top-1 ratio                   >= 1        sum/n
``<ns>/massive_act/ratio/Lxx``       top-1 |h| / median |h| after block xx                >= 1        sum/n
``<ns>/massive_act/ratio2/Lxx``      the 2nd largest over the median                      >= 1        sum/n
``<ns>/massive_act/ratio3/Lxx``      the 3rd largest over the median                      >= 1        sum/n
``<ns>/massive_act/top1_abs/Lxx``    the largest |h| itself                               activation  max
``<ns>/massive_act/massive_count``   entries with |a| > 100 and >= 1000 x median (Sun)    count       sum
===================================  ===================================================  ==========  ======

Sun's absolute criterion fails on small models (Pythia-14M peaks at a ratio of 83), so the alert is relative:
``massive_activation_emergence`` (info) when a layer's ratio is above ``factor`` (10) times its first value for
``patience`` (2) evaluations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters.base import Adapter, resid_name
from mechmon.alerts import Emergence, Rule
from mechmon.checks import integer, number
from mechmon.functional.massive import TOP_K, massive_stats
from mechmon.functional.stats import finite_or_nan
from mechmon.naming import layer_scope
from mechmon.probes.fixed_batch import FixedBatchProbe

__all__ = ["MassiveActivationProbe"]


class MassiveActivationProbe(FixedBatchProbe):
    """Top-1/2/3 |h| over the median |h| of every block output, and Sun et al.'s massive count (docs/metrics.md E1).

    Args:
        batch: fixed batch (ids ``[B, T]`` or a mapping); ``None`` takes the first training batch.
        factor: rise over the first evaluation's ratio that fires the emergence alert (10).
        patience: evaluations above it (2).
        max_rows: rows kept from the batch (10, the paper's sequence count).
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads ``blocks.{l}.hook_resid_post`` ``[B, T, D]``.

    Raises:
        ValueError: on bad arguments.

    Example:
        >>> MassiveActivationProbe().name
        'massive_act'
    """

    name = "massive_act"
    headline = "ratio_max"
    requires = ("blocks.*.hook_resid_post",)

    def __init__(self, batch: Any = None, factor: float = 10.0, patience: int = 2, max_rows: int = 10, **kwargs: Any):
        number("MassiveActivationProbe", "factor", factor, 1, closed=(True, False))
        integer("MassiveActivationProbe", "patience", patience, 1)
        self.factor, self.patience = float(factor), patience
        super().__init__(batch, max_rows, **kwargs)

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Declare ``[L, 3]`` ratio sums, sequence counts, ``[L]`` max |h| and massive counts."""
        super().setup(model, adapter, device)
        self.names = [resid_name(i) for i in range(adapter.n_layers)]
        L = adapter.n_layers
        self.add_state("ratio_sum_LK", torch.zeros((L, TOP_K)), "sum")
        self.add_state("seqs_L", torch.zeros(L), "sum")
        self.add_state("top_L", torch.full((L,), float("-inf")), "max")
        self.add_state("massive_L", torch.zeros(L), "sum")

    def reduce_capture(self, name: str, tensor: Tensor) -> Tensor:
        """``[B, T, D]`` block output -> ``[B, 5]`` per-sequence statistics (inside the hook)."""
        return massive_stats(tensor, self.attention_mask)

    def update(self, captures: Mapping[str, Tensor], batch: Any = None) -> None:
        """Add each layer's per-sequence ratios, max and massive count."""
        stats_LB5 = torch.stack([captures[name] for name in self.names])
        top_LBK, median_LB = stats_LB5[..., :TOP_K], stats_LB5[..., TOP_K]
        ratio_LBK = top_LBK / median_LB[..., None]
        measured_LB = torch.isfinite(ratio_LBK).all(dim=-1)
        self.ratio_sum_LK += torch.where(measured_LB[..., None], ratio_LBK, 0.0).sum(dim=1)
        self.seqs_L += measured_LB.sum(dim=1)
        self.top_L.copy_(torch.maximum(self.top_L, top_LBK[..., 0].nan_to_num(float("-inf")).amax(dim=1)))
        self.massive_L += stats_LB5[..., TOP_K + 1].sum(dim=1)

    def compute(self) -> dict[str, Tensor]:
        """Mean ratios per layer, their max, the largest |h| per layer and the massive count (NaN unmeasured)."""
        ratio_LK = self.ratio_sum_LK / self.seqs_L[:, None]  # 0/0 = NaN for a layer with no sequence
        out = {
            self.key("ratio_max"): ratio_LK[:, 0].max(),
            self.key("massive_count"): self.massive_L.sum(),
        }
        for layer in range(ratio_LK.shape[0]):
            scope = layer_scope(layer)
            for k, stat in enumerate(("ratio", "ratio2", "ratio3")):
                out[self.key(stat, scope)] = ratio_LK[layer, k]
            out[self.key("top1_abs", scope)] = finite_or_nan(self.top_L[layer])
        return out

    def default_rules(self) -> list[Rule]:
        """``massive_activation_emergence`` per layer: ratio above ``factor`` x its first value, ``patience`` times."""
        n_layers = len(getattr(self, "names", ()))
        return [
            Emergence(
                self.key("ratio", layer_scope(layer)),
                level=0.0,
                min_factor=self.factor,
                patience=self.patience,
                name="massive_activation_emergence",
            )
            for layer in range(n_layers)
        ]
