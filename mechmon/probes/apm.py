"""Attention progress measure: the share of attention on a task's known optimal attention map.

Phenomenon: hidden progress during the loss plateau: the attention map moves toward the optimal one steadily while
the loss stays flat, then the loss drops. Gopalani & Hu, *What Happens During the Loss Plateau? Understanding
Abrupt Learning in Transformers* (NeurIPS 2025); docs/metrics.md C4. Only for tasks whose map Ω the user supplies
(moving-window sum: each output position attends to the two summands of the next output).

Logged metrics (``<ns>`` = namespace, scope ``Lxx`` per layer):

==========================  ================================================  ==========  ======
key                         meaning                                           range/unit  reduce
==========================  ================================================  ==========  ======
``<ns>/apm/score``          max over the watched layers                       [0, 1]      sum/n
``<ns>/apm/score/Lxx``      APM of layer xx (all heads together)              [0, 1]      sum/n
``<ns>/apm/loss_nats``      teacher-forced next-token loss at the query rows  nats        sum/n
==========================  ================================================  ==========  ======

Alert: ``hidden_progress`` (info) when ``score`` rises (Theil–Sen over 5 evaluations) while ``loss_nats`` has not
improved by 1 % for 3 evaluations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters.base import LOGITS, Adapter, pattern_name
from mechmon.alerts import Compound, Plateau, Rule, Trend
from mechmon.checks import number
from mechmon.functional.plateau import attention_progress
from mechmon.functional.stats import mean_or_nan
from mechmon.naming import layer_scope
from mechmon.probes.fixed_batch import FixedBatchProbe

__all__ = ["AttentionProgressProbe"]


class AttentionProgressProbe(FixedBatchProbe):
    """Attention progress measure (APM) for a user-supplied target attention map.

    Args:
        target: Ω, 0/1 ``[T, T]`` (or ``[B, T, T]`` per row of the batch): query ``q`` should attend to key ``k``.
        batch: fixed batch of the task (ids ``[B, T]`` or a mapping); ``None`` takes the first training batch.
        rows: query rows R; ``None`` uses the rows where Ω has a 1.
        layers: layers to watch; ``None`` watches all.
        min_slope: smallest rise per evaluation that counts for the hidden-progress alert (>= 0).
        max_rows: rows kept from the batch.
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads ``blocks.{l}.attn.hook_pattern`` ``[B, H, T, T]`` (reduced to a scalar in the hook) and logits.

    Raises:
        TypeError: if ``target`` is not a tensor.
        ValueError: if ``target`` is not square ``[T, T]`` / ``[B, T, T]``, marks no row, or the batch length is
            not ``T``.

    Example:
        >>> omega = torch.zeros(33, 33)
        >>> omega[17, 16] = omega[17, 1] = 1
        >>> AttentionProgressProbe(omega).name
        'apm'
    """

    name = "apm"
    headline = "score"
    requires = ("blocks.*.attn.hook_pattern",)

    def __init__(
        self,
        target: Tensor,
        batch: Any = None,
        rows: Sequence[int] | None = None,
        layers: Sequence[int] | None = None,
        min_slope: float = 0.002,
        max_rows: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch, max_rows, **kwargs)
        self.target = _check_target(target)
        T = self.target.shape[-1]
        marked_BQK = self.target.bool().reshape(-1, T, T)
        rows_T = marked_BQK.any(dim=-1).any(dim=0) if rows is None else _rows(rows, T)
        if not rows_T.any():
            raise ValueError("AttentionProgressProbe: the target map marks no query row; give it at least one 1")
        self.rows_T = rows_T
        if layers is not None:
            if (
                not isinstance(layers, (list, tuple, range))
                or not all(isinstance(i, int) and i >= 0 for i in layers)
                or not layers
            ):
                raise ValueError(f"AttentionProgressProbe(layers=...) must be non-empty ints >= 0, got {layers!r}")
            self.requires = tuple(pattern_name(i) for i in layers)
        number("AttentionProgressProbe", "min_slope", min_slope, 0, closed=(True, False))
        self.layers, self.min_slope = None if layers is None else list(layers), float(min_slope)

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Declare per-layer APM sums and the loss sum."""
        self.layers = self.layers if self.layers is not None else list(range(adapter.n_layers))
        self.names = [pattern_name(i) for i in self.layers]
        super().setup(model, adapter, device)
        self.add_state("apm_sum", torch.zeros(len(self.layers)), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), "sum")
        self.add_loss_state()

    def prepare(self) -> None:
        """Check the batch length against Ω; rows R minus padding."""
        T = self.target.shape[-1]
        if self.probe_batch.shape[1] != T:
            raise ValueError(
                f"AttentionProgressProbe: the target map is {T} x {T} but the batch has length "
                f"{self.probe_batch.shape[1]}; build Ω for the probe batch's length"
            )
        self.target_dev = self.target.to(self._device)
        if self.target_dev.ndim == 3:
            self.target_dev = self.target_dev[: self.probe_batch.shape[0]]
        self.rows_BQ = self.attention_mask & self.rows_T.to(self._device)

    def reduce_capture(self, name: str, tensor: Tensor) -> Tensor:
        """``[B, H, T, T]`` scores -> mean APM over the batch (0-d)."""
        return attention_progress(tensor, self.target_dev, self.rows_BQ).mean()

    def update(self, captures: Mapping[str, Tensor], batch: Any = None) -> None:
        """Add this forward's per-layer APM and the loss at the query rows."""
        self.apm_sum += torch.stack([captures[name] for name in self.names])
        self.count += 1
        self.add_position_loss(captures[LOGITS], self.rows_BQ)

    def compute(self) -> dict[str, Tensor]:
        """Per-layer APM, their max, and the loss."""
        apm = mean_or_nan(self.apm_sum, self.count)
        out = {self.key("score"): apm.max(), self.key("loss_nats"): self.loss_nats()}
        for i, layer in enumerate(self.layers or []):
            out[self.key("score", layer_scope(layer))] = apm[i]
        return out

    def default_rules(self) -> list[Rule]:
        """``hidden_progress``: APM rising while the loss is flat."""
        rising = Trend(self.key("score"), window=5, mode="max", min_slope=self.min_slope, name="apm_rising")
        flat = Plateau(self.key("loss_nats"), min_rel_delta=0.01, patience=3, name="loss_flat")
        return [Compound([rising, flat], name="hidden_progress", severity="info")]


def _check_target(target: Any) -> Tensor:
    if not isinstance(target, Tensor):
        raise TypeError(f"AttentionProgressProbe(target=...) must be a 0/1 tensor [T, T], got {type(target).__name__}")
    if target.ndim not in (2, 3) or target.shape[-1] != target.shape[-2]:
        raise ValueError(f"AttentionProgressProbe: target must be [T, T] or [B, T, T], got {tuple(target.shape)}")
    return target.detach().float().clone()


def _rows(rows: Sequence[int], T: int) -> Tensor:
    if not isinstance(rows, (list, tuple, range)) or not all(isinstance(r, int) and 0 <= r < T for r in rows):
        raise ValueError(f"AttentionProgressProbe(rows=...) must be ints in [0, {T}), got {rows!r}")
    mask = torch.zeros(T, dtype=torch.bool)
    mask[list(rows)] = True
    return mask
