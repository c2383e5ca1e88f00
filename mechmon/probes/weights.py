"""Weight-norm probe: global and per-tensor L2 norms of the trainable weights and their growth.

Phenomenon: unbounded weight-norm growth under naive loss minimization precedes softmax collapse, Prieto, Barsbey,
Mediano, Birdal, *Grokking at the Edge of Numerical Stability* (ICLR 2025); docs/metrics.md A4. Reads parameters only
(cost ``weights``), once per scheduled step, right after the optimizer step.

Logged metrics (``<ns>`` = namespace; ``<param>`` a tracked parameter name, default the output layer's weight):

=================================  ===================================================  ==========  ==========
key                                meaning                                              range/unit  reduce
=================================  ===================================================  ==========  ==========
``<ns>/weights/norm``              global norm √Σ‖p‖² over trainable tensors            >= 0        replicated
``<ns>/weights/norm/<param>``      norm of one tracked tensor                           >= 0        replicated
``<ns>/weights/norm_growth``       relative change of ``norm`` since the last evaluation  ratio      -
=================================  ===================================================  ==========  ==========
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters.base import Adapter
from mechmon.functional.weights import square_norms
from mechmon.params import check_globs, local, shares, tracked_params
from mechmon.probe import WEIGHTS, StreamingProbe

__all__ = ["WeightsProbe"]


class WeightsProbe(StreamingProbe):
    """Global and per-tensor weight norms (docs/metrics.md A4).

    Args:
        params: globs over parameter names whose norms get their own key; default the output layer's weight.
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Raises:
        ValueError: in ``setup``, if a glob matches no parameter.
        TypeError: if ``params`` is not a list of strings.

    Example:
        >>> WeightsProbe(params=["*head*"]).name
        'weights'
    """

    name = "weights"
    headline = "norm"
    requires = ()
    source = WEIGHTS  # norms of the weights alone: replayable over checkpoints
    late_stats = ("norm_growth",)  # from the second evaluation on

    def __init__(self, params: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.param_globs = check_globs(params)

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Resolve the tensors; states are replicated (identical across data-parallel ranks) or, sharded, summed."""
        self.named, self.tracked = tracked_params(adapter, self.param_globs)
        self.shares_P = shares(self.named, device, adapter.pipeline_stages)  # each held part counted once
        self.add_state(
            "sq_P", torch.zeros(len(self.named), dtype=torch.float64), "sum", replicated=self.shares_P is None
        )
        self.prev_norm = torch.zeros((), dtype=torch.float64, device=device)
        self._evaluated = self._has_prev = False  # host flags (no sync): evaluated since the last reset; a baseline

    def evaluate(self) -> None:
        """Squared norms of every trainable tensor after this step's update."""
        sq_P = square_norms([local(p) for _, p in self.named])
        self.sq_P.copy_(sq_P if self.shares_P is None else sq_P * self.shares_P)
        self._evaluated = True

    def compute(self) -> dict[str, Tensor]:
        """Global norm, tracked norms, growth since the previous evaluation (absent at the first).

        The norm is taken from the reduced state (summed over shards), so under FSDP it is the whole model's. Pure:
        the baseline moves in :meth:`reset`, after the evaluation is published.
        """
        norm = self.sq_P.sum().sqrt()
        out = {self.key("norm"): norm}
        if self._has_prev:
            out[self.key("norm_growth")] = (norm - self.prev_norm) / self.prev_norm.clamp_min(1e-300)
        for i in self.tracked:
            out[self.key("norm", self.named[i][0])] = self.sq_P[i].sqrt()
        return out

    def reset(self) -> None:
        """After an evaluation is published: its norm becomes the baseline of the next growth, then the states reset."""
        if self._evaluated:
            self.prev_norm.copy_(self.sq_P.sum().sqrt())  # device copy, no sync
            self._evaluated, self._has_prev = False, True
        super().reset()
