"""Alert rules: small edge-triggered state machines over the floats of one metric key.

Every rule fires once when its condition *starts* (after ``patience`` consecutive evaluations), then stays
quiet until the condition clears, when it re-arms. ``warmup``, ``patience`` and ``window`` count
**evaluations** (scheduled steps), not optimizer steps. Non-finite values never reach the other rules: they go
to :class:`NonFinite`. State is primitives only, so a resumed run neither re-fires nor forgets.
The rules each probe sets up by default are listed, key by key, in docs/metrics.md.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mechmon.advice import advice

__all__ = ["Alert", "Rule", "Threshold", "Emergence", "Collapse", "Plateau", "Trend", "Compound", "Phase", "NonFinite"]

Severity = Literal["info", "warning", "critical"]
Mode = Literal["min", "max"]


@dataclass(frozen=True)
class Alert:
    """One fired alert.

    Attributes:
        rule: rule name, the ``<rule>`` of ``mechmon/alerts/<rule>``.
        key: the metric key the rule watches.
        step: optimizer step (``trainer.global_step``) at which it fired.
        value: the metric value at that step (may be NaN for non-finite alerts).
        severity: ``"info"``, ``"warning"`` or ``"critical"``.
        reason: readable text: the value, the level and for how long.
        advice: what people usually do about it, with the source (``mechmon.advice.ADVICE``; ``""`` for a rule
            of your own).
    """

    rule: str
    key: str
    step: int
    value: float
    severity: Severity
    reason: str
    advice: str = ""

    def __post_init__(self) -> None:
        if not self.advice:  # the built-in rules' advice, by name
            object.__setattr__(self, "advice", advice(self.rule))


def _check(name: str, value: Any, ok: Callable[[], bool], need: str) -> None:
    """Raise ``ValueError`` naming the argument unless ``ok()`` holds (a wrong type makes it fail, not crash)."""
    try:
        good = bool(ok())
    except Exception:  # e.g. '>=' between a str and an int
        good = False
    if not good:
        raise ValueError(f"{name} must be {need}, got {value!r}")


_SEVERITIES = ("info", "warning", "critical")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Rule:
    """Base class: edge triggering, warmup and patience.

    Subclasses implement :meth:`_condition` (may update running statistics) and optionally :meth:`_cleared`.

    Args:
        key: metric key watched, e.g. ``"mechmon/induction/score_max"``.
        name: rule name used in ``mechmon/alerts/<name>``.
        severity: alert severity.
        patience: consecutive evaluations the condition must hold before firing (>= 1).
        warmup: evaluations ignored at the start (>= 0).

    Raises:
        ValueError: on a bad ``patience``, ``warmup``, ``severity`` or empty ``key``/``name``.
    """

    _extra_state: tuple[str, ...] = ()

    def __init__(self, key: str, name: str, severity: Severity = "warning", patience: int = 1, warmup: int = 0) -> None:
        _check("key", key, lambda: isinstance(key, str) and bool(key), "a non-empty metric key")
        _check(
            "name", name, lambda: isinstance(name, str) and name.replace("_", "").isalnum(), "a snake_case rule name"
        )
        _check("severity", severity, lambda: severity in _SEVERITIES, "'info', 'warning' or 'critical'")
        _check("patience", patience, lambda: isinstance(patience, int) and patience >= 1, "an int >= 1")
        _check("warmup", warmup, lambda: isinstance(warmup, int) and warmup >= 0, "an int >= 0")
        self.key, self.name, self.severity, self.patience, self.warmup = key, name, severity, patience, warmup
        self.reset()

    def reset(self) -> None:
        """Forget all history."""
        self._seen, self._hits, self._active = 0, 0, False

    def update(self, step: int, value: float) -> Alert | None:
        """Feed one evaluation; returns an :class:`Alert` on the evaluation where the condition starts."""
        if not math.isfinite(value):
            return None
        self._seen += 1
        condition = self._condition(value)
        if self._seen <= self.warmup:
            return None
        self._hits = self._hits + 1 if condition else 0
        if self._active:
            self._active = not self._cleared(value)
            return None
        if not self.holds:
            return None
        self._active = True
        return Alert(self.name, self.key, step, value, self.severity, self._reason(value))

    @property
    def names(self) -> tuple[str, ...]:
        """The alert names this rule can emit (``<rule>`` of ``mechmon/alerts/<rule>``)."""
        return (self.name,)

    @property
    def holds(self) -> bool:
        """Whether the condition has held for ``patience`` consecutive evaluations up to now."""
        return self._hits >= self.patience

    def observe(self, step: int, scalars: Mapping[str, float]) -> Alert | None:
        """Feed this evaluation's scalars; rules without a value at this step are left untouched."""
        return self.update(step, scalars[self.key]) if self.key in scalars else None

    def _condition(self, value: float) -> bool:
        raise NotImplementedError

    def _cleared(self, value: float) -> bool:
        """Re-arm once the condition no longer holds (``_hits`` is already updated for this evaluation)."""
        return self._hits == 0

    def _reason(self, value: float) -> str:
        return f"{self.key} = {value:.4g}"

    def state_dict(self) -> dict[str, Any]:
        """Primitive state for checkpoints (counters plus the running statistics named in ``_extra_state``)."""
        extra = {name: getattr(self, name) for name in self._extra_state}
        return {"seen": self._seen, "hits": self._hits, "active": self._active, **extra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; missing entries keep their defaults."""
        self._seen = int(state.get("seen", self._seen))
        self._hits = int(state.get("hits", self._hits))
        self._active = bool(state.get("active", self._active))
        for name in self._extra_state:
            setattr(self, name, state.get(name, getattr(self, name)))


class Threshold(Rule):
    """Fires when the value is beyond ``level`` for ``patience`` evaluations.

    Args:
        level: the threshold.
        mode: ``"max"`` fires above ``level`` (emergence-like), ``"min"`` below it (collapse-like).
        hysteresis: re-arms only once the value is back past ``level`` by this much (>= 0).
        **kwargs: see :class:`Rule`.

    Raises:
        ValueError: on a bad ``mode`` or negative ``hysteresis``.

    Example:
        >>> from mechmon.alerts import Threshold
        >>> rule = Threshold("mechmon/logits/softmax_collapse_frac", 0.5, patience=2, name="collapse")
        >>> [rule.update(step, v) is not None for step, v in enumerate([0.1, 0.6, 0.7, 0.8], start=1)]
        [False, False, True, False]
    """

    def __init__(self, key: str, level: float, mode: Mode = "max", hysteresis: float = 0.0, **kwargs: Any) -> None:
        _check("mode", mode, lambda: mode in ("min", "max"), "'min' or 'max'")
        _check("level", level, lambda: _number(level), "a number")
        _check("hysteresis", hysteresis, lambda: _number(hysteresis) and hysteresis >= 0, "a number >= 0")
        self.level, self.mode, self.hysteresis = float(level), mode, float(hysteresis)
        kwargs.setdefault("name", "threshold")
        super().__init__(key, **kwargs)

    def _condition(self, value: float) -> bool:
        return value > self.level if self.mode == "max" else value < self.level

    def _cleared(self, value: float) -> bool:
        if self.mode == "max":
            return value < self.level - self.hysteresis
        return value > self.level + self.hysteresis

    def _reason(self, value: float) -> str:
        side = "above" if self.mode == "max" else "below"
        return f"{self.key} = {value:.4g} is {side} {self.level:g} for {self.patience} evaluation(s)"


class Emergence(Threshold):
    """Threshold in mode ``"max"`` that also needs a rise of ``min_rise`` over the first value seen (the null).

    The baseline is the first finite evaluation after warmup is *not* applied: it is the value at the first
    scheduled step, the closest the run has to its initialisation.

    Args:
        level: absolute floor, e.g. 0.3 for the induction score.
        min_rise: required rise above the baseline (>= 0).
        min_factor: required ratio to the baseline (>= 0), e.g. 10 for "ten times its first value".
        **kwargs: see :class:`Threshold`.
    """

    _extra_state = ("baseline",)

    def __init__(self, key: str, level: float, min_rise: float = 0.0, min_factor: float = 0.0, **kwargs: Any) -> None:
        _check("min_rise", min_rise, lambda: _number(min_rise) and min_rise >= 0, "a number >= 0")
        _check("min_factor", min_factor, lambda: _number(min_factor) and min_factor >= 0, "a number >= 0")
        self.min_rise, self.min_factor = float(min_rise), float(min_factor)
        kwargs.setdefault("name", "emergence")
        kwargs.setdefault("severity", "info")
        super().__init__(key, level, mode="max", **kwargs)

    def reset(self) -> None:
        """Forget history and the baseline."""
        super().reset()
        self.baseline: float | None = None

    def _condition(self, value: float) -> bool:
        if self.baseline is None:
            self.baseline = value
        rose = value - self.baseline >= self.min_rise and value >= self.min_factor * self.baseline
        return value > self.level and rose

    def _reason(self, value: float) -> str:
        return f"{self.key} rose from {self.baseline:.3g} to {value:.3g} (level {self.level:g}): emergence"


class Collapse(Rule):
    """Fires when the value collapses against its running extreme for ``patience`` evaluations.

    Mode ``"max"``: below ``ratio`` x the running maximum minus ``margin``; mode ``"min"``: above the running
    minimum / ``ratio`` plus ``margin``. Values seen during ``warmup`` do not enter the running extreme.

    With ``rise``, the running extreme starts only once the value has come back from its first trough by that
    factor (mode ``"max"``: risen to ``(1 + rise)`` x its lowest value so far): a quantity that falls from its
    value at initialisation before training builds it up (RankMe early in training) is judged against what
    training built, never against the initialisation.

    Args:
        ratio: in (0, 1], e.g. 0.5 for "halved from its best"; 1 with a ``margin`` for an absolute fall.
        mode: ``"max"`` tracks a running max (collapse = drop), ``"min"`` a running min (collapse = rise).
        margin: absolute distance beyond ``ratio`` x the extreme (>= 0), e.g. 0.1 for "0.1 below the running max".
        rise: ``None`` (the extreme starts after ``warmup``) or a factor > 0 (the extreme starts after the trough).
        **kwargs: see :class:`Rule`.

    Raises:
        ValueError: unless ``0 < ratio <= 1``, ``margin >= 0``, one of them is strict, ``rise`` is ``None`` or
            positive, and ``mode`` is valid.
    """

    _extra_state = ("extreme", "trough", "armed")

    def __init__(
        self,
        key: str,
        ratio: float = 0.5,
        mode: Mode = "max",
        margin: float = 0.0,
        rise: float | None = None,
        **kwargs: Any,
    ) -> None:
        _check("ratio", ratio, lambda: _number(ratio) and 0 < ratio <= 1, "a number in (0, 1]")
        _check(
            "margin",
            margin,
            lambda: _number(margin) and margin >= 0 and (margin > 0 or ratio < 1),
            "a number >= 0, and > 0 when ratio is 1",
        )
        _check("mode", mode, lambda: mode in ("min", "max"), "'min' or 'max'")
        _check("rise", rise, lambda: rise is None or (_number(rise) and rise > 0), "None or a number > 0")
        self.ratio, self.mode, self.margin = float(ratio), mode, float(margin)
        self.rise = None if rise is None else float(rise)
        kwargs.setdefault("name", "collapse")
        super().__init__(key, **kwargs)

    def reset(self) -> None:
        """Forget history, the trough and the running extreme."""
        super().reset()
        self.extreme: float | None = None
        self.trough: float | None = None
        self.armed = False

    def _condition(self, value: float) -> bool:
        if self._seen <= self.warmup:  # warmup values (e.g. the initialisation) do not set the running extreme
            return False
        if self.rise is not None and not self.armed and not self._back_from_trough(value):
            return False
        pick = max if self.mode == "max" else min
        self.extreme = value if self.extreme is None else pick(self.extreme, value)
        if self.mode == "max":
            return value < self.ratio * self.extreme - self.margin
        return value > self.extreme / self.ratio + self.margin

    def _back_from_trough(self, value: float) -> bool:
        """Track the first trough (a peak in mode ``"min"``); True, and armed, once the value is back by ``rise``."""
        if self.mode == "max":
            self.trough = value if self.trough is None else min(self.trough, value)
            self.armed = value >= self.trough * (1 + self.rise)
        else:
            self.trough = value if self.trough is None else max(self.trough, value)
            self.armed = value <= self.trough / (1 + self.rise)
        return self.armed

    def _reason(self, value: float) -> str:
        word = "max" if self.mode == "max" else "min"
        extreme = f"running {word} {self.extreme:.4g}"
        return (
            f"{self.key} = {value:.4g} collapsed against its {extreme} (ratio {self.ratio:g}, margin {self.margin:g})"
        )


class Plateau(Rule):
    """Fires when the value has not improved for ``patience`` evaluations.

    Like ``EarlyStopping`` and ``ReduceLROnPlateau``: an improvement must beat the best value so far by
    ``max(min_delta, min_rel_delta·|best|)``; one resets the count and re-arms the rule.

    Args:
        mode: ``"min"`` (a loss) or ``"max"`` (a score).
        min_delta: smallest absolute change that counts as an improvement (>= 0).
        min_rel_delta: smallest change relative to the best value that counts (>= 0), e.g. 0.01 for 1 %.
        patience: evaluations without improvement before firing.
        **kwargs: see :class:`Rule`.
    """

    _extra_state = ("best",)

    def __init__(
        self,
        key: str,
        mode: Mode = "min",
        min_delta: float = 0.0,
        min_rel_delta: float = 0.0,
        patience: int = 5,
        **kwargs: Any,
    ) -> None:
        _check("mode", mode, lambda: mode in ("min", "max"), "'min' or 'max'")
        _check("min_delta", min_delta, lambda: _number(min_delta) and min_delta >= 0, "a number >= 0")
        _check("min_rel_delta", min_rel_delta, lambda: _number(min_rel_delta) and min_rel_delta >= 0, "a number >= 0")
        self.mode, self.min_delta, self.min_rel_delta = mode, float(min_delta), float(min_rel_delta)
        kwargs.setdefault("name", "plateau")
        super().__init__(key, patience=patience, **kwargs)

    def reset(self) -> None:
        """Forget history and the best value."""
        super().reset()
        self.best: float | None = None

    def _condition(self, value: float) -> bool:
        if self.best is None:
            self.best = value
            return False
        step = max(self.min_delta, self.min_rel_delta * abs(self.best))
        better = value < self.best - step if self.mode == "min" else value > self.best + step
        if better:
            self.best = value
        return not better

    def _reason(self, value: float) -> str:
        return f"{self.key} has not improved on {self.best:.4g} for {self.patience} evaluations: plateau"


class Trend(Rule):
    """Fires when the Theil-Sen slope over the last ``window`` evaluations has the watched sign and is significant.

    Significant: the rise (or fall) over the window, ``|slope|·(window-1)``, exceeds ``z`` x the median absolute
    deviation of the residuals, and ``|slope| > min_slope``. The slope is per evaluation.

    Args:
        window: evaluations in the fit (>= 3); also the memory, a bounded list of floats.
        mode: ``"max"`` watches a rise, ``"min"`` a fall.
        z: significance factor (>= 0).
        min_slope: smallest slope per evaluation that counts (>= 0).
        **kwargs: see :class:`Rule`.

    Raises:
        ValueError: on a bad ``window``, ``mode``, ``z`` or ``min_slope``.
    """

    _extra_state = ("values",)

    def __init__(
        self, key: str, window: int = 5, mode: Mode = "max", z: float = 2.0, min_slope: float = 0.0, **kwargs: Any
    ) -> None:
        _check("window", window, lambda: isinstance(window, int) and window >= 3, "an int >= 3")
        _check("mode", mode, lambda: mode in ("min", "max"), "'min' or 'max'")
        _check("z", z, lambda: _number(z) and z >= 0, "a number >= 0")
        _check("min_slope", min_slope, lambda: _number(min_slope) and min_slope >= 0, "a number >= 0")
        self.window, self.mode, self.z, self.min_slope = window, mode, float(z), float(min_slope)
        kwargs.setdefault("name", "trend")
        super().__init__(key, **kwargs)

    def reset(self) -> None:
        """Forget history and the window."""
        super().reset()
        self.values: list[float] = []
        self.slope = 0.0

    def _condition(self, value: float) -> bool:
        self.values = (self.values + [value])[-self.window :]
        if len(self.values) < self.window:
            return False
        self.slope, mad = theil_sen(self.values)
        signed = self.slope if self.mode == "max" else -self.slope
        return signed > self.min_slope and signed * (self.window - 1) > self.z * mad

    def _reason(self, value: float) -> str:
        word = "rising" if self.mode == "max" else "falling"
        slope = f"Theil-Sen slope {self.slope:.3g} per evaluation over {self.window}"
        return f"{self.key} is {word}: {slope}, now {value:.4g}"


def theil_sen(values: Sequence[float]) -> tuple[float, float]:
    """Theil-Sen slope of ``values`` against 0..n-1 and the MAD of the residuals."""
    n = len(values)
    slope = statistics.median((values[j] - values[i]) / (j - i) for i in range(n) for j in range(i + 1, n))
    residuals = [v - slope * i for i, v in enumerate(values)]
    centre = statistics.median(residuals)
    return slope, statistics.median(abs(r - centre) for r in residuals)


class Compound(Rule):
    """Fires when every member rule's condition holds at the same evaluation (cross-metric confirmation).

    Members keep their own patience and warmup; their own alerts are not delivered. The compound is edge-triggered
    on the conjunction and re-arms when any member stops holding.

    Args:
        members: two or more rules, e.g. ``[Threshold(cos_key, 0.7, patience=3), Threshold(acc_key, 0.99)]``.
        name: rule name.
        severity: alert severity.

    Raises:
        ValueError: with fewer than two members.
    """

    def __init__(self, members: Sequence[Rule], name: str = "compound", severity: Severity = "warning") -> None:
        _check("members", members, lambda: len(members) >= 2 and all(isinstance(m, Rule) for m in members), "2+ rules")
        self.members = list(members)
        super().__init__(" & ".join(m.key for m in members), name=name, severity=severity)

    def observe(self, step: int, scalars: Mapping[str, float]) -> Alert | None:
        """Feed every member; fire when all hold."""
        if not any(m.key in scalars for m in self.members):
            return None
        for member in self.members:
            member.observe(step, scalars)
        holds = all(m.holds for m in self.members)
        if self._active or not holds:
            self._active = holds
            return None
        self._active = True
        reason = "; ".join(m._reason(scalars.get(m.key, math.nan)) for m in self.members)
        return Alert(self.name, self.key, step, scalars.get(self.members[0].key, math.nan), self.severity, reason)

    def update(self, step: int, value: float) -> Alert | None:
        """Not meaningful for a compound; use :meth:`observe`."""
        raise TypeError("Compound rules watch several keys: call observe(step, scalars)")

    def state_dict(self) -> dict[str, Any]:
        """Own state plus each member's."""
        return {**super().state_dict(), "members": [m.state_dict() for m in self.members]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore own and members' state."""
        super().load_state_dict(state)
        for member, saved in zip(self.members, state.get("members", []), strict=False):
            member.load_state_dict(saved)


class Phase(Compound):
    """A phase with an entry and an exit alert, each fired once per phase.

    Fires ``name`` when every ``enter`` rule holds, then ``exit_name`` when any ``exit`` rule holds, and re-arms. The
    ``exit`` rules are reset at entry and fed only inside the phase, so their running statistics (a running
    max, a baseline) start at the phase. For instance, the loss plateau of docs/metrics.md C1 enters on "loss flat
    and mean cosine > 0.9" and exits on "cosine 0.1 below its running max, or the loss falls by 20 %".

    Args:
        enter: rules that must all hold to enter (their patience counts).
        exit: rules of which one must hold to leave.
        name: entry alert name.
        exit_name: exit alert name.
        severity: entry severity.
        exit_severity: exit severity.

    Raises:
        ValueError: if ``enter`` or ``exit`` is empty.
    """

    def __init__(
        self,
        enter: Sequence[Rule],
        exit: Sequence[Rule],
        name: str = "phase",
        exit_name: str = "phase_exit",
        severity: Severity = "warning",
        exit_severity: Severity = "info",
    ) -> None:
        _check("enter", enter, lambda: len(enter) >= 1 and all(isinstance(r, Rule) for r in enter), "one or more rules")
        _check("exit", exit, lambda: len(exit) >= 1 and all(isinstance(r, Rule) for r in exit), "one or more rules")
        _check("exit_severity", exit_severity, lambda: exit_severity in _SEVERITIES, "'info', 'warning' or 'critical'")
        _check("exit_name", exit_name, lambda: exit_name.replace("_", "").isalnum(), "a snake_case rule name")
        self.enter, self.exit = list(enter), list(exit)
        self.exit_name, self.exit_severity = exit_name, exit_severity
        super().__init__(self.enter + self.exit, name=name, severity=severity)

    @property
    def names(self) -> tuple[str, ...]:
        """Entry and exit alert names."""
        return (self.name, self.exit_name)

    @property
    def inside(self) -> bool:
        """Whether the phase has been entered and not yet left."""
        return self._active

    def observe(self, step: int, scalars: Mapping[str, float]) -> Alert | None:
        """Feed the entry rules always and the exit rules inside the phase; return the transition's alert."""
        if not any(m.key in scalars for m in self.members):
            return None
        for member in self.enter:
            member.observe(step, scalars)
        if not self._active:
            if not all(m.holds for m in self.enter):
                return None
            self._active = True
            for member in self.exit:
                member.reset()
                member.observe(step, scalars)
            return self._alert(step, scalars, self.enter, self.name, self.severity)
        for member in self.exit:
            member.observe(step, scalars)
        fired = [m for m in self.exit if m.holds]
        if not fired:
            return None
        self._active = False
        return self._alert(step, scalars, fired, self.exit_name, self.exit_severity)

    @staticmethod
    def _alert(step: int, scalars: Mapping[str, float], why: list[Rule], name: str, severity: Severity) -> Alert:
        reason = "; ".join(m._reason(scalars.get(m.key, math.nan)) for m in why)
        return Alert(name, why[0].key, step, scalars.get(why[0].key, math.nan), severity, reason)


class NonFinite(Rule):
    """Fires (critical) when the value becomes NaN or Inf; re-arms when it is finite again.

    A NaN that was never measured does not fire: ``measured=False`` (the monitor passes it when every key of the
    probe family is NaN, e.g. no rows reached the probe: a fused LM head, a quantity a model family does not expose)
    for a key that has never been finite. The monitor warns about those instead. Inf always fires: it is a measured
    overflow.
    """

    _extra_state = ("_finite_seen",)

    def __init__(self, key: str, **kwargs: Any) -> None:
        kwargs.setdefault("name", "non_finite")
        kwargs.setdefault("severity", "critical")
        super().__init__(key, **kwargs)
        self._finite_seen = False

    @property
    def finite_seen(self) -> bool:
        """Whether the value has been finite at some evaluation (only then does a NaN fire)."""
        return self._finite_seen

    def update(self, step: int, value: float, measured: bool = True) -> Alert | None:
        """Feed one evaluation, finite or not; ``measured=False``: a NaN here may mean "nothing to measure"."""
        if math.isfinite(value):
            self._active, self._finite_seen = False, True
            return None
        if self._active or (math.isnan(value) and not self._finite_seen and not measured):
            return None
        self._active = True
        return Alert(self.name, self.key, step, value, self.severity, f"{self.key} is {value} (non-finite)")
