"""Max attention logit probe: the largest pre-softmax attention logit per layer and head.

Phenomenon: attention-logit growth, the first small-scale instability of Wortsman et al., *Small-scale proxies for
large-scale Transformer training instabilities* (2023): logits grow until attention is one-hot and the loss
diverges; qk-layernorm removes it. Megatron-LM logs ``max_attention_logit`` and clips it with QK-Clip (τ = 100,
after Kimi K2's MuonClip). docs/metrics.md A6. Snapshot probe on the fixed batch, from each SDPA call's own q, k, scale,
mask and biases (see :mod:`mechmon.probes.attention_rows`).

Logged metrics (``<ns>`` = namespace, scope ``Lxx`` per layer):

================================  =====================================================  ==========  ======
key                               meaning                                                range/unit  reduce
================================  =====================================================  ==========  ======
``<ns>/attn_logits/max``          max over layers, heads, rows and visible keys          logit       max
``<ns>/attn_logits/max/Lxx``      the same for layer xx                                  logit       max
``<ns>/attn_logits/max_mean``     mean over every (layer, head) of its max               logit       max
``<ns>/attn_logits/head_max``     ``[L, H]`` heatmap of the per-head max, slow cadence   logit       max
================================  =====================================================  ==========  ======

A freshly initialised model has max logits of order 1; Wortsman et al.'s unstable runs reach 10³-10⁴.
Alert: ``attention_logit_growth`` (warning) when ``max`` is above ``level`` (τ = 100, the QK-Clip threshold)
for ``patience`` evaluations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechmon.alerts import Rule, Threshold
from mechmon.checks import integer, number
from mechmon.functional.attention_stats import head_max_logit
from mechmon.functional.stats import finite_or_nan
from mechmon.naming import layer_scope
from mechmon.probes.attention_rows import AttentionRowsProbe

__all__ = ["AttentionLogitProbe"]


class AttentionLogitProbe(AttentionRowsProbe):
    """Max attention logit per layer and head on the fixed batch (docs/metrics.md A6).

    Args:
        batch: fixed batch (ids ``[B, T]`` or a mapping); ``None`` takes the first training batch.
        level: τ of the ``attention_logit_growth`` alert (100, QK-Clip's default).
        patience: evaluations above ``level`` before it fires (1).
        max_rows: rows kept from the batch (8).
        seq_len: tokens kept per row (``None``: all).
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads ``blocks.{l}.attn.hook_row_stats`` ``[B, H, T, 4]`` (from the SDPA calls' q ``[B, H, T, d]`` and k).

    Raises:
        ValueError: on bad arguments. In ``setup`` (RuntimeError): a model whose attention makes no SDPA call.

    Example:
        >>> AttentionLogitProbe(level=100).name
        'attn_logits'
    """

    name = "attn_logits"
    unmeasured_hint = (
        "TransformerLens 4 (TransformerBridge) exposes attention probabilities, not pre-softmax scores: the max "
        "attention logit is not measurable there (entropy and sinks are)"
    )
    headline = "max"

    def __init__(self, batch: Any = None, level: float = 100.0, patience: int = 1, **kwargs: Any) -> None:
        number("AttentionLogitProbe", "level", level, 0)
        integer("AttentionLogitProbe", "patience", patience, 1)
        self.level, self.patience = float(level), patience
        super().__init__(batch, **kwargs)

    def declare(self, n_layers: int, n_heads: int) -> None:
        """``[L, H]`` running max of the logits (max across ranks)."""
        self.add_state("max_LH", torch.full((n_layers, n_heads), float("-inf")), "max")

    def reduce_rows(self, stats_BHQ4: Tensor, valid_BQ: Tensor) -> Tensor:
        """``[H]`` max logit of the layer."""
        return head_max_logit(stats_BHQ4, valid_BQ)

    def accumulate(self, per_layer: Tensor) -> None:
        """Keep the elementwise max."""
        self.max_LH.copy_(torch.maximum(self.max_LH, per_layer))

    def compute(self) -> dict[str, Tensor]:
        """The max, the per-layer maxima, the mean of the per-head maxima and the ``[L, H]`` matrix (NaN unseen)."""
        max_LH = finite_or_nan(self.max_LH)
        out = {
            self.key("max"): finite_or_nan(self.max_LH.max()),
            self.key("max_mean"): max_LH.mean(),
            self.key("head_max"): max_LH,
        }
        for layer, top in enumerate(finite_or_nan(self.max_LH.amax(dim=1))):
            out[self.key("max", layer_scope(layer))] = top
        return out

    def default_rules(self) -> list[Rule]:
        """``attention_logit_growth``: ``max`` above ``level`` for ``patience`` evaluations."""
        return [Threshold(self.key("max"), self.level, patience=self.patience, name="attention_logit_growth")]
