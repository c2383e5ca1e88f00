"""Grokking-pathway probe: pathway edit distance of MoE routing on a fixed, grouped probe set, computed off-thread.

Phenomenon: memorization turning into generalization, read from training data alone: the routes (pathways) that
samples of one domain take through the experts first diverge while they are memorized, then converge as the model
generalizes. Li, Fan & Zhou, *Where to find Grokking in LLM Pretraining? Monitor Memorization-to-Generalization
without Test* (ICLR 2026); METRICS.md B2. At scheduled steps one ``no_grad`` forward of the probe set runs under the
router hooks; each sample's token-mean routing weights ``[N, L, E]`` ride in the step's one transfer; a worker thread
builds the pathways (0.7-cumulative) and the mean pairwise Levenshtein distances (rapidfuzz) within each group, and
the monitor logs them at the step of the forward they came from. If the previous round is still running, the round
is skipped (counted in ``skipped``): training never waits.

Logged metrics (``<ns>`` = namespace, ``<g>`` = group slug, ``Lxx`` = MoE layer):

========================================  ==================================================  ==========  ============
key                                       meaning                                             range/unit  reduce
========================================  ==================================================  ==========  ============
``<ns>/moe_pathway/edit_dist/<g>``        mean pairwise edit distance of full pathways        characters  replicated
``<ns>/moe_pathway/edit_dist/<g>.Lxx``    the same on layer xx's substrings                   characters  replicated
``<ns>/moe_pathway/loss_nats/<g>``        the group's mean per-sample loss on the probe set   nats        replicated
========================================  ==================================================  ==========  ============

Alert: ``generalization_onset`` (info, per group) when ``edit_dist/<g>`` falls (Theil–Sen over 5 evaluations) while
``loss_nats/<g>`` has not improved by 1 % for 3 evaluations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mechmon.adapters.base import LOGITS, Adapter, router_name
from mechmon.alerts import Compound, Plateau, Rule, Trend
from mechmon.functional.pathway import (
    mean_edit_distance,
    pair_subset,
    pathway_selection,
    sample_losses,
    sample_routing,
    serialize_pathways,
)
from mechmon.naming import layer_scope
from mechmon.probes.fixed_batch import FixedBatchProbe
from mechmon.registry import register_probe

__all__ = ["PathwayProbe"]


@register_probe
class PathwayProbe(FixedBatchProbe):
    """Pathway edit distance within each data group, per layer, off the training thread (METRICS.md B2).

    Args:
        batch: the fixed probe set, ids ``[N, T]`` or a mapping with ``input_ids`` / ``attention_mask`` (required).
        groups: a group label per row (e.g. the domain or source package); ``None`` puts every row in ``"all"``.
        tau: cumulative routing weight at which a layer's pathway stops (0.7, the paper's).
        max_pairs: pairs per group above which a fixed seeded subset of pairs is used (32,640 = all pairs of 256).
        seed: seed of the pair subsets.
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads ``blocks.{l}.mlp.hook_router_logits`` ``[N·T, E]`` (reduced to ``[N, E]`` in the hook) and logits.

    Raises:
        TypeError: without a ``batch``.
        ValueError: if ``groups`` has the wrong length, ``tau`` is outside (0, 1] or ``max_pairs < 1``.

    Example:
        >>> ids = torch.randint(1, 100, (4, 16))
        >>> PathwayProbe(ids, groups=["json", "json", "email", "email"]).groups
        ['json', 'email']
    """

    name = "moe_pathway"
    requires = ("blocks.*.mlp.hook_router_logits",)
    higher_is_better = False

    def __init__(
        self,
        batch: Any = None,
        groups: Sequence[str] | None = None,
        tau: float = 0.7,
        max_pairs: int = 32_640,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if batch is None:
            raise TypeError("PathwayProbe needs batch=: the fixed probe set of training samples (ids [N, T])")
        super().__init__(batch, max_rows=2**31 - 1, **kwargs)
        n = self._given[0].shape[0]
        labels = ["all"] * n if groups is None else [str(g) for g in groups]
        if len(labels) != n:
            raise ValueError(f"PathwayProbe: {len(labels)} group labels for {n} rows; give one label per row")
        if not 0 < tau <= 1 or not isinstance(max_pairs, int) or max_pairs < 1:
            raise ValueError(f"PathwayProbe needs 0 < tau <= 1 and max_pairs >= 1, got {tau!r}, {max_pairs!r}")
        self.groups = list(dict.fromkeys(labels))
        self.members = {g: np.array([i for i, lab in enumerate(labels) if lab == g]) for g in self.groups}
        self.slugs = {g: re.sub(r"[^A-Za-z0-9_.\-]+", "_", g) for g in self.groups}
        self.tau, self.max_pairs, self.seed = tau, max_pairs, seed
        self.skipped = 0
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: list[tuple[int, Future]] = []

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Find the MoE layers; declare the replicated ``[N, L, E]`` weights and ``[N]`` losses."""
        points = adapter.hook_points()
        self.layers = [i for i in range(adapter.n_layers) if router_name(i) in points]
        if not self.layers or adapter.n_experts < 2:
            raise ValueError(f"PathwayProbe needs an MoE model; {adapter!r} has no router the adapter can hook")
        super().setup(model, adapter, device)
        n = self.probe_batch.shape[0]
        shape = (n, len(self.layers), adapter.n_experts)
        self.add_state("weights_NLE", torch.zeros(shape), "sum", replicated=True)
        self.add_state("loss_N", torch.zeros(n), "sum", replicated=True)
        self._index = {g: torch.as_tensor(m, device=device) for g, m in self.members.items()}
        self.to(device)

    def reduce_capture(self, name: str, tensor: Tensor) -> Tensor:
        """Router logits ``[N·T, E]`` -> each sample's mean routing weights ``[N, E]``."""
        return sample_routing(tensor, self.attention_mask)

    def update(self, captures: Mapping[str, Tensor], batch: Any = None) -> None:
        """Keep this forward's routing weights and per-sample losses (identical on every rank)."""
        self.weights_NLE.copy_(torch.stack([captures[router_name(i)] for i in self.layers], dim=1))
        self.loss_N.copy_(sample_losses(captures[LOGITS], self.probe_batch, self.attention_mask))

    def compute(self) -> dict[str, Tensor]:
        """Each group's mean loss (the edit distances come later, from the worker)."""
        return {self.key("loss_nats", self.slugs[g]): self.loss_N[idx].mean() for g, idx in self._index.items()}

    def host_inputs(self) -> dict[str, Tensor]:
        """The routing weights, for the worker."""
        return {"weights": self.weights_NLE}

    def finish(self, host: Mapping[str, np.ndarray], step: int) -> dict[str, float]:
        """Hand the distances of this step to the worker, or skip the round if the last one is still running."""
        if self._jobs and not self._jobs[-1][1].done():
            self.skipped += 1
            return {}
        self._pool = self._pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="mechmon-pathway")
        self._jobs.append((step, self._pool.submit(self._distances, np.array(host["weights"], copy=True))))
        return {}

    def late_results(self, wait: bool = False) -> list[tuple[int, dict[str, float]]]:
        """Finished rounds, oldest first, each stamped with the step of its probe forward."""
        done = []
        while self._jobs and (wait or self._jobs[0][1].done()):
            step, job = self._jobs.pop(0)
            done.append((step, job.result()))
        return done

    def close(self) -> None:
        """Stop the worker (its queue is empty after ``late_results(wait=True)``)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _distances(self, weights_NLE: np.ndarray) -> dict[str, float]:
        """Worker: pathways, then mean pairwise edit distances per group, overall and per layer."""
        order, keep = pathway_selection(torch.from_numpy(weights_NLE), self.tau)
        pathways, per_layer = serialize_pathways(order.numpy(), keep.numpy())
        out = {}
        for g, rows in self.members.items():
            pairs = pair_subset(len(rows), self.max_pairs, self.seed)
            slug = self.slugs[g]
            out[self.key("edit_dist", slug)] = mean_edit_distance([pathways[i] for i in rows], pairs)
            for row, layer in enumerate(self.layers):
                strings = [per_layer[row][i] for i in rows]
                out[self.key("edit_dist", f"{slug}.{layer_scope(layer)}")] = mean_edit_distance(strings, pairs)
        return out

    def default_rules(self) -> list[Rule]:
        """``generalization_onset`` per group."""
        rules: list[Rule] = []
        for g in self.groups:
            falling = Trend(self.key("edit_dist", self.slugs[g]), window=5, mode="min", name="pathway_falling")
            flat = Plateau(self.key("loss_nats", self.slugs[g]), min_rel_delta=0.01, patience=3, name="loss_flat")
            rules.append(Compound([falling, flat], name="generalization_onset", severity="info"))
        return rules
