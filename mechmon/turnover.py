"""Head turnover: is the same set of heads still doing the job? Host-side, from the scores already transferred.

*LLM Circuit Analyses Are Consistent Across Training and Scale* (Tigges et al., 2024) follows circuits through
Pythia's training: the algorithm stays while the heads that implement it change. For an ``[L, H]`` head-score family
(induction, previous-token, prefix matching), :class:`Turnover` keeps the top-k heads of each evaluation and gives the
Jaccard overlap with the previous evaluation's set and with the set frozen when the family emerged (its headline
score at or above its level for ``patience`` evaluations in a row, as its emergence alert counts them). The
``head_turnover`` info alert fires when that overlap falls below 0.5 while the headline score stays at its level.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from mechmon.alerts import Compound, Rule, Threshold
from mechmon.functional.ablation import jaccard

__all__ = ["Turnover", "TurnoverMixin", "TURNOVER_LEVEL"]

TURNOVER_LEVEL = 0.5  # Jaccard below it: at least half of the union of the two sets changed


class Turnover:
    """The top-k head sets of one ``[L, H]`` score family across evaluations.

    Args:
        k: heads in a set (the ``k`` best-scoring; flat index ``l * H + h``).
        level: the family's emergence level on its headline (max) score; ``None``: no emergence (only the overlap
            with the previous evaluation is given).
        patience: evaluations at or above ``level`` in a row that freeze the emerged set.
    """

    def __init__(self, k: int, level: float | None, patience: int = 2) -> None:
        self.k, self.level, self.patience = k, level, patience
        self.previous: set[int] | None = None
        self.emerged: set[int] | None = None
        self.above = 0

    def update(self, scores_LH: np.ndarray) -> dict[str, float]:
        """This evaluation's overlaps, each in [0, 1].

        ``turnover_jaccard``: with the previous set, from the second evaluation on; ``turnover_jaccard_emerged``:
        with the emerged set, from the emergence on. An evaluation with a non-finite score (nothing measured)
        changes nothing and gives nothing.
        """
        if not np.isfinite(scores_LH).all():
            return {}
        flat = scores_LH.reshape(-1)
        top = {int(i) for i in np.argsort(-flat, kind="stable")[: self.k]}
        out = {} if self.previous is None else {"turnover_jaccard": jaccard(top, self.previous)}
        self.previous = top
        if self.level is not None and self.emerged is None:
            self.above = self.above + 1 if float(flat.max()) >= self.level else 0
            if self.above >= self.patience:
                self.emerged = top
        if self.emerged is not None:
            out["turnover_jaccard_emerged"] = jaccard(top, self.emerged)
        return out

    def state(self) -> Tensor:
        """``[2, k + 1]`` int64: the previous and the emerged set (-1 padded), the count above the level."""
        rows = torch.full((2, self.k + 1), -1, dtype=torch.int64)
        for row, heads in enumerate((self.previous, self.emerged)):
            if heads is not None:
                rows[row, : len(heads)] = torch.tensor(sorted(heads), dtype=torch.int64)
        rows[0, self.k], rows[1, self.k] = self.above, int(self.previous is not None)
        return rows

    def load(self, rows: Tensor) -> None:
        """Restore :meth:`state` (a resumed run compares with the sets of the run it resumes)."""
        if tuple(rows.shape) != (2, self.k + 1):
            return
        previous, emerged = ({int(i) for i in row[: self.k] if i >= 0} for row in rows)
        self.above = int(rows[0, self.k])
        self.previous = previous if int(rows[1, self.k]) else None
        self.emerged = emerged or None


class TurnoverMixin:
    """Turnover of a snapshot probe's head-score families (see the module docstring).

    The probe sets ``self.turnovers`` (family -> :class:`Turnover`) in ``setup`` and returns each family's ``[L, H]``
    mean scores from :meth:`family_scores`; they ride in the step's one transfer (``host_inputs``).
    """

    turnovers: dict[str, Turnover]

    def family_scores(self) -> dict[str, Tensor]:
        """Family -> its ``[L, H]`` scores from the reduced state."""
        raise NotImplementedError

    def host_inputs(self) -> dict[str, Tensor]:
        """Each family's ``[L, H]`` scores, for the overlaps on the host."""
        return self.family_scores()

    def finish(self, host: Mapping[str, np.ndarray], step: int) -> dict[str, float]:
        """The overlaps of each family's top-k heads (keys ``<ns>/<family>/turnover_jaccard[_emerged]``)."""
        out = {}
        for family, turnover in self.turnovers.items():
            if family in host:
                for stat, value in turnover.update(np.asarray(host[family], dtype=np.float64)).items():
                    out[self.key(stat, family=family)] = value
        return out

    def keys(self) -> list[str]:
        """The probe's keys and the overlap keys, which appear from the second evaluation (or the emergence) on."""
        stats = ("turnover_jaccard", "turnover_jaccard_emerged")
        late = [self.key(s, family=f) for f, t in self.turnovers.items() for s in stats[: 1 + (t.level is not None)]]
        return super().keys() + late

    def turnover_rules(self) -> list[Rule]:
        """``head_turnover`` (info) per family with a level: the emerged set half gone while the score holds."""
        rules: list[Rule] = []
        for family, turnover in self.turnovers.items():
            if turnover.level is None:
                continue
            members = [
                Threshold(self.key("turnover_jaccard_emerged", family=family), TURNOVER_LEVEL, mode="min"),
                Threshold(self.key("score_max", family=family), turnover.level, mode="max"),
            ]
            rules.append(Compound(members, name="head_turnover", severity="info"))
        return rules

    def state_dict(self) -> dict[str, Tensor]:
        """The probe's states and each family's head sets (``turnover/<family>``: :meth:`Turnover.state`)."""
        return {**super().state_dict(), **{f"turnover/{f}": t.state() for f, t in self.turnovers.items()}}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """The probe's states, then the head sets present in ``state``."""
        super().load_state_dict(state)
        for family, turnover in self.turnovers.items():
            if f"turnover/{family}" in state:
                turnover.load(state[f"turnover/{family}"])
