"""MoE routing probe: routing entropy, expert load and dead experts, streaming from the training forward.

Phenomenon: routing collapse (a few experts take the load, or the router's softmax becomes peaked) and load
imbalance. Health metrics of Li, Fan & Zhou, *Where to find Grokking in LLM Pretraining? Monitor
Memorization-to-Generalization without Test* (ICLR 2026) App. E.5; docs/metrics.md B4; the definitions of transformers'
``MoERouterHealthCallback`` and torchtitan's ``tokens_per_expert``. The router is hooked at its gate module
(``blocks.{l}.mlp.hook_router_logits`` / ``hook_expert_indices``), never through ``output_router_logits``, on the
training micro-batches of scheduled steps only (the captures are views of tensors autograd keeps for the step anyway).
"Dead" therefore means no token in the scheduled step's batch.

Logged metrics (``<ns>`` = namespace, scope ``Lxx`` per MoE layer):

======================================  ====================================================  ==========  ======
key                                     meaning                                               range       reduce
======================================  ====================================================  ==========  ======
``<ns>/moe_routing/entropy[/Lxx]``      mean normalised entropy of the routing softmax        [0, 1]      sum/n
``<ns>/moe_routing/load_cv[/Lxx]``      std/mean of the expert load (0 = balanced)            >= 0        sum
``<ns>/moe_routing/max_load_ratio``     E · max load, worst layer                             [1, E/k]    sum
``<ns>/moe_routing/effective_experts``  exp(entropy of the load), mean over layers            [1, E]      sum
``<ns>/moe_routing/dead_frac``          share of (layer, expert) with no token this step      [0, 1]      sum
``<ns>/moe_routing/dead_experts/Lxx``   experts with no token in layer xx                     count       sum
``<ns>/moe_routing/expert_load``        ``[L, E]`` load heatmap (Images tab, slow cadence)    [0, 1]      sum
======================================  ====================================================  ==========  ======

Alerts: ``routing_collapse`` (warning) when ``dead_frac`` exceeds ``dead_level`` or ``entropy`` falls below
``entropy_level``, for 2 evaluations each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters.base import Adapter, expert_indices_name, router_name
from mechmon.alerts import Rule, Threshold
from mechmon.checks import number
from mechmon.functional.routing import expert_counts, load_stats, routing_entropy
from mechmon.functional.stats import mean_or_nan
from mechmon.naming import layer_scope
from mechmon.probe import StreamingProbe

__all__ = ["RoutingProbe"]


class RoutingProbe(StreamingProbe):
    """Routing entropy and expert load of every MoE layer, from the training forward.

    Args:
        dead_level: ``routing_collapse`` fires when more than this share of experts gets no token (0.25).
        entropy_level: ... or when the mean normalised routing entropy falls below it (0.2).
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads router logits ``[B·T, E]`` and selected experts ``[B·T, k]`` per MoE layer.

    Raises:
        ValueError: on levels outside (0, 1); in ``setup``, if the model has no MoE router the adapter knows.

    Example:
        >>> RoutingProbe().name
        'moe_routing'
    """

    name = "moe_routing"
    headline = "load_cv"
    requires = ("blocks.*.mlp.hook_router_logits", "blocks.*.mlp.hook_expert_indices")

    def __init__(self, dead_level: float = 0.25, entropy_level: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        number("RoutingProbe", "dead_level", dead_level, 0, 1)
        number("RoutingProbe", "entropy_level", entropy_level, 0, 1)
        self.dead_level, self.entropy_level = dead_level, entropy_level

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Find the MoE layers and declare ``[L, E]`` counts and ``[L, 2]`` entropy sums."""
        points = adapter.hook_points()
        self.layers = [i for i in range(adapter.n_layers) if router_name(i) in points]
        if not self.layers or adapter.n_experts < 2:
            raise ValueError(f"RoutingProbe needs an MoE model; {adapter!r} has no router the adapter can hook")
        self.n_experts = adapter.n_experts
        self.add_state("counts_LE", torch.zeros(len(self.layers), self.n_experts, dtype=torch.int64), "sum")
        self.add_state("entropy_L2", torch.zeros(len(self.layers), 2), "sum")

    def update(self, captures: Mapping[str, Tensor], batch: Any = None) -> None:
        """Add this micro-batch's entropy sums and expert counts (router outputs ``[B·T, E]`` / ``[B·T, k]``)."""
        self.entropy_L2 += torch.stack([routing_entropy(captures[router_name(i)]) for i in self.layers])
        counts = [expert_counts(captures[expert_indices_name(i)], self.n_experts) for i in self.layers]
        self.counts_LE += torch.stack(counts)

    def compute(self) -> dict[str, Tensor]:
        """Per-layer and summary routing statistics, and the ``[L, E]`` load matrix."""
        entropy_L = mean_or_nan(self.entropy_L2[:, 0], self.entropy_L2[:, 1])
        stats = load_stats(self.counts_LE)
        load_LE = self.counts_LE.float() / self.counts_LE.sum(dim=-1, keepdim=True).clamp_min(1)
        out = {
            self.key("entropy"): entropy_L.mean(),
            self.key("load_cv"): stats["load_cv"].mean(),
            self.key("max_load_ratio"): stats["max_load_ratio"].max(),
            self.key("effective_experts"): stats["effective_experts"].mean(),
            self.key("dead_frac"): stats["dead"].sum() / self.counts_LE.numel(),
            self.key("expert_load"): load_LE,
        }
        for row, layer in enumerate(self.layers):
            scope = layer_scope(layer)
            out[self.key("entropy", scope)] = entropy_L[row]
            out[self.key("load_cv", scope)] = stats["load_cv"][row]
            out[self.key("dead_experts", scope)] = stats["dead"][row]
        return out

    def default_rules(self) -> list[Rule]:
        """``routing_collapse``: too many dead experts, or a peaked router."""
        return [
            Threshold(self.key("dead_frac"), self.dead_level, patience=2, name="routing_collapse"),
            Threshold(self.key("entropy"), self.entropy_level, mode="min", patience=2, name="routing_collapse"),
        ]
