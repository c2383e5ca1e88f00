"""Attention-sink probe: how much attention the first token receives, per layer and head.

Phenomenon: attention sinks, Gu et al., *When Attention Sink Emerges in Language Models: An Empirical View* (ICLR
2025; metric from ``sail-sg/Attention-Sink``); extreme-token phenomena and active/dormant heads, Guo et al. (2024).
docs/metrics.md E2. α₀ = the mean attention key 0 receives from the queries that see it, per (sample, layer, head); a
triple is a sink when α₀ > ε (0.3), and the sink rate is the share of sink triples (Gu et al.'s Sink^ε₁, on rows
of T = 64 tokens). Snapshot probe on the fixed batch (see :mod:`mechmon.probes.attention_rows`).

Logged metrics (``<ns>`` = namespace, scope ``Lxx`` per layer):

===================================  =================================================  ==========  ======
key                                  meaning                                            range/unit  reduce
===================================  =================================================  ==========  ======
``<ns>/attn_sink/sink_frac``         share of (sample, layer, head) with α₀ > ε         [0, 1]      sum/n
``<ns>/attn_sink/sink_frac/Lxx``     the same for layer xx                              [0, 1]      sum/n
``<ns>/attn_sink/first_mass_mean``   mean α₀ over samples, layers and heads             [0, 1]      sum/n
``<ns>/attn_sink/first_mass``        ``[L, H]`` heatmap of the mean α₀, slow cadence    [0, 1]      sum/n
===================================  =================================================  ==========  ======

A uniform causal head gives α₀ = H_T/T ≈ 0.07 at T = 64; Gu et al. report sink rates of 70-91 % for pretrained
LLMs on random tokens, and sinks forming between 1k and 2k steps of 60M-parameter pretraining.
Alerts: ``sink_emerged`` (info) when ``sink_frac`` crosses ``emerged_level`` (0.5); ``sink_lost`` (info: experimental,
no run at this scale has shown it before trouble) when it falls more than ``lost_drop`` (0.3) below its running max.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechmon.alerts import Collapse, Rule, Threshold
from mechmon.checks import number
from mechmon.functional.attention_stats import first_key_mass, sink_counts
from mechmon.naming import layer_scope
from mechmon.probes.attention_rows import AttentionRowsProbe

__all__ = ["AttentionSinkProbe"]


class AttentionSinkProbe(AttentionRowsProbe):
    """Attention-sink rate and first-token attention mass per layer and head (docs/metrics.md E2).

    Args:
        batch: fixed batch (ids ``[B, T]`` or a mapping); ``None`` takes the first training batch.
        epsilon: α₀ above which a (sample, layer, head) is a sink (0.3, Gu et al.).
        emerged_level: sink rate of the ``sink_emerged`` alert (0.5).
        lost_drop: fall below the running max of the ``sink_lost`` alert (0.3).
        seq_len: tokens kept per row (64, Gu et al.'s T).
        max_rows: rows kept from the batch (8).
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads ``blocks.{l}.attn.hook_row_stats`` ``[B, H, T, 4]``.

    Raises:
        ValueError: on bad arguments.

    Example:
        >>> AttentionSinkProbe(epsilon=0.3).name
        'attn_sink'
    """

    name = "attn_sink"
    headline = "sink_frac"

    def __init__(
        self,
        batch: Any = None,
        epsilon: float = 0.3,
        emerged_level: float = 0.5,
        lost_drop: float = 0.3,
        seq_len: int | None = 64,
        **kwargs: Any,
    ) -> None:
        number("AttentionSinkProbe", "epsilon", epsilon, 0, 1)
        number("AttentionSinkProbe", "emerged_level", emerged_level, 0, 1)
        number("AttentionSinkProbe", "lost_drop", lost_drop, 0, 1, closed=(False, True))
        self.epsilon, self.emerged_level, self.lost_drop = epsilon, emerged_level, lost_drop
        super().__init__(batch, seq_len=seq_len, **kwargs)

    def declare(self, n_layers: int, n_heads: int) -> None:
        """``[L, 3, H]``: sink samples, measured samples and the α₀ sum per head."""
        self.add_state("sums_L3H", torch.zeros((n_layers, 3, n_heads)), "sum")

    def reduce_rows(self, stats_BHQ4: Tensor, valid_BQ: Tensor) -> Tensor:
        """``[3, H]`` of the layer: sink count, samples, α₀ sum."""
        alpha_BH = first_key_mass(stats_BHQ4, valid_BQ)
        return torch.cat([sink_counts(alpha_BH, self.epsilon), alpha_BH.nan_to_num(0.0).sum(dim=0)[None]])

    def accumulate(self, per_layer: Tensor) -> None:
        """Add the sums."""
        self.sums_L3H += per_layer

    def compute(self) -> dict[str, Tensor]:
        """Sink rates overall and per layer, the mean α₀ and its ``[L, H]`` matrix (NaN when nothing measured)."""
        sinks_LH, samples_LH, alpha_LH = self.sums_L3H.unbind(dim=1)
        out = {
            self.key("sink_frac"): sinks_LH.sum() / samples_LH.sum(),
            self.key("first_mass_mean"): alpha_LH.sum() / samples_LH.sum(),
            self.key("first_mass"): alpha_LH / samples_LH,
        }
        for layer in range(sinks_LH.shape[0]):
            out[self.key("sink_frac", layer_scope(layer))] = sinks_LH[layer].sum() / samples_LH[layer].sum()
        return out

    def default_rules(self) -> list[Rule]:
        """``sink_emerged`` and ``sink_lost`` (both info), see the module docstring."""
        frac = self.key("sink_frac")
        return [
            Threshold(frac, self.emerged_level, name="sink_emerged", severity="info"),
            Collapse(frac, ratio=1.0, margin=self.lost_drop, name="sink_lost", severity="info"),
        ]
