"""Prefix-matching probe: heads that attend to the token after an earlier occurrence of the current token.

Phenomenon: the prefix-matching half of an induction head, Olsson et al., *In-context Learning and Induction Heads*
(2022); the score is Bansal et al.'s (*Rethinking the Role of Scale for In-Context Learning*, 2023,
``amazon-science/llm-interpret``). docs/metrics.md D3. Snapshot probe on P-rep4: ``batch_size`` seeded sequences of
``period`` random ids (without replacement) repeated four times, built in ``setup``. For a query in copy m >= 1, the
score sums the attention to the successors of all m earlier occurrences, so a perfect head scores 1 and the
induction score's thresholds do not transfer. Patterns ``[B, H, T, T]`` are reduced to ``[H]`` inside the hook.

Logged metrics (``<ns>`` = namespace, scope ``Lxx`` per layer):

=======================================  ===========================================  ==========  ======
key                                      meaning                                      range/unit  reduce
=======================================  ===========================================  ==========  ======
``<ns>/prefix_match/score_max``          max prefix-matching score over heads         [0, 1]      sum/n
``<ns>/prefix_match/score_topk_mean``    mean of the top-k head scores                [0, 1]      sum/n
``<ns>/prefix_match/score_max/Lxx``      max over the heads of layer xx               [0, 1]      sum/n
``<ns>/prefix_match/head_scores``        ``[L, H]`` heatmap, slow cadence             [0, 1]      sum/n
``<ns>/prefix_match/ablation_gap_nats``  with ``ablate_k``: the loss on copies 2-4      nats        sum/n
                                         with the best heads mean-ablated, minus
                                         without (D6); ``/topi`` each alone
=======================================  ===========================================  ==========  ======

A uniform causal head scores about m/T summed over its earlier copies (≈ 0.04 at n = 25). The reference excludes
the 4 % most and least frequent token ranks; mechmon has no token frequencies at setup and draws from every
non-special id. Alert: ``prefix_match_emergence`` (info) when ``score_max`` crosses ``level`` (0.3) with a rise of
0.1 over its first value, for 2 evaluations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.ablation import ABLATED, HeadAblation
from mechmon.adapters.base import LOGITS, Adapter, pattern_name
from mechmon.alerts import Emergence, Rule
from mechmon.checks import flag, integer
from mechmon.functional.attention import check_queries
from mechmon.functional.induction import prefix_matching_scores, repeated_sequence_losses
from mechmon.naming import layer_scope
from mechmon.probe import SnapshotProbe
from mechmon.probes.repeated import check_repeated_args, fit_period, repeated_batch
from mechmon.turnover import Turnover, TurnoverMixin

__all__ = ["PrefixMatchingProbe"]

DEFAULT_PERIOD = 25  # period=None: this, or the largest that fits the model's context

COPIES = 4


class PrefixMatchingProbe(HeadAblation, TurnoverMixin, SnapshotProbe):
    """Per-head prefix-matching scores on a four-times-repeated random-token batch (docs/metrics.md D3).

    Args:
        period: n, length of one copy; ``None`` (default): 25 (the reference's shortest), or the largest period
            whose four copies fit the model's context, with one warning.
        batch_size: sequences in the probe batch (10).
        seed: seed of the probe batch.
        bos_token_id: prepended to every sequence when given.
        level: absolute level of the emergence alert on ``score_max`` (0.3).
        top_k: heads averaged by ``score_topk_mean`` (4).
        ablate_k: best-scoring heads mean-ablated together in one more forward, for ``ablation_gap_nats`` (0: off,
            the default; see :class:`~mechmon.ablation.HeadAblation`).
        ablate_each: also ablate each of them alone (``ablate_k`` more forwards).
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads ``blocks.{l}.attn.hook_pattern`` ``[B, H, T, T]`` with ``T = s + 4n``.

    Raises:
        ValueError: on bad arguments, or in ``setup`` when the context is shorter than ``s + 4n`` or the vocabulary
            has fewer than ``period`` usable ids (the message names the period to pass).

    Example:
        >>> PrefixMatchingProbe(period=10).name
        'prefix_match'
    """

    name = "prefix_match"
    headline = "score_max"
    requires = ("blocks.*.attn.hook_pattern",)

    def __init__(
        self,
        period: int | None = None,
        batch_size: int = 10,
        seed: int = 0,
        bos_token_id: int | None = None,
        level: float = 0.3,
        top_k: int = 4,
        ablate_k: int = 0,
        ablate_each: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ablate_k = integer("PrefixMatchingProbe", "ablate_k", ablate_k, 0)
        self.ablate_each = flag("PrefixMatchingProbe", "ablate_each", ablate_each)
        check_repeated_args("PrefixMatchingProbe", period, batch_size, seed, bos_token_id, level, top_k)
        self.requested, self.batch_size, self.seed, self.bos_token_id = period, batch_size, seed, bos_token_id
        self.period = period or DEFAULT_PERIOD
        self.level, self.top_k, self.offset = level, top_k, int(bos_token_id is not None)

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Build P-rep4 on ``device`` and declare the ``[L, H]`` score sum."""
        self.period = fit_period(adapter, "PrefixMatchingProbe", self.requested, DEFAULT_PERIOD, COPIES, self.offset)
        self.probe_batch = repeated_batch(
            adapter, "PrefixMatchingProbe", self.period, COPIES, self.batch_size, self.seed, self.bos_token_id
        ).to(device)
        self.layers = [pattern_name(i) for i in range(adapter.n_layers)]
        self.add_state("score_sum_LH", torch.zeros((adapter.n_layers, adapter.n_heads)), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), "sum")
        self.turnovers = {self.name: Turnover(self.top_k, self.level)}
        self.setup_ablation(adapter, self.key("ablation_gap_nats"))
        if self._ablate:
            self.add_state("loss_sum", torch.zeros(()), "sum")  # the clean loss on copies 2-4, for the gap

    def reduce_capture(self, name: str, tensor: Tensor) -> Tensor:
        """``[B, H, T, T]`` pattern -> ``[H]`` prefix-matching scores (the scored forward's during ablations)."""

        def score() -> Tensor:
            check_queries(tensor, self.probe_batch.shape[1], name)
            return prefix_matching_scores(tensor, self.period, COPIES, self.offset)

        return self.scored(name, score)

    def snapshot(self, adapter: Adapter) -> dict[str, Tensor]:
        """The scored forward, then with ``ablate_k`` the ablation forwards on the same batch."""
        out = {LOGITS: adapter.logits(self.probe_batch)}
        if self._ablate:
            scores_LH = torch.stack([self._clean[n] for n in self.layers])
            out[ABLATED] = self.ablated_losses(adapter, scores_LH, self.probe_batch, self._copy_loss)
        return out

    def _copy_loss(self, logits: Tensor) -> Tensor:
        """Mean loss on copies 2-4 (each without its first token)."""
        return repeated_sequence_losses(logits, self.probe_batch, self.period, self.offset, COPIES)[1:].mean()

    def update(self, captures: Mapping[str, Tensor], batch: Any = None) -> None:
        """Add this forward's per-head scores."""
        self.score_sum_LH += torch.stack([captures[name] for name in self.layers])
        if self._ablate:
            self.loss_sum += self._copy_loss(captures[LOGITS])
            self.ablated_sum += captures[ABLATED]
        self.count += 1

    def compute(self) -> dict[str, Tensor]:
        """Max, top-k mean, per-layer max and the ``[L, H]`` matrix."""
        scores_LH = self.score_sum_LH / self.count  # 0/0 = NaN before any forward
        flat = scores_LH.flatten()
        out = {
            self.key("score_max"): flat.max(),
            self.key("score_topk_mean"): flat.topk(min(self.top_k, flat.numel())).values.mean(),
            self.key("head_scores"): scores_LH,
        }
        if self._ablate:
            out.update(self.ablation_gaps(self.loss_sum / self.count, self.count))
        for layer in range(scores_LH.shape[0]):
            out[self.key("score_max", layer_scope(layer))] = scores_LH[layer].max()
        return out

    def family_scores(self) -> dict[str, Tensor]:
        """The mean prefix-matching scores ``[L, H]`` (for the head turnover)."""
        return {self.name: self.score_sum_LH / self.count.clamp_min(1)}

    def default_rules(self) -> list[Rule]:
        """Emergence of ``score_max`` (info) past ``level`` with a rise of 0.1, for 2 evaluations; ``head_turnover``."""
        key = self.key("score_max")
        return [Emergence(key, self.level, min_rise=0.1, patience=2, name="prefix_match_emergence"),
                *self.turnover_rules()]  # fmt: skip
