"""Constructor argument checks: one message shape, ``Owner(arg=...) must be <what>, got <value>``, naming the fix."""

from __future__ import annotations

from typing import Any

__all__ = ["number", "integer", "flag", "fail"]


def fail(owner: str, arg: str, value: Any, need: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the argument, what it must be, and what was given."""
    raise error(f"{owner}({arg}=...) must be {need}, got {value!r}")


def number(
    owner: str,
    arg: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    closed: tuple[bool, bool] = (False, False),
) -> float:
    """A real number (not a bool) inside the interval from ``low`` to ``high`` (open unless ``closed`` says so).

    Raises:
        TypeError: if ``value`` is not a number; ValueError: if it lies outside the interval.
    """
    need = "a number" + (f" {'>=' if closed[0] else '>'} {low}" if low is not None else "")
    need += f" {'<=' if closed[1] else '<'} {high}" if high is not None else ""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        fail(owner, arg, value, need, TypeError)
    above = low is None or value > low or (closed[0] and value == low)
    below = high is None or value < high or (closed[1] and value == high)
    if not (above and below):
        fail(owner, arg, value, need)
    return float(value)


def integer(owner: str, arg: str, value: Any, low: int | None = None) -> int:
    """An int (not a bool) ``>= low`` where given.

    Raises:
        TypeError: if ``value`` is not an int; ValueError: if it is below ``low``.
    """
    need = "an int" + (f" >= {low}" if low is not None else "")
    if not isinstance(value, int) or isinstance(value, bool):
        fail(owner, arg, value, need, TypeError)
    if low is not None and value < low:
        fail(owner, arg, value, need)
    return value


def flag(owner: str, arg: str, value: Any) -> bool:
    """A bool.

    Raises:
        TypeError: otherwise.
    """
    if not isinstance(value, bool):
        fail(owner, arg, value, "True or False", TypeError)
    return value
