"""The overhead budget: the monitor stretches its own cadence so its share of wall time stays under a limit.

The monitor's time is the host time of its scheduled-step work (probe forwards, reduction, transfer, rules,
writing), read with ``time.perf_counter`` (no device sync; on a GPU it includes the one transfer's wait). Every rank
sends its time spent and the time since the run started with the step's one collective; the maxima are the same
numbers on every rank, so every rank takes the same decision and the collectives stay matched.

Rule: a schedule-due step is evaluated when at least ``stride`` due steps have come since the last evaluation
(``stride`` starts at 1). After each evaluation, if the share spent / elapsed is above the budget the stride
doubles; below half the budget it halves (not under 1). The first evaluation is not counted in ``spent``: it is the
run's baseline (step 1), taken one step into the run, and it pays one-time costs (lazy initialisation, the first
call of each kernel); counting it would stretch the cadence just where emergence is watched. A schedule that is
denser early (``log_spaced``) keeps its shape: the budget thins it evenly.

Default (``budget="auto"``): 1 % when the monitor's ``schedule`` is left at its default, off when a schedule is
given (the cadence asked for is kept).
"""

from __future__ import annotations

import time
from typing import Any

from mechmon.checks import fail, number

__all__ = ["Budget", "resolve_budget", "AUTO_SHARE"]

AUTO_SHARE = 0.01


class Budget:
    """The cadence stretch of one run.

    Args:
        share: the largest share of wall time the monitor may take, in (0, 1) (0.01 is 1 %).

    Raises:
        TypeError, ValueError: if ``share`` is not a number in (0, 1).
    """

    def __init__(self, share: float, owner: str = "Monitor") -> None:
        self.share = number(owner, "budget", share, 0, 1)
        self.stride, self.skipped, self.spent, self.evaluations = 1, 0, 0.0, 0
        self._start = time.perf_counter()

    def restart_clock(self) -> None:
        """Count elapsed time from now (the run starts; a resumed run then restores its elapsed time)."""
        self._start = time.perf_counter()

    def admits(self) -> bool:
        """Whether the next schedule-due step is evaluated."""
        return self.skipped + 1 >= self.stride

    def skip(self) -> None:
        """A schedule-due step that was not evaluated."""
        self.skipped += 1

    def measured(self) -> tuple[float, float]:
        """``(spent, elapsed)`` seconds of this rank, for the step's collective."""
        return self.spent, time.perf_counter() - self._start

    def agree(self, spent: float, elapsed: float) -> float:
        """After an evaluation, with the maxima over ranks: set the stride; returns the share spent so far."""
        self.skipped = 0
        ratio = spent / elapsed if elapsed > 0 else 0.0
        if ratio > self.share:
            self.stride *= 2
        elif ratio < self.share / 2 and self.stride > 1:
            self.stride //= 2
        return ratio

    def add(self, seconds: float) -> None:
        """Time the monitor spent on one evaluation (the first is the baseline and is not counted)."""
        self.evaluations += 1
        if self.evaluations > 1:
            self.spent += seconds

    def state_dict(self) -> dict[str, Any]:
        """Stride, due steps skipped since the last evaluation, evaluations, time spent and time elapsed."""
        elapsed = time.perf_counter() - self._start
        counts = {"stride": self.stride, "skipped": self.skipped, "evaluations": self.evaluations}
        return counts | {"spent": self.spent, "elapsed": elapsed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (missing entries keep their values)."""
        self.stride = int(state.get("stride", self.stride))
        self.skipped = int(state.get("skipped", self.skipped))
        self.evaluations = int(state.get("evaluations", self.evaluations))
        self.spent = float(state.get("spent", self.spent))
        if "elapsed" in state:
            self._start = time.perf_counter() - float(state["elapsed"])


def resolve_budget(budget: float | str | None, schedule_given: bool, owner: str) -> Budget | None:
    """The run's :class:`Budget`: ``"auto"`` is :data:`AUTO_SHARE` unless a schedule was given, ``None`` is none.

    Raises:
        TypeError, ValueError: if ``budget`` is not ``"auto"``, ``None`` or a number in (0, 1), naming ``owner``.
    """
    if isinstance(budget, str):
        if budget != "auto":
            fail(owner, "budget", budget, "'auto', None, or a share of wall time in (0, 1) such as 0.01", ValueError)
        return None if schedule_given else Budget(AUTO_SHARE, owner)
    return None if budget is None else Budget(budget, owner)
