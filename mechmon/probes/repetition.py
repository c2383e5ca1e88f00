"""Repetition probe: how often the model's greedy output repeats its previous token, beside the data's own rate.

Phenomenon: during the loss plateau the model repeats tokens (repetition bias) far more than the data does; on the
moving-window-sum task ρ rises from ≈ 0 to ≈ 0.8 within ~50 steps. Gopalani & Hu, *What Happens During the Loss
Plateau? Understanding Abrupt Learning in Transformers* (NeurIPS 2025); docs/metrics.md C3. Each row of the fixed batch
is split into a prompt and its last ``gen_len`` tokens (the data's continuation); the model continues the prompt
greedily, ``gen_len`` forwards without a KV cache (``teacher_forced=True``: one forward and the argmax at those
positions, cheaper but not the paper's metric). Rows should be unpadded: padding counts as tokens.

Logged metrics (``<ns>`` = namespace):

===============================  ================================================  ========  ======
key                              meaning                                           range     reduce
===============================  ================================================  ========  ======
``<ns>/repetition/model_frac``   ρ of the greedy outputs                           [0, 1]    sum/n
``<ns>/repetition/data_frac``    ρ of the data's continuations (the baseline)      [0, 1]    sum/n
``<ns>/repetition/excess``       model_frac − data_frac                            [-1, 1]   sum/n
===============================  ================================================  ========  ======

Alert: ``repetition_bias`` (warning) when ``excess > level`` for 2 evaluations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters.base import Adapter
from mechmon.alerts import Rule, Threshold
from mechmon.checks import flag, integer, number
from mechmon.functional.plateau import repetition_frac
from mechmon.functional.stats import mean_or_nan
from mechmon.probes.fixed_batch import FixedBatchProbe

__all__ = ["RepetitionProbe", "GENERATED"]

GENERATED = "generated"


class RepetitionProbe(FixedBatchProbe):
    """Repetition frequency of greedy outputs on a fixed batch, and of the data itself.

    Args:
        batch: fixed batch (ids ``[B, T]`` or a mapping); ``None`` takes the first training batch.
        gen_len: G, tokens generated per row (>= 2); the prompt is the first ``T − G`` tokens.
        teacher_forced: use the argmax of one teacher-forced forward instead of greedy generation.
        level: the repetition-bias alert fires when ρ_model − ρ_data exceeds it (0.3).
        max_rows: rows kept from the batch.
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads logits ``[B, T', V]`` of ``G`` forwards (``T' = T − G .. T − 1``), or one forward of ``[B, T]``.

    Raises:
        ValueError: on bad arguments, or a batch with ``T <= gen_len``.

    Example:
        >>> probe = RepetitionProbe(gen_len=16)
        >>> probe.name
        'repetition'
    """

    name = "repetition"
    chained = True  # greedy generation: each forward reads the last one's output
    headline = "model_frac"

    def __init__(
        self,
        batch: Any = None,
        gen_len: int = 8,
        teacher_forced: bool = False,
        level: float = 0.3,
        max_rows: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch, max_rows, **kwargs)
        integer("RepetitionProbe", "gen_len", gen_len, 2)
        flag("RepetitionProbe", "teacher_forced", teacher_forced)
        number("RepetitionProbe", "level", level, 0, 1)
        self.gen_len, self.teacher_forced, self.level = gen_len, teacher_forced, level

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Declare the two ρ sums and the evaluation count."""
        super().setup(model, adapter, device)
        self.add_state("frac_sum", torch.zeros(2), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), "sum")

    def prepare(self) -> None:
        """Check that every row has a prompt before its last ``gen_len`` tokens."""
        if self.probe_batch.shape[1] <= self.gen_len:
            raise ValueError(
                f"RepetitionProbe: sequences of length {self.probe_batch.shape[1]} leave no prompt before "
                f"gen_len={self.gen_len} tokens; lower gen_len or pass longer rows"
            )

    def snapshot(self, adapter: Adapter) -> dict[str, Tensor]:
        """Greedy continuation ``[B, G]`` of each prompt (or the teacher-forced argmax)."""
        G = self.gen_len
        if self.teacher_forced:
            return {GENERATED: adapter.logits(self.probe_batch)[:, -G - 1 : -1].argmax(dim=-1)}
        ids = self.probe_batch[:, :-G]
        for _ in range(G):
            next_B1 = adapter.logits(ids)[:, -1].argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, next_B1], dim=1)
        return {GENERATED: ids[:, -G:]}

    def update(self, captures: Mapping[str, Tensor], batch: Any = None) -> None:
        """Add ρ of the model's continuation and of the data's."""
        data = self.probe_batch[:, -self.gen_len :]
        self.frac_sum += torch.stack([repetition_frac(captures[GENERATED]), repetition_frac(data)])
        self.count += 1

    def compute(self) -> dict[str, Tensor]:
        """ρ of the model, of the data, and their difference."""
        model, data = mean_or_nan(self.frac_sum, self.count)
        return {self.key("model_frac"): model, self.key("data_frac"): data, self.key("excess"): model - data}

    def default_rules(self) -> list[Rule]:
        """``repetition_bias``: ρ_model − ρ_data above ``level`` for 2 evaluations."""
        return [Threshold(self.key("excess"), self.level, patience=2, hysteresis=0.05, name="repetition_bias")]
