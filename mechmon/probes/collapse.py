"""Representation-collapse probe: mean pairwise cosine of hidden states across positions, and the loss plateau.

Phenomenon: during the loss plateau of abrupt learning, hidden states at different positions become nearly
parallel (mean cosine ≈ 0.95 on the moving-window-sum task) and fall apart as the loss drops. Gopalani & Hu,
*What Happens During the Loss Plateau? Understanding Abrupt Learning in Transformers* (NeurIPS 2025); metrics C1,
in its teacher-forced form on a fixed batch (see :class:`~mechmon.probes.fixed_batch.FixedBatchProbe`).

Logged metrics (``<ns>`` = namespace, scope ``Lxx`` per layer):

==================================  ===================================================  ===========  ======
key                                 meaning                                              range/unit   reduce
==================================  ===================================================  ===========  ======
``<ns>/repr_collapse/mean_cos``     mean pairwise cosine, final-norm hidden states       [-1, 1]      sum/n
``<ns>/repr_collapse/mean_cos/Lxx`` the same on the residual stream after block xx       [-1, 1]      sum/n
``<ns>/repr_collapse/loss_nats``    teacher-forced next-token loss at the positions      nats         sum/n
==================================  ===================================================  ===========  ======

Alerts: ``plateau_start`` (warning) when the loss has not improved by ``flat_rel_delta`` for ``flat_evals``
evaluations and ``mean_cos > cos_level`` for 2; ``plateau_exit`` (info) once inside, when ``mean_cos`` falls
``exit_margin`` below its running max or the loss falls by ``exit_loss_drop`` (relative).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters.base import FINAL_NORM, LOGITS, Adapter, resid_name
from mechmon.alerts import Collapse, Phase, Plateau, Rule, Threshold
from mechmon.checks import flag, integer, number
from mechmon.functional.collapse import mean_pairwise_cosine
from mechmon.functional.plateau import select_positions
from mechmon.functional.stats import mean_or_nan
from mechmon.naming import layer_scope
from mechmon.probes.fixed_batch import FixedBatchProbe, check_positions

__all__ = ["CollapseProbe"]


class CollapseProbe(FixedBatchProbe):
    """Mean pairwise cosine of hidden states across positions, per layer, and the loss at the same positions.

    Args:
        batch: fixed batch (ids ``[B, T]`` or a mapping); ``None`` takes the first training batch.
        positions: positions whose hidden states enter, e.g. the output positions of a task without the first
            (the paper excludes p₀); ``None`` keeps every non-pad position except position 0 (the sink).
        per_layer: also measure the residual stream after every block.
        cos_level: the "collapsed" level of the plateau alert (0.9).
        flat_rel_delta: relative improvement of the loss below which it counts as flat (0.01).
        flat_evals: evaluations the loss must stay flat (3).
        exit_margin: fall of ``mean_cos`` below its running max that marks the exit (0.1).
        exit_loss_drop: relative fall of the loss inside the plateau that marks the exit (0.2).
        max_rows: rows kept from the batch.
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads ``ln_final.hook_normalized`` and ``blocks.{l}.hook_resid_post`` ``[B, T, D]``, logits ``[B, T, V]``.

    Raises:
        ValueError: on bad arguments, or when the batch is too short for ``positions``.

    Example:
        >>> probe = CollapseProbe(positions=range(17, 32))
        >>> probe.name
        'repr_collapse'
    """

    name = "repr_collapse"
    headline = "mean_cos"

    def __init__(
        self,
        batch: Any = None,
        positions: Sequence[int] | None = None,
        per_layer: bool = True,
        cos_level: float = 0.9,
        flat_rel_delta: float = 0.01,
        flat_evals: int = 3,
        exit_margin: float = 0.1,
        exit_loss_drop: float = 0.2,
        max_rows: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch, max_rows, **kwargs)
        self.positions = check_positions(positions, type(self).__name__)
        flag("CollapseProbe", "per_layer", per_layer)
        number("CollapseProbe", "cos_level", cos_level, -1, 1)
        number("CollapseProbe", "exit_margin", exit_margin, 0, 2)
        number("CollapseProbe", "exit_loss_drop", exit_loss_drop, 0, 1)
        number("CollapseProbe", "flat_rel_delta", flat_rel_delta, 0, closed=(True, False))
        integer("CollapseProbe", "flat_evals", flat_evals, 1)
        self.per_layer, self.cos_level, self.flat_rel_delta, self.flat_evals = (
            per_layer,
            cos_level,
            flat_rel_delta,
            flat_evals,
        )
        self.exit_margin, self.exit_loss_drop = exit_margin, exit_loss_drop
        self.requires = (FINAL_NORM, "blocks.*.hook_resid_post") if per_layer else (FINAL_NORM,)

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Declare ``[L + 1]`` cosine sums (layers, then the final norm) and the loss sum."""
        super().setup(model, adapter, device)
        self.names = [resid_name(i) for i in range(adapter.n_layers)] * self.per_layer + [FINAL_NORM]
        n = len(self.names)
        self.add_state("cos_sum", torch.zeros(n), "sum")
        self.add_state("cos_count", torch.zeros(n, dtype=torch.int64), "sum")
        self.add_loss_state()

    def prepare(self) -> None:
        """Select the positions (right padding and position 0 excluded by default)."""
        self.mask_BT = select_positions(self.attention_mask, self.positions)

    def reduce_capture(self, name: str, tensor: Tensor) -> Tensor:
        """``[B, T, D]`` hidden states -> ``[sum of per-sequence means, sequences]``."""
        cos_B, valid_B = mean_pairwise_cosine(tensor, self.mask_BT)
        return torch.stack([cos_B.sum(), valid_B.sum().float()])

    def update(self, captures: Mapping[str, Tensor], batch: Any = None) -> None:
        """Add this forward's cosine sums and the loss at the positions."""
        sums_N2 = torch.stack([captures[name] for name in self.names])
        self.cos_sum += sums_N2[:, 0]
        self.cos_count += sums_N2[:, 1].long()
        self.add_position_loss(captures[LOGITS], self.mask_BT)

    def compute(self) -> dict[str, Tensor]:
        """Mean cosine per layer and for the final norm (NaN when no sequence had two positions), and the loss."""
        cos = mean_or_nan(self.cos_sum, self.cos_count)
        cos = torch.where(self.cos_count > 0, cos, torch.full_like(cos, float("nan")))
        out = {self.key("mean_cos"): cos[-1], self.key("loss_nats"): self.loss_nats()}
        for layer in range(len(self.names) - 1):
            out[self.key("mean_cos", layer_scope(layer))] = cos[layer]
        return out

    def default_rules(self) -> list[Rule]:
        """``plateau_start`` / ``plateau_exit`` (see the module docstring)."""
        cos, loss = self.key("mean_cos"), self.key("loss_nats")
        flat = Plateau(loss, min_rel_delta=self.flat_rel_delta, patience=self.flat_evals, name="loss_flat")
        return [
            Phase(
                enter=[flat, Threshold(cos, self.cos_level, patience=2, name="cos_high")],
                exit=[
                    Collapse(cos, ratio=1.0, margin=self.exit_margin, name="cos_fall"),
                    Collapse(loss, ratio=1.0 - self.exit_loss_drop, name="loss_drop"),
                ],
                name="plateau_start",
                exit_name="plateau_exit",
            )
        ]
