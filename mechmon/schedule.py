"""Schedules: predicates on the optimizer step (``trainer.global_step``), never on a local counter.

A schedule answers "is step ``s`` an evaluation step?". The monitor evaluates it on the number of completed
optimizer steps, so gradient accumulation never runs a probe twice for one step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from mechmon.checks import fail, flag, integer

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
        TypeError: if ``n`` or ``offset`` is not an int, or ``first`` not a bool.
        ValueError: if ``n < 1`` or ``offset < 0``.
    """
    integer("every", "n", n, 1)
    integer("every", "offset", offset, 0)
    return _Every(n, offset, flag("every", "first", first))


def at(steps: Iterable[int]) -> Schedule:
    """Exactly the given optimizer steps.

    Raises:
        TypeError: if ``steps`` is not an iterable of ints (``1.7`` is refused, not rounded).
        ValueError: if a step is negative.
    """
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        fail("at", "steps", steps, "an iterable of ints >= 0", TypeError)
    chosen = frozenset(integer("at", "steps", s, 0) for s in steps)
    return _At(chosen, f"at({sorted(chosen)})")


def log_spaced(start: int, end: int, num: int) -> Schedule:
    """``num`` steps spaced evenly in log between ``start`` and ``end`` (inclusive, rounded, deduplicated).

    Raises:
        TypeError: if an argument is not an int.
        ValueError: unless ``1 <= start < end`` and ``num >= 2``.
    """
    integer("log_spaced", "start", start, 1)
    integer("log_spaced", "end", end, start + 1)
    integer("log_spaced", "num", num, 2)
    ratio = math.log(end / start) / (num - 1)
    steps = frozenset(round(start * math.exp(ratio * i)) for i in range(num))
    return _At(steps, f"log_spaced({start}, {end}, {num})")


def union(*schedules: Schedule | int) -> Schedule:
    """True where any of ``schedules`` is; an int ``n`` stands for ``every(n)``.

    Raises:
        TypeError: if a part is neither a schedule nor an int.
        ValueError: if no schedule is given.
    """
    if not schedules:
        fail("union", "schedules", schedules, "at least one schedule")
    return _Union(tuple(as_schedule(s, "union(...)") for s in schedules))


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
