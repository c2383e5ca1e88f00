"""In-context-learning probe: the loss on the 500th token of a real context minus the loss on the 50th.

Phenomenon: in-context learning, which drops sharply when induction heads form and may creep back later ("ICL
transience", Singh et al. 2023); Olsson et al., *In-context Learning and Induction Heads* (2022). docs/metrics.md D5.
Snapshot probe on a fixed batch of long contexts: the first training rows with at least ``late + window`` real
tokens (or a batch given), like the plateau probes; no attention probabilities are needed, so SDPA runs as it is.

Logged metrics (``<ns>`` = namespace):

==================================  ====================================================  ==========  ======
key                                 meaning                                               range/unit  reduce
==================================  ====================================================  ==========  ======
``<ns>/icl/score_nats``             loss_late − loss_early (negative: context helps)      nats        sum/n
``<ns>/icl/loss_early_nats``        mean loss on token ``early`` (± ``window``)           nats        sum/n
``<ns>/icl/loss_late_nats``         mean loss on token ``late`` (± ``window``)            nats        sum/n
==================================  ====================================================  ==========  ======

Alert: ``icl_emergence`` (info) when ``score_nats`` falls below ``level`` (−0.25 nats) for 2 evaluations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters.base import LOGITS, Adapter
from mechmon.alerts import Rule, Threshold
from mechmon.checks import integer, number
from mechmon.functional.icl import token_loss_sums
from mechmon.functional.stats import mean_or_nan
from mechmon.probes.fixed_batch import FixedBatchProbe

__all__ = ["ICLProbe"]


class ICLProbe(FixedBatchProbe):
    """ICL score ℓ(late) − ℓ(early) on a fixed batch of long real contexts (docs/metrics.md D5).

    Args:
        batch: fixed batch (ids ``[B, T]`` with ``T >= late + window``, or a mapping); ``None`` takes the first
            training rows that are long enough.
        early: the early token, 1-based (50).
        late: the late token, 1-based (500).
        window: average tokens ``t ± window`` to reduce variance (0, the paper's form).
        level: the ``icl_emergence`` level in nats (−0.25).
        max_rows: rows kept (16).
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Logits ``[B, T, V]`` of the probe forward; only the ``2·(2w + 1)`` positions used are read in float32.

    Raises:
        ValueError: on bad arguments; in ``setup`` when the model's context is shorter than ``late + window``
            (the message names the ``late`` to pass).

    Example:
        >>> ICLProbe(early=10, late=100).name
        'icl'
    """

    name = "icl"
    headline = "score_nats"

    def __init__(
        self,
        batch: Any = None,
        early: int = 50,
        late: int = 500,
        window: int = 0,
        level: float = -0.25,
        max_rows: int = 16,
        **kwargs: Any,
    ) -> None:
        integer("ICLProbe", "window", window, 0)
        integer("ICLProbe", "early", early, 2 + window)
        integer("ICLProbe", "late", late, early + 1)
        number("ICLProbe", "level", level, high=0)
        self.early, self.late, self.window, self.level = early, late, window, float(level)
        self.min_tokens = late + window
        super().__init__(batch, max_rows, **kwargs)

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Check the context length, declare the loss sums ``[2, 2]`` (early, late) x (sum, count)."""
        context = adapter.max_positions
        if context is not None and context < self.min_tokens:
            raise ValueError(
                f"ICLProbe(late={self.late}, window={self.window}) needs contexts of {self.min_tokens} tokens, but the "
                f"model's context is {context}; pass ICLProbe(late={context - self.window}) or less, or leave the "
                "ICL score out for this model"
            )
        super().setup(model, adapter, device)
        self.add_state("sums_22", torch.zeros((2, 2)), "sum")

    def update(self, captures: Mapping[str, Tensor], batch: Any = None) -> None:
        """Add the losses at the early and the late token."""
        logits, ids, real = captures[LOGITS], self.probe_batch, self.attention_mask
        self.sums_22 += torch.stack(
            [token_loss_sums(logits, ids, real, t, self.window) for t in (self.early, self.late)]
        )

    def compute(self) -> dict[str, Tensor]:
        """The score and both losses (NaN when no context was long enough)."""
        early, late = mean_or_nan(self.sums_22[:, 0], self.sums_22[:, 1])
        return {
            self.key("score_nats"): late - early,
            self.key("loss_early_nats"): early,
            self.key("loss_late_nats"): late,
        }

    def default_rules(self) -> list[Rule]:
        """``icl_emergence`` (info): ``score_nats`` below ``level`` for 2 evaluations."""
        return [Threshold(self.key("score_nats"), self.level, mode="min", patience=2, name="icl_emergence",
                          severity="info")]  # fmt: skip
