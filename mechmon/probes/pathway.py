"""Grokking-pathway probe: pathway edit distance, pathway consistency and memorization of MoE routing, per group.

Phenomenon: memorization turning into generalization, read from training data alone: the routes (pathways) that
samples of one domain take through the experts first diverge while they are memorized, then converge as the model
generalizes. Li, Fan & Zhou, *Where to find Grokking in LLM Pretraining? Monitor Memorization-to-Generalization
without Test* (ICLR 2026); metrics B1-B3. At scheduled steps one ``no_grad`` forward of the probe set runs under the
router hooks; each sample's token-mean routing weights ``[N, L, E]``, loss and consistency ride in the step's one
transfer. On the host the online memorization criterion (B1) updates each sample's cohort; a worker thread builds the
pathways (0.7-cumulative) and the mean pairwise Levenshtein distances (rapidfuzz) within each group, and the monitor
logs them at the step of the forward they came from. If the previous round is still running, the round is skipped
(counted in ``skipped``): training never waits.

Logged metrics (``<ns>`` = namespace, ``<g>`` = group slug, ``Lxx`` = MoE layer; ``<g>.mem`` = the group's memorized
samples only, the paper's subset, written once the criterion is configured and has at least one (two for distances)):

==============================================  ===============================================  ==========  ==========
key                                             meaning                                          range/unit  reduce
==============================================  ===============================================  ==========  ==========
``<ns>/moe_pathway/edit_dist/<g>[.mem]``        mean pairwise edit distance of full pathways     characters  replicated
``<ns>/moe_pathway/edit_dist/<g>.Lxx``          the same on layer xx's substrings                characters  replicated
``<ns>/moe_pathway/smoothness/<g>[.mem]``       mean adjacent-layer cosine of routing embeddings [-1, 1]     replicated
``<ns>/moe_pathway/consistency_paper/<g>[.mem]`` the paper's printed C (0 = uniform cosines)      <= 1        replicated
``<ns>/moe_pathway/memorized_frac/<g>``         share of the group in the memorized set          [0, 1]      replicated
``<ns>/moe_pathway/revoked/<g>``                samples that left the set so far (cumulative)    count       replicated
``<ns>/moe_pathway/epsilon/<g>``                the loss bound ε in force                        nats        replicated
``<ns>/moe_pathway/loss_nats/<g>``              the group's mean per-sample loss on the probe set nats        replicated
==============================================  ===============================================  ==========  ==========

Smoothness and consistency need two or more MoE layers whose router module has a ``weight`` ``[E, d]`` (HF gates and
``nn.Linear`` routers do); otherwise they are left out with a warning.

Alerts (info, per group): ``generalization_onset`` when ``edit_dist/<g>`` falls (Theil–Sen over 5 evaluations) while
``loss_nats/<g>`` has not improved by 1 % for 3 evaluations; ``generalization_in_progress`` when ``smoothness/<g>``
rises (or falls, ``smoothness_mode="min"``) over 5 evaluations while the loss is flat. None on ``consistency_paper``
(its sign is unsettled, docs/metrics.md B3).
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
from mechmon.checks import fail, integer, number
from mechmon.distributed import rank_zero_warn
from mechmon.functional.memorization import loss_quantile, memorization_step
from mechmon.functional.pathway import (
    mean_edit_distance,
    pair_subset,
    pathway_consistency,
    pathway_selection,
    routing_embeddings,
    sample_losses,
    sample_routing,
    serialize_pathways,
)
from mechmon.naming import layer_scope
from mechmon.probes.fixed_batch import FixedBatchProbe

__all__ = ["PathwayProbe"]


class _Memorization:
    """Host state of the online memorization criterion (B1): loss window, cohorts, ε per group, revocations."""

    def __init__(self, members: dict[str, np.ndarray], epsilon: dict[str, float], window: int, delta: float) -> None:
        n = sum(len(rows) for rows in members.values())
        self.members, self.epsilon, self.delta = members, dict(epsilon), delta
        self.history = np.full((window, n), np.nan)
        self.cohort = np.full(n, -1, dtype=np.int64)
        self.revoked = {g: 0 for g in members}

    def step(self, loss_N: np.ndarray, step: int) -> None:
        """Advance the window by this evaluation's losses and update cohorts (no-op on ε until it is known)."""
        eps_N = np.full(len(loss_N), np.nan)
        for g, rows in self.members.items():
            eps_N[rows] = self.epsilon.get(g, np.nan)
        self.history, self.cohort, revoked = memorization_step(
            self.history, loss_N, eps_N, self.cohort, step, self.delta
        )
        for g, rows in self.members.items():
            self.revoked[g] += int(revoked[rows].sum())

    def memorized(self) -> np.ndarray:
        """Bool mask ``[N]`` of samples in the memorized set."""
        return self.cohort >= 0

    def state(self) -> dict[str, Tensor]:
        groups = list(self.members)
        return {
            "memo.history": torch.from_numpy(self.history.copy()),
            "memo.cohort": torch.from_numpy(self.cohort.copy()),
            "memo.epsilon": torch.tensor([self.epsilon.get(g, float("nan")) for g in groups], dtype=torch.float64),
            "memo.revoked": torch.tensor([self.revoked[g] for g in groups], dtype=torch.int64),
        }

    def load(self, state: Mapping[str, Tensor]) -> None:
        if "memo.cohort" not in state or state["memo.cohort"].numel() != self.cohort.size:
            return
        self.history = state["memo.history"].numpy().copy()
        self.cohort = state["memo.cohort"].numpy().copy()
        for g, eps, rev in zip(
            self.members, state["memo.epsilon"].tolist(), state["memo.revoked"].tolist(), strict=True
        ):
            self.revoked[g] = int(rev)
            if not np.isnan(eps):
                self.epsilon[g] = eps


