"""The overhead budget: the monitor stretches its own cadence so its share of wall time stays under a limit.

The monitor's time is the host time of its scheduled-step work (probe forwards, reduction, transfer, rules,
writing), read with ``time.perf_counter`` (no device sync; on a GPU it includes the one transfer's wait). Every rank
sends its time spent and the time since the run started with the step's reduction (MAX); the maxima are the same
numbers on every rank, so every rank takes the same decision and the collectives stay matched.

Rule: a schedule-due step is evaluated when at least ``stride`` due steps have come since the last evaluation
(``stride`` starts at 1). After each evaluation the share is taken over a recent window: the time spent in the last
:data:`WINDOW` counted evaluations over the wall time since the evaluation before them. Above the budget the stride
doubles, up to :data:`MAX_STRIDE` (never more than 8x the schedule's gap); below half the budget it halves, down to 1,
so a cost that passes (a slow first few evaluations) stops thinning the schedule once it leaves the window. The
first evaluation is not counted: it is the run's baseline (step 1), taken one step into the run, and it pays one-time
costs (lazy initialisation, the first call of each kernel). One warning when the budget first thins the schedule,
one when even :data:`MAX_STRIDE` cannot keep the share under it.

Only probes that follow the monitor-wide schedule are thinned: a probe's own schedule (``WeightsProbe(
schedule=at([1000, 2000]))``) is always kept, its time counted in the share.

Default (``budget="auto"``): 1 % when the monitor's ``schedule`` is left at its default, off when a schedule is
given (the cadence asked for is kept).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from mechmon.checks import fail, number
from mechmon.distributed import rank_zero_warn

__all__ = ["Budget", "resolve_budget", "AUTO_SHARE", "WINDOW", "MAX_STRIDE"]

AUTO_SHARE = 0.01
WINDOW = 8  # counted evaluations in the recent share
MAX_STRIDE = 8  # the schedule is never thinned more than this


class Budget:
    """The cadence stretch of one run.

    Args:
        share: the largest share of wall time the monitor may take, in (0, 1) (0.01 is 1 %).

    Raises:
        TypeError, ValueError: if ``share`` is not a number in (0, 1).
    """

    def __init__(self, share: float, owner: str = "Monitor") -> None:
        self.share = number(owner, "budget", share, 0, 1)
        self.stride, self.skipped, self.evaluations = 1, 0, 0
        self.recent: deque[tuple[float, float]] = deque(maxlen=WINDOW)  # (end time, seconds) of counted evaluations
        self._since = time.perf_counter()  # start of the window
        self._told: set[str] = set()

    def restart_clock(self) -> None:
        """Count elapsed time from now (the run starts; a resumed run then restores its window)."""
        self._since = time.perf_counter()

    def admits(self) -> bool:
        """Whether the next schedule-due step is evaluated."""
        return self.skipped + 1 >= self.stride

    def skip(self) -> None:
        """A schedule-due step that was not evaluated."""
        self.skipped += 1

    def take(self) -> None:
        """A schedule-due step that is evaluated (the count of skipped ones starts again)."""
        self.skipped = 0

    def measured(self) -> tuple[float, float]:
        """``(spent, elapsed)`` seconds of this rank over the recent window, for the step's collective."""
        return sum(s for _, s in self.recent), time.perf_counter() - self._since

    def agree(self, spent: float, elapsed: float) -> float:
        """After an evaluation, with the maxima over ranks: set the stride; returns the recent share."""
        ratio = spent / elapsed if elapsed > 0 else 0.0
        if ratio > self.share and self.stride < MAX_STRIDE:
            self.stride *= 2
            self._tell(
                "thin",
                f"the monitor took {ratio:.1%} of wall time, over its budget of {self.share:.1%}: "
                "it now evaluates every 2nd due step of the monitor-wide schedule (up to every "
                f"{MAX_STRIDE}th; <ns>/monitor/stride logs it). Pass budget=None to keep every due step",
            )
        elif ratio > self.share:
            self._tell(
                "over",
                f"the monitor takes {ratio:.1%} of wall time even at every {MAX_STRIDE}th due step, "
                f"over its budget of {self.share:.1%}: pass a sparser schedule=, fewer probes, or budget=None",
            )
        elif ratio < self.share / 2 and self.stride > 1:
            self.stride //= 2
        return ratio

    def _tell(self, what: str, message: str) -> None:
        if what not in self._told:
            self._told.add(what)
            rank_zero_warn(f"mechmon: {message}")

    def add(self, seconds: float) -> None:
        """Time the monitor spent on one evaluation (the first is the baseline and is not counted)."""
        self.evaluations += 1
        if self.evaluations > 1:
            now = time.perf_counter()
            if len(self.recent) == WINDOW:
                self._since = self.recent[0][0]  # the oldest leaves: the window starts at its end
            self.recent.append((now, seconds))

    def state_dict(self) -> dict[str, Any]:
        """Stride, due steps skipped since the last evaluation, evaluations, and the window (ages and seconds)."""
        now = time.perf_counter()
        counts = {"stride": self.stride, "skipped": self.skipped, "evaluations": self.evaluations}
        window = [[now - end, seconds] for end, seconds in self.recent]
        return counts | {"recent": window, "since": now - self._since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (missing entries keep their values)."""
        self.stride = min(int(state.get("stride", self.stride)), MAX_STRIDE)
        self.skipped = int(state.get("skipped", self.skipped))
        self.evaluations = int(state.get("evaluations", self.evaluations))
        now = time.perf_counter()
        self.recent.clear()
        self.recent.extend((now - float(age), float(seconds)) for age, seconds in state.get("recent", []))
        if "since" in state:
            self._since = now - float(state["since"])


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
