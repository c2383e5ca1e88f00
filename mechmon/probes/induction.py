"""Induction probe: induction and previous-token scores per head, and the repeated-sequence loss.

Phenomenon: induction heads, Olsson et al., *In-context Learning and Induction Heads* (Anthropic, 2022);
docs/metrics.md D1, D2, D4. Snapshot probe on P-rep, a fixed seeded batch of ``batch_size`` sequences of ``period``
random ids (without replacement) repeated twice, built in ``setup`` and kept on the model's device. Patterns
``[B, H, Q, K]`` are reduced to ``[2, H]`` inside the hook.

Logged metrics (``<ns>`` = namespace, scope ``Lxx`` per layer):

=========================================  =========================================  ============  ======
key                                        meaning                                    range/unit    reduce
=========================================  =========================================  ============  ======
``<ns>/induction/score_max``               max induction score over heads             [0, 1]        sum/n
``<ns>/induction/score_topk_mean``         mean of the top-k head scores              [0, 1]        sum/n
``<ns>/induction/n_heads_ge_<t>``          heads at or above ``head_threshold``       count         sum/n
``<ns>/induction/score_max/Lxx``           max over the heads of layer xx             [0, 1]        sum/n
``<ns>/induction/head_scores``             ``[L, H]`` heatmap, slow cadence           [0, 1]        sum/n
``<ns>/induction/loss_first_nats``         loss on copy 1 (first token excluded)      nats          sum/n
``<ns>/induction/loss_rep_nats``           loss on copy 2 (first token excluded)      nats          sum/n
``<ns>/induction/loss_gap_nats``           loss_rep - loss_first                      nats          sum/n
``<ns>/induction/ablation_gap_nats``       loss_rep with the top-k heads mean-ablated nats          sum/n
                                           minus without (load-bearing, D6)
``<ns>/induction/ablation_gap_nats/topi``  the same for the i-th best head alone       nats          sum/n
                                           (``ablate_each=True``)
``<ns>/induction/turnover_jaccard``        top-k heads' overlap with the previous      [0, 1]        host
                                           evaluation's (D7; also ``prev_token/``)
``<ns>/induction/turnover_jaccard_emerged`` the same with the set at the emergence      [0, 1]        host
``<ns>/prev_token/score_max``              max previous-token score                   [0, 1]        sum/n
``<ns>/prev_token/score_max/Lxx``          per-layer max previous-token score         [0, 1]        sum/n
``<ns>/prev_token/head_scores``            ``[L, H]`` heatmap, slow cadence           [0, 1]        sum/n
=========================================  =========================================  ============  ======

A uniform causal head scores ≈ ln2/n ≈ 0.014 (n = 50); a perfect induction head scores 1.

Load-bearing heads (*Induction Signatures Are Not Enough*): a high score can sit on a head the model does not rely
on. After the scored forward, one more ``no_grad`` forward of the same batch runs with the ``ablate_k`` best-scoring
heads of that forward mean-ablated (:func:`mechmon.ablation.mean_ablation`: each head's output replaced by its mean
over the batch's positions, before the output projection); the rise of the copy-2 loss is ``ablation_gap_nats``.
``ablate_each=True`` adds one forward per head for the heads alone. The heads are chosen on the device (no sync).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.ablation import ABLATED, HeadAblation
from mechmon.adapters.base import LOGITS, Adapter, pattern_name
from mechmon.alerts import Emergence, Rule
from mechmon.checks import flag, integer, number
from mechmon.functional.attention import check_queries
from mechmon.functional.induction import induction_scores, prev_token_scores, repeated_sequence_losses
from mechmon.naming import layer_scope
from mechmon.probe import SnapshotProbe
from mechmon.probes.repeated import check_repeated_args, fit_period, repeated_batch
from mechmon.turnover import Turnover, TurnoverMixin

__all__ = ["InductionProbe"]

LOAD_BEARING_LEVEL = 1.0  # nats: docs/metrics.md D6 (the demo: 0.1-0.7 before the emergence, 1.8-3.8 after)

DEFAULT_PERIOD = 50  # period=None: this, or the largest that fits the model's context


class InductionProbe(HeadAblation, TurnoverMixin, SnapshotProbe):
    """Per-head induction and previous-token scores on a repeated random-token batch (docs/metrics.md D1, D2, D4).

    Args:
        period: n, length of one random copy (>= 2); ``None`` (default): 50, or the largest period whose two copies
            fit the model's context (read from HF, nanoGPT, LitGPT and TransformerLens configs), with one warning.
        batch_size: sequences in the probe batch (>= 1). 6 by default: on the stdlib demo the score's standard
            error over rows is 0.015 at 0.22, 0.026 at the emergence (0.69) and 0.021 after it with 6 rows
            (0.011, 0.020, 0.016 with 10; ``benchmarks/induction_rows.py``), far below the 0.3 level and the jump,
            for 40 % less probe time.
        seed: seed of the probe batch.
        bos_token_id: prepended to every sequence when given (use it iff the model trains with a BOS).
        level: absolute level of the emergence alert on ``score_max`` (0.3 by default; ARENA uses 0.3-0.4).
        head_threshold: level counted by ``n_heads_ge_<t>``.
        top_k: heads averaged by ``score_topk_mean``.
        ablate_k: heads mean-ablated together for ``ablation_gap_nats`` (3; 0: no ablation forward).
        ablate_each: also ablate each of them alone (``ablation_gap_nats/top1`` ...; ``ablate_k`` more forwards).
        load_bearing_level: ``ablation_gap_nats`` in nats above which the ``induction_load_bearing`` info alert
            fires (2 evaluations).
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads ``blocks.{l}.attn.hook_pattern`` ``[B, H, T, T]`` with ``T = s + 2n`` and logits ``[B, T, V]``.

    Raises:
        ValueError: on bad arguments, or in ``setup`` when the vocabulary has fewer than ``period`` usable ids. A model
            whose heads cannot be ablated (no output projection found, a pipeline stage) is warned about once in
            ``setup`` and logs no ablation key.

    Example:
        >>> probe = InductionProbe(period=20, batch_size=4)
        >>> probe.name
        'induction'
    """

    name = "induction"
    headline = "score_max"
    optional_stats = ("ablation_gap_nats",)  # NaN where a model's heads cannot be ablated (warned, not critical)
    requires = ("blocks.*.attn.hook_pattern",)

    def __init__(
        self,
        period: int | None = None,
        batch_size: int = 6,
        seed: int = 0,
        bos_token_id: int | None = None,
        level: float = 0.3,
        head_threshold: float = 0.4,
        top_k: int = 4,
        ablate_k: int = 3,
        ablate_each: bool = False,
        load_bearing_level: float = LOAD_BEARING_LEVEL,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ablate_k = integer("InductionProbe", "ablate_k", ablate_k, 0)
        self.ablate_each = flag("InductionProbe", "ablate_each", ablate_each)
        self.load_bearing_level = number("InductionProbe", "load_bearing_level", load_bearing_level, 0)
        check_repeated_args("InductionProbe", period, batch_size, seed, bos_token_id, level, top_k)
        number("InductionProbe", "head_threshold", head_threshold, 0, 1)
        self.requested, self.batch_size, self.seed, self.bos_token_id = period, batch_size, seed, bos_token_id
        self.period = period or DEFAULT_PERIOD
        self.level, self.head_threshold, self.top_k = level, head_threshold, top_k
        self.offset = int(bos_token_id is not None)

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Build P-rep on ``device`` and declare ``[L, H]`` states."""
        self.period = fit_period(adapter, "InductionProbe", self.requested, DEFAULT_PERIOD, 2, self.offset)
        self.probe_batch = repeated_batch(
            adapter, "InductionProbe", self.period, 2, self.batch_size, self.seed, self.bos_token_id
        ).to(device)
        self.layers = [pattern_name(i) for i in range(adapter.n_layers)]
        shape = (adapter.n_layers, adapter.n_heads)
        self.add_state("induction_sum_LH", torch.zeros(shape), "sum")
        self.add_state("prev_sum_LH", torch.zeros(shape), "sum")
        self.add_state("loss_sum", torch.zeros(2), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), "sum")
        self.setup_ablation(adapter, self.key("ablation_gap_nats"))
        self.turnovers = {self.name: Turnover(self.top_k, self.level), "prev_token": Turnover(self.top_k, None)}

    def reduce_capture(self, name: str, tensor: Tensor) -> Tensor:
        """``[B, H, Q, K]`` pattern -> ``[2, H]`` (induction, previous-token).

        During the ablation forwards, the scored forward's: the patterns of an ablated model are not scored.
        """

        def score() -> Tensor:
            check_queries(tensor, self.probe_batch.shape[1], name)
            return torch.stack([induction_scores(tensor, self.period, self.offset),
                                prev_token_scores(tensor, self.offset)])  # fmt: skip

        return self.scored(name, score)

    def snapshot(self, adapter: Adapter) -> dict[str, Tensor]:
        """The scored forward, then the ablation forwards: the copy-2 loss with the best heads mean-ablated."""
        out = {LOGITS: adapter.logits(self.probe_batch)}
        if self._ablate:
            scores_LH = torch.stack([self._clean[n][0] for n in self.layers])
            out[ABLATED] = self.ablated_losses(adapter, scores_LH, self.probe_batch, self._copy_loss)
        return out

    def _copy_loss(self, logits: Tensor) -> Tensor:
        return repeated_sequence_losses(logits, self.probe_batch, self.period, self.offset)[1]

    def update(self, captures: Mapping[str, Tensor], batch: Any = None) -> None:
        """Add this forward's per-head scores and losses."""
        scores_L2H = torch.stack([captures[name] for name in self.layers])
        self.induction_sum_LH += scores_L2H[:, 0]
        self.prev_sum_LH += scores_L2H[:, 1]
        self.loss_sum += repeated_sequence_losses(captures[LOGITS], self.probe_batch, self.period, self.offset)
        if ABLATED in captures:
            self.ablated_sum += captures[ABLATED]
        self.count += 1

    def compute(self) -> dict[str, Tensor]:
        """Scalars, per-layer maxima and ``[L, H]`` matrices from the reduced state."""
        n = self.count.clamp_min(1)
        ind_LH, prev_LH, (first, rep) = self.induction_sum_LH / n, self.prev_sum_LH / n, self.loss_sum / n
        flat = ind_LH.flatten()
        tag = f"{self.head_threshold:g}".replace(".", "p")
        out = {
            self.key("score_max"): flat.max(),
            self.key("score_topk_mean"): flat.topk(min(self.top_k, flat.numel())).values.mean(),
            self.key(f"n_heads_ge_{tag}"): (flat >= self.head_threshold).sum().float(),
            self.key("head_scores"): ind_LH,
            self.key("loss_first_nats"): first,
            self.key("loss_rep_nats"): rep,
            self.key("loss_gap_nats"): rep - first,
            self.key("score_max", family="prev_token"): prev_LH.max(),
            self.key("head_scores", family="prev_token"): prev_LH,
        }
        out.update(self.ablation_gaps(rep, n))
        for layer in range(ind_LH.shape[0]):
            out[self.key("score_max", layer_scope(layer))] = ind_LH[layer].max()
            out[self.key("score_max", layer_scope(layer), family="prev_token")] = prev_LH[layer].max()
        return out

    def family_scores(self) -> dict[str, Tensor]:
        """The mean induction and previous-token scores ``[L, H]`` (for the head turnover)."""
        n = self.count.clamp_min(1)
        return {self.name: self.induction_sum_LH / n, "prev_token": self.prev_sum_LH / n}

    def default_rules(self) -> list[Rule]:
        """Info alerts, each fired once after 2 evaluations past its level.

        ``induction_emergence``: the max induction score crosses ``level``; ``induction_load_bearing``: the copying
        rests on the best heads, ``ablation_gap_nats`` passes ``load_bearing_level``.
        """
        rules: list[Rule] = [
            Emergence(self.key("score_max"), self.level, min_rise=0.1, patience=2, name="induction_emergence")
        ]
        if self.ablate_k:
            gap = self.key("ablation_gap_nats")
            rules.append(Emergence(gap, self.load_bearing_level, patience=2, name="induction_load_bearing"))
        return rules + self.turnover_rules()
