"""Schedules: predicates on the optimizer step (``trainer.global_step``), never on a local counter.

A schedule answers "is step ``s`` an evaluation step?". The monitor evaluates it on the number of completed
optimizer steps, so gradient accumulation never runs a probe twice for one step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

__all__ = ["Schedule", "every", "log_spaced", "at", "union", "as_schedule"]

Schedule = Callable[[int], bool]


class _Every:
    def __init__(self, n: int, offset: int, first: bool) -> None:
        self.n, self.offset, self.first = n, offset, first

    def __call__(self, step: int) -> bool:
        return step % self.n == self.offset % self.n or (self.first and step == 1)

    def __repr__(self) -> str:
        return f"every({self.n}, offset={self.offset}, first={self.first})"


class _At:
    def __init__(self, steps: frozenset[int], label: str) -> None:
        self.steps, self.label = steps, label

    def __call__(self, step: int) -> bool:
        return step in self.steps

    def __repr__(self) -> str:
        return self.label


class _Union:
    def __init__(self, parts: tuple[Schedule, ...]) -> None:
        self.parts = parts

    def __call__(self, step: int) -> bool:
        return any(p(step) for p in self.parts)

    def __repr__(self) -> str:
        return "union(" + ", ".join(map(repr, self.parts)) + ")"


def every(n: int, offset: int = 0, first: bool = True) -> Schedule:
    """Every ``n`` optimizer steps (``step % n == offset``), plus step 1 when ``first`` (a broken probe fails early).

    Raises:
        ValueError: if ``n < 1`` or ``offset < 0``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"every(n) needs an integer n >= 1, got {n!r}")
    if offset < 0:
        raise ValueError(f"every(offset) must be >= 0, got {offset!r}")
    return _Every(n, offset, first)


def at(steps: Iterable[int]) -> Schedule:
    """Exactly the given optimizer steps.

    Raises:
        ValueError: if a step is negative.
    """
    chosen = frozenset(int(s) for s in steps)
    if any(s < 0 for s in chosen):
        raise ValueError(f"at(steps) needs non-negative steps, got {sorted(chosen)}")
    return _At(chosen, f"at({sorted(chosen)})")


def log_spaced(start: int, end: int, num: int) -> Schedule:
    """``num`` steps spaced evenly in log between ``start`` and ``end`` (inclusive, rounded, deduplicated).

    Raises:
        ValueError: unless ``1 <= start < end`` and ``num >= 2``.
    """
    if start < 1 or end <= start or num < 2:
        raise ValueError(f"log_spaced needs 1 <= start < end and num >= 2, got ({start}, {end}, {num})")
    ratio = math.log(end / start) / (num - 1)
    steps = frozenset(round(start * math.exp(ratio * i)) for i in range(num))
    return _At(steps, f"log_spaced({start}, {end}, {num})")


def union(*schedules: Schedule) -> Schedule:
    """True where any of ``schedules`` is.

    Raises:
        ValueError: if no schedule is given.
    """
    if not schedules:
        raise ValueError("union() needs at least one schedule")
    return _Union(tuple(schedules))


def as_schedule(value: Schedule | int, what: str = "schedule") -> Schedule:
    """Turn an int ``n`` into ``every(n)``; pass callables through.

    Raises:
        TypeError: if ``value`` is neither an int nor a callable.
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int or a Schedule, got a bool")
    if isinstance(value, int):
        return every(value)
    if callable(value):
        return value
    got = type(value).__name__
    raise TypeError(f"{what} must be an int (every n steps) or a Schedule such as every(50), got {got}")
