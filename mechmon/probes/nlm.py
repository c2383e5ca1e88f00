"""NLM probe: alignment of the descent direction with the weights (naive loss minimization).

Phenomenon: past 100% training accuracy, gradients align with the direction that only scales the logits (for
positively homogeneous networks, the weights themselves), which drives softmax collapse. Prieto, Barsbey, Mediano,
Birdal, *Grokking at the Edge of Numerical Stability* (ICLR 2025); docs/metrics.md A5. mechmon's sign convention:
positive means the descent direction grows the weights.

Gradient form: c_p = ⟨-g_p, p⟩/(‖g_p‖‖p‖), read in ``on_before_optimizer_step`` (after accumulation and AMP
unscaling, before clipping) without a host sync; steps with non-finite gradients are skipped on the device.
Update form (for adaptive optimizers): c = ⟨u, θ⟩/(‖u‖‖θ‖) with u = θ_{t+1} - θ_t plus, for decoupled weight decay
(AdamW), the decay term η·λ·θ_t added back, so the cosine is the optimizer's own direction. It needs a pre-step copy
of the tracked tensors, taken at scheduled steps only and freed right after.

Logged metrics (``<ns>`` = namespace; ``<param>`` a tracked tensor, default the output layer's weight):

================================  ====================================================  ========  ==========
key                               meaning                                               range     reduce
================================  ====================================================  ========  ==========
``<ns>/nlm/cos_grad``             global cosine of -grad with the weights               [-1, 1]   replicated
``<ns>/nlm/cos_grad/<param>``     the same for one tracked tensor                       [-1, 1]   replicated
``<ns>/nlm/cos_grad_max``         max over all tensors                                  [-1, 1]   replicated
``<ns>/nlm/cos_grad_mean``        mean over all tensors                                 [-1, 1]   replicated
``<ns>/nlm/par_frac``             global cosine squared (gradient energy along θ)      [0, 1]    replicated
``<ns>/nlm/par_frac_mean``        mean over tensors of the per-tensor cosine squared    [0, 1]    replicated
``<ns>/nlm/cos_update``           decay-free update cosine over the tracked tensors     [-1, 1]   replicated
``<ns>/nlm/cos_update/<param>``   the same per tracked tensor                           [-1, 1]   replicated
================================  ====================================================  ========  ==========
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters.base import Adapter
from mechmon.alerts import Compound, Rule, Threshold
from mechmon.checks import fail, flag, integer, number
from mechmon.functional.weights import cosines, dots_and_square_norms, global_cosine
from mechmon.naming import metric_key
from mechmon.params import check_globs, local, local_grad, shares, tracked_params
from mechmon.probe import GRADIENTS, StreamingProbe

__all__ = ["NLMProbe"]


class NLMProbe(StreamingProbe):
    """Gradient-weight and update-weight alignment cosines (docs/metrics.md A5).

    Args:
        params: globs over parameter names with their own keys (and the update form); default the output weight.
        level: cosine of the tracked tensor (the first) above which the NLM-regime alert counts (0.7).
        patience: evaluations the cosine must stay above ``level`` (3).
        accuracy_key: key of the train accuracy gating the alert; default ``<ns>/logits/accuracy_frac``
            (from :class:`~mechmon.probes.LogitsProbe`).
        update_form: also log ``cos_update`` (costs a copy of the tracked tensors at scheduled steps).
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Raises:
        ValueError: on ``level`` outside (-1, 1) or ``patience < 1``; in ``setup`` if a glob matches nothing.
        TypeError: if ``params`` is not a list of strings.

    Example:
        >>> NLMProbe(level=0.8).name
        'nlm'
    """

    name = "nlm"
    headline = "cos_grad"
    optional_stats = ("cos_update",)  # NaN after a step that moved no weight (learning rate 0 at a warmup's start)
    requires = ()
    source = GRADIENTS

    def __init__(
        self,
        params: Sequence[str] | None = None,
        level: float = 0.7,
        patience: int = 3,
        accuracy_key: str | None = None,
        update_form: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        number("NLMProbe", "level", level, -1, 1)
        integer("NLMProbe", "patience", patience, 1)
        if accuracy_key is not None and not isinstance(accuracy_key, str):
            fail("NLMProbe", "accuracy_key", accuracy_key, "a metric key string or None", TypeError)
        flag("NLMProbe", "update_form", update_form)
        self.param_globs = check_globs(params)
        self.level, self.patience, self.accuracy_key, self.update_form = level, patience, accuracy_key, update_form
        self._before: list[Tensor] = []
        self._decay: list[float] = []

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Resolve tensors; states are replicated (gradients are identical across data-parallel ranks)."""
        self.named, self.tracked = tracked_params(adapter, self.param_globs)
        self.shares_P = shares(self.named, device, adapter.pipeline_stages)  # each held part counted once
        rep = self.shares_P is None
        self.shares_K = None if rep else self.shares_P[self.tracked]
        self.add_state("grad_3P", torch.zeros(3, len(self.named), dtype=torch.float64), "sum", replicated=rep)
        self.add_state("update_3K", torch.zeros(3, len(self.tracked), dtype=torch.float64), "sum", replicated=rep)

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradient statistics, and the pre-step copy of the tracked tensors for the update form."""
        params = [local(p) for _, p in self.named]
        grads = [local_grad(p) for _, p in self.named]
        stats = dots_and_square_norms(grads, params, sign=-1.0)  # the descent direction, without a negated copy
        finite = torch.isfinite(stats).all()  # caveat: a non-finite step is skipped on the device, no sync
        stats = stats if self.shares_P is None else stats * self.shares_P
        self.grad_3P.copy_(torch.where(finite, stats, torch.zeros_like(stats)))
        if self.update_form:
            tracked = [self.named[i][1] for i in self.tracked]
            self._before = [local(p).detach().clone() for p in tracked]
            self._decay = [_decoupled_decay(optimizer, p) for p in tracked]  # by identity: the sharded parameter

    def evaluate(self) -> None:
        """Update-form statistics from the copy taken before the step; frees the copy."""
        if not self._before:
            return
        after = [local(self.named[i][1]).detach() for i in self.tracked]
        steps = [a - b + decay * b for a, b, decay in zip(after, self._before, self._decay, strict=True)]
        stats = dots_and_square_norms(steps, self._before)
        self.update_3K.copy_(stats if self.shares_K is None else stats * self.shares_K)
        self._before, self._decay = [], []

    def compute(self) -> dict[str, Tensor]:
        """Cosines and parallel fractions (0 when no gradient was seen)."""
        cos_P = cosines(self.grad_3P)
        cos = global_cosine(self.grad_3P)
        out = {
            self.key("cos_grad"): cos,
            self.key("cos_grad_max"): cos_P.max(),
            self.key("cos_grad_mean"): cos_P.mean(),
            self.key("par_frac"): cos**2,
            self.key("par_frac_mean"): (cos_P**2).mean(),
        }
        for i in self.tracked:
            out[self.key("cos_grad", self.named[i][0])] = cos_P[i]
        if self.update_form:
            out[self.key("cos_update")] = global_cosine(self.update_3K)
            cos_K = cosines(self.update_3K)
            for k, i in enumerate(self.tracked):
                out[self.key("cos_update", self.named[i][0])] = cos_K[k]
        return out

    def default_rules(self) -> list[Rule]:
        """NLM regime (warning).

        The first tracked tensor's cosine stays above ``level`` for ``patience`` evaluations while train accuracy
        is at least 0.99.
        """
        cos_key = self.key("cos_grad", self.named[self.tracked[0]][0]) if self.tracked else self.key("cos_grad")
        acc_key = self.accuracy_key or metric_key("logits", "accuracy_frac", namespace=self.namespace)
        members = [Threshold(cos_key, self.level, patience=self.patience), Threshold(acc_key, 0.99, mode="max")]
        return [Compound(members, name="nlm_regime", severity="warning")]


def _decoupled_decay(optimizer: torch.optim.Optimizer, param: Tensor) -> float:
    """η·λ of ``param``'s group for decoupled weight decay (AdamW and ``decoupled_weight_decay``), else 0."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # unwrap LightningOptimizer
    decoupled = isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            if decoupled or group.get("decoupled_weight_decay", False):
                return float(group.get("lr", 0.0)) * float(group.get("weight_decay", 0.0))
            return 0.0
    return 0.0