class PathwayProbe(FixedBatchProbe):
    """Pathway edit distance, consistency and memorization within each data group, off the training thread (B1-B3).

    Args:
        batch: the fixed probe set, ids ``[N, T]`` or a mapping with ``input_ids`` / ``attention_mask`` (required).
        groups: a group label per row (e.g. the domain or source package); ``None`` puts every row in ``"all"``.
        tau: cumulative routing weight at which a layer's pathway stops (0.7, the paper's).
        max_pairs: pairs per group above which a fixed seeded subset of pairs is used (32,640 = all pairs of 256).
        seed: seed of the pair subsets.
        epsilon: the memorization loss bound ε in nats, one float for every group or a mapping group -> float.
        epsilon_at: instead of ``epsilon``, freeze each group's ε at the first evaluation at or after this global
            step, as the ``epsilon_quantile`` of the group's losses then. Neither given: no memorization criterion.
        epsilon_quantile: share of a group under ε when it is frozen (0.225: the paper's 20-25 %).
        delta: stability band δ in nats (0.05).
        window: evaluations over which a loss must stay within δ (3).
        smoothness_mode: ``"max"`` (default) alerts on rising smoothness, ``"min"`` on falling.
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads ``blocks.{l}.mlp.hook_router_logits`` ``[N·T, E]`` (reduced to ``[N, E]`` in the hook), logits, and
        each router module's ``weight`` ``[E, d]``.

    Raises:
        TypeError: without a ``batch``.
        ValueError: if ``groups`` has the wrong length, ``tau`` is outside (0, 1], ``max_pairs < 1``, ``epsilon``
            is not positive or misses a group, both ``epsilon`` and ``epsilon_at`` are given, ``epsilon_quantile``
            is outside (0, 1), ``delta < 0``, ``window < 1`` or ``smoothness_mode`` is not "min"/"max".

    Example:
        >>> ids = torch.randint(1, 100, (4, 16))
        >>> PathwayProbe(ids, groups=["json", "json", "email", "email"], epsilon=1.8).groups
        ['json', 'email']
    """

    name = "moe_pathway"
    headline = "edit_dist"
    requires = ("blocks.*.mlp.hook_router_logits",)
    late_stats = ("edit_dist", "memorized_frac", "revoked", "epsilon")

    def __init__(
        self,
        batch: Any = None,
        groups: Sequence[str] | None = None,
        tau: float = 0.7,
        max_pairs: int = 32_640,
        seed: int = 0,
        epsilon: float | Mapping[str, float] | None = None,
        epsilon_at: int | None = None,
        epsilon_quantile: float = 0.225,
        delta: float = 0.05,
        window: int = 3,
        smoothness_mode: str = "max",
        **kwargs: Any,
    ) -> None:
        if batch is None:
            raise TypeError("PathwayProbe needs batch=: the fixed probe set of training samples (ids [N, T])")
        super().__init__(batch, max_rows=2**31 - 1, **kwargs)
        n = self._given[0].shape[0]
        if groups is not None and not isinstance(groups, (list, tuple)):
            fail("PathwayProbe", "groups", groups, "a list with one group label per row, or None", TypeError)
        labels = ["all"] * n if groups is None else [str(g) for g in groups]
        if len(labels) != n:
            raise ValueError(f"PathwayProbe: {len(labels)} group labels for {n} rows; give one label per row")
        number("PathwayProbe", "tau", tau, 0, 1, closed=(False, True))
        integer("PathwayProbe", "max_pairs", max_pairs, 1)
        integer("PathwayProbe", "seed", seed)
        if smoothness_mode not in ("min", "max"):
            raise ValueError(f"PathwayProbe(smoothness_mode=...) must be 'min' or 'max', got {smoothness_mode!r}")
        self.groups = list(dict.fromkeys(labels))
        self.members = {g: np.array([i for i, lab in enumerate(labels) if lab == g]) for g in self.groups}
        self.slugs = {g: re.sub(r"[^A-Za-z0-9_.\-]+", "_", g) for g in self.groups}
        self.tau, self.max_pairs, self.seed, self.smoothness_mode = tau, max_pairs, seed, smoothness_mode
        fixed = _memorization_args(self.groups, epsilon, epsilon_at, epsilon_quantile, delta, window)
        self.epsilon_at, self.epsilon_quantile = epsilon_at, float(epsilon_quantile)
        self.memo = (
            None if epsilon is None and epsilon_at is None else _Memorization(self.members, fixed, window, delta)
        )
        self.skipped = 0
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: list[tuple[int, Future]] = []

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Find the MoE layers and routers; declare the replicated ``[N, L, E]`` weights and ``[N]`` sample states."""
        points = adapter.hook_points()
        self.layers = [i for i in range(adapter.n_layers) if router_name(i) in points]
        if not self.layers or adapter.n_experts < 2:
            raise ValueError(f"PathwayProbe needs an MoE model; {adapter!r} has no router the adapter can hook")
        super().setup(model, adapter, device)
        n = self.probe_batch.shape[0]
        shape = (n, len(self.layers), adapter.n_experts)
        self.add_state("weights_NLE", torch.zeros(shape), "sum", replicated=True)
        self.add_state("loss_N", torch.zeros(n), "sum", replicated=True)
        self._routers = _router_weights([points[router_name(i)].module for i in self.layers], adapter.n_experts)
        if self._routers:
            self.add_state("smooth_N", torch.zeros(n), "sum", replicated=True)
            self.add_state("consist_N", torch.zeros(n), "sum", replicated=True)
        self._index = {g: torch.as_tensor(m, device=device) for g, m in self.members.items()}

    def reduce_capture(self, name: str, tensor: Tensor) -> Tensor:
        """Router logits ``[N·T, E]`` -> each sample's mean routing weights ``[N, E]``."""
        return sample_routing(tensor, self.attention_mask)

    def update(self, captures: Mapping[str, Tensor], batch: Any = None) -> None:
        """Keep this forward's routing weights, per-sample losses and consistency (identical on every rank)."""
        self.weights_NLE.copy_(torch.stack([captures[router_name(i)] for i in self.layers], dim=1))
        self.loss_N.copy_(sample_losses(captures[LOGITS], self.probe_batch, self.attention_mask))
        if self._routers:
            router_LED = torch.stack([w.detach() for w in self._routers])
            smooth, consist = pathway_consistency(routing_embeddings(self.weights_NLE, router_LED))
            self.smooth_N.copy_(smooth)
            self.consist_N.copy_(consist)

    def compute(self) -> dict[str, Tensor]:
        """Each group's mean loss and consistency (the edit distances come later, from the worker)."""
        out = {}
        for g, idx in self._index.items():
            out[self.key("loss_nats", self.slugs[g])] = self.loss_N[idx].mean()
            if self._routers:
                out[self.key("smoothness", self.slugs[g])] = self.smooth_N[idx].mean()
                out[self.key("consistency_paper", self.slugs[g])] = self.consist_N[idx].mean()
        return out

    def host_inputs(self) -> dict[str, Tensor]:
        """The routing weights (for the worker) and the per-sample states the memorization criterion reads."""
        if self.memo is None:
            return {"weights": self.weights_NLE}
        extra = {"smooth": self.smooth_N, "consist": self.consist_N} if self._routers else {}
        return {"weights": self.weights_NLE, "loss": self.loss_N, **extra}

    def finish(self, host: Mapping[str, np.ndarray], step: int) -> dict[str, float]:
        """Update the memorization criterion; hand the distances to the worker, or skip if it is still busy."""
        memorized, out = self._memorization(host, step)
        if self._jobs and not self._jobs[-1][1].done():
            self.skipped += 1
            return out
        self._pool = self._pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="mechmon-pathway")
        weights = np.array(host["weights"], copy=True)
        self._jobs.append((step, self._pool.submit(self._distances, weights, memorized)))
        return out

    def _memorization(self, host: Mapping[str, np.ndarray], step: int) -> tuple[np.ndarray | None, dict[str, float]]:
        """B1 on the host: freeze ε if due, step the criterion, and the memorized-subset means."""
        if self.memo is None:
            return None, {}
        loss = np.asarray(host["loss"], dtype=np.float64)
        if self.epsilon_at is not None and not self.memo.epsilon and step >= self.epsilon_at:
            self.memo.epsilon = loss_quantile(loss, self.members, self.epsilon_quantile)
        self.memo.step(loss, step)
        memorized, out = self.memo.memorized(), {}
        for g, rows in self.members.items():
            slug, mem = self.slugs[g], rows[memorized[rows]]
            if g not in self.memo.epsilon:
                continue
            out[self.key("epsilon", slug)] = self.memo.epsilon[g]
            out[self.key("memorized_frac", slug)] = len(mem) / len(rows)
            out[self.key("revoked", slug)] = float(self.memo.revoked[g])
            for stat, name in (("smoothness", "smooth"), ("consistency_paper", "consist")):
                if len(mem) and name in host:
                    out[self.key(stat, f"{slug}.mem")] = float(np.mean(host[name][mem]))
        return memorized, out

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

    def state_dict(self) -> dict[str, Tensor]:
        """The declared states plus the memorization criterion's window, cohorts, ε and revocations."""
        return {**super().state_dict(), **(self.memo.state() if self.memo is not None else {})}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the states and the memorization criterion (ignored if the probe set changed size)."""
        super().load_state_dict(state)
        if self.memo is not None:
            self.memo.load(state)

    def _distances(self, weights_NLE: np.ndarray, memorized: np.ndarray | None = None) -> dict[str, float]:
        """Worker: pathways, then mean pairwise edit distances per group (all, memorized) and per layer."""
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
            mem = rows[memorized[rows]] if memorized is not None else rows[:0]
            if len(mem) >= 2:
                mem_pairs = pair_subset(len(mem), self.max_pairs, self.seed)
                out[self.key("edit_dist", f"{slug}.mem")] = mean_edit_distance([pathways[i] for i in mem], mem_pairs)
        return out

    def default_rules(self) -> list[Rule]:
        """``generalization_onset`` and ``generalization_in_progress`` per group."""
        rules: list[Rule] = []
        for g in self.groups:
            slug = self.slugs[g]
            flat = {"min_rel_delta": 0.01, "patience": 3, "name": "loss_flat"}
            falling = Trend(self.key("edit_dist", slug), window=5, mode="min", name="pathway_falling")
            rules.append(
                Compound(
                    [falling, Plateau(self.key("loss_nats", slug), **flat)],
                    name="generalization_onset",
                    severity="info",
                )
            )
            smoother = Trend(self.key("smoothness", slug), window=5, mode=self.smoothness_mode, name="smoothness_trend")
            rules.append(
                Compound(
                    [smoother, Plateau(self.key("loss_nats", slug), **flat)],
                    name="generalization_in_progress",
                    severity="info",
                )
            )
        return rules


def _router_weights(routers: list[nn.Module], n_experts: int) -> list[Tensor]:
    """Each router's ``weight`` ``[E, d]`` (all of one width, two or more layers), else ``[]`` with a warning."""
    weights = [getattr(r, "weight", None) for r in routers]
    ok = all(isinstance(w, Tensor) and w.ndim == 2 and w.shape[0] == n_experts for w in weights)
    if ok and len(weights) >= 2 and len({w.shape[1] for w in weights}) == 1:
        return weights
    rank_zero_warn(
        "PathwayProbe: pathway consistency needs >= 2 MoE layers whose router module has a weight [E, d]; "
        f"found {[type(r).__name__ for r in routers]}. Smoothness and consistency_paper are left out."
    )
    return []


def _memorization_args(
    groups: list[str],
    epsilon: float | Mapping[str, float] | None,
    epsilon_at: int | None,
    quantile: float,
    delta: float,
    window: int,
) -> dict[str, float]:
    """Validate the B1 arguments (messages name the fix); returns the fixed ε per group (empty without one)."""
    if epsilon is not None and epsilon_at is not None:
        raise ValueError("PathwayProbe: give epsilon= (fixed ε) or epsilon_at= (ε frozen as a quantile), not both")
    if isinstance(epsilon, Mapping) and set(groups) - set(epsilon):
        raise ValueError(f"PathwayProbe(epsilon=...) misses groups {sorted(set(groups) - set(epsilon))}")
    if epsilon_at is not None:
        integer("PathwayProbe", "epsilon_at", epsilon_at, 0)
    number("PathwayProbe", "epsilon_quantile", quantile, 0, 1)
    number("PathwayProbe", "delta", delta, 0, closed=(True, False))
    integer("PathwayProbe", "window", window, 1)
    if epsilon is None:
        return {}
    per_group = epsilon if isinstance(epsilon, Mapping) else dict.fromkeys(groups, epsilon)
    return {g: number("PathwayProbe", "epsilon", per_group[g], 0) for g in groups}
