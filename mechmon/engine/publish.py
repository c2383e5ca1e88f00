"""Rules, alert delivery and writing: every rank runs the rules on identical floats; rank 0 writes and delivers.

The publisher is the only part of the engine that talks to the outside: the writer (TensorBoard files and the
loggers an integration hands over), metric listeners (Lightning's ``callback_metrics``), the console and the user's
``on_alert`` callables. The custom-scalars layout is written once, at the first publish, from every key the probes
declared at setup plus that publish's keys, so a probe first due later still has its panel.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np
from rapidfuzz import process

from mechmon.alerts import _SEVERITIES, Alert, NonFinite, Rule, Threshold
from mechmon.background import warn_stopped
from mechmon.console import ConsoleView
from mechmon.distributed import rank_zero_warn
from mechmon.naming import metric_key
from mechmon.probe import Probe
from mechmon.writers import ALERT_COUNT, BEYOND, LEVEL, NullWriter

__all__ = ["Publisher", "Listener", "RuleKeys", "declared_keys"]

Listener = Callable[[Mapping[str, float], int], None]
_MAX_ALERTS_KEPT = 1000


class Publisher:
    """Runs the alert rules and publishes scalars, heatmaps and alerts.

    Args:
        namespace: first key segment.
        on_alert: callables receiving each alert on the writing rank; one that raises is warned about, not raised.
    """

    def __init__(self, namespace: str, on_alert: Sequence[Callable[[Alert], Any]]) -> None:
        self.namespace, self.on_alert = namespace, list(on_alert)
        self.alerts: list[Alert] = []
        self.rules: list[Rule] = []
        self.writer: NullWriter = NullWriter()
        self.view: ConsoleView | None = None
        self.listeners: list[Listener] = []
        self._nonfinite: dict[str, NonFinite] = {}
        self.hints: dict[str, str] = {}  # probe family -> why its values may not be measurable (for the warning)
        self.optional: set[str] = set()  # "<family>/<stat>" NaN when an evaluation had nothing to measure
        self._unmeasured: set[str] = set()  # families already warned about
        self._layout_keys: list[str] = []
        self._levels: dict[str, float] = {}
        self._modes: dict[str, str] = {}
        self._headlines: list[str] = []
        self._layout_written = False

    def open(
        self,
        rules: list[Rule],
        layout_keys: Iterable[str],
        writer: NullWriter | None,
        view: ConsoleView | None,
        listeners: Sequence[Listener] = (),
        headlines: Sequence[str] = (),
    ) -> None:
        """Start a run: the rules in force, the keys known at setup, and (on the writing rank) writer and console.

        ``headlines``: each probe's headline key, charted first in the TensorBoard overview.
        """
        self.rules = rules
        watched = [r for r in rules if isinstance(r, Threshold) and r.key.count("/") == 2]
        self._levels = {r.key: r.level for r in watched}
        self._modes = {r.key: r.mode for r in watched}
        self._layout_keys = list(layout_keys) + [f"{k}/{s}" for k in self._levels for s in (LEVEL, BEYOND)]
        self._headlines = list(headlines)
        self.writer, self.view, self.listeners = writer or NullWriter(), view, list(listeners)
        self._layout_written = False

    def check(self, step: int, scalars: Mapping[str, float]) -> list[Alert]:
        """Run the non-finite guard on every key, then every rule; returns the alerts that fired."""
        measured = {k.split("/")[1] for k, v in scalars.items() if math.isfinite(v)}  # families with a finite value
        bad = [
            self._nonfinite.setdefault(k, NonFinite(k)).update(step, v, self._measured(k, measured))
            for k, v in scalars.items()
        ]
        self._tell_unmeasured(step, scalars, measured)
        fired = _one_alert([a for a in bad if a is not None])
        for rule in self.rules:
            alert = rule.observe(step, scalars)
            fired += [_located(alert, scalars)] if alert else []
        return _one_per_rule(fired)

    def _measured(self, key: str, measured: set[str]) -> bool:
        """Whether a NaN at ``key`` was measured: its family has a finite value and the stat is not optional."""
        parts = key.split("/")
        return parts[1] in measured and "/".join(parts[1:3]) not in self.optional

    def _tell_unmeasured(self, step: int, scalars: Mapping[str, float], measured: set[str]) -> None:
        """One warning per probe family whose every value is NaN and never was finite (not measured, no alert)."""
        never: dict[str, list[str]] = {}
        for key, value in scalars.items():
            family = key.split("/")[1]
            if not self._measured(key, measured) and math.isnan(value) and not self._nonfinite[key].finite_seen:
                never.setdefault(family, []).append(key)
        for family, keys in never.items():
            if family in self._unmeasured:
                continue
            self._unmeasured.add(family)
            hint = self.hints.get(family)
            rank_zero_warn(
                f"mechmon: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} could not be measured at step {step} "
                f"(NaN since the first evaluation, so no non_finite alert){': ' + hint if hint else ''}",
                stacklevel=4,
            )

    def publish(
        self, step: int, scalars: dict[str, float], images: Mapping[str, np.ndarray], alerts: list[Alert]
    ) -> None:
        """Write scalars (plus a 1.0 marker per alert), heatmaps and alerts at ``step``."""
        markers = {metric_key("alerts", a.rule, namespace=self.namespace): 1.0 for a in alerts}
        if alerts:  # the number that fired: several at one step stay visible in one chart
            markers[metric_key("alerts", ALERT_COUNT, namespace=self.namespace)] = float(len(alerts))
        values = {**scalars, **markers}
        for listener in self.listeners:
            listener(values, step)
        if not self._layout_written:
            self._write("layout", dict.fromkeys(self._layout_keys + list(scalars)), self._headlines, self._levels)
            self._layout_written = True
        levels = {f"{k}/{LEVEL}": level for k, level in self._levels.items() if k in scalars}  # drawn in the charts
        levels |= {f"{k}/{BEYOND}": _beyond(scalars[k], level, self._modes[k]) for k, level in self._levels.items()
                   if k in scalars}  # fmt: skip
        self._write("scalars", {**values, **levels}, step)
        for key, matrix in images.items():
            self._write("image", key, matrix, step)
        if self.view is not None:
            self.view.update(step, scalars)
        self.deliver(alerts)

    def _write(self, method: str, *args: Any) -> None:
        """One writer call; the first that fails (a full disk, a logger that raises) stops writing, with a warning."""
        try:
            getattr(self.writer, method)(*args)
        except Exception as err:  # caveat: I/O under the run's own folder must never stop training
            warn_stopped(f"{type(self.writer).__name__}.{method}", err, stacklevel=4)
            self.writer = NullWriter()

    def deliver(self, alerts: Iterable[Alert]) -> None:
        """Keep, write and print each alert, and call the ``on_alert`` callables on the writing rank."""
        for alert in alerts:
            self.alerts = (self.alerts + [alert])[-_MAX_ALERTS_KEPT:]
            # TensorBoard keeps one text per tag and step (the last): each entry lists every alert of its step
            same = [a for a in self.alerts if a.step == alert.step]
            text = "\n\n".join(f"**{a.severity}** `{a.rule}`: {a.reason}" + _advice(a) for a in same)
            self._write("text", f"{self.namespace}/alerts", text, alert.step)
            if self.view is None:  # not the writing rank
                continue
            self.view.alert(alert)
            for fn in self.on_alert:
                try:
                    fn(alert)
                except Exception as err:  # caveat: a user's pager timing out must not stop the run
                    warnings.warn(f"mechmon: on_alert callable {fn!r} raised {type(err).__name__}: {err}", stacklevel=2)

    def flush(self) -> None:
        """Write the writer's buffered events to disk."""
        self._write("flush")

    def close(self) -> None:
        """Stop the console and close the writer."""
        if self.view is not None:
            self.view.stop()
        self._write("close")
        self.writer, self.view, self.listeners = NullWriter(), None, []

    def state_dict(self) -> dict[str, Any]:
        """Rule states, non-finite guards and the last 100 alerts (primitives only)."""
        return {
            "rules": {f"{r.name}|{r.key}": r.state_dict() for r in self.rules},
            "nonfinite": {k: r.state_dict() for k, r in self._nonfinite.items()},
            "alerts": [asdict(a) for a in self.alerts[-100:]],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; missing entries keep their defaults."""
        saved = state.get("rules", {})
        for rule in self.rules:
            rule.load_state_dict(saved.get(f"{rule.name}|{rule.key}", {}))
        for key, rule_state in state.get("nonfinite", {}).items():
            self._nonfinite.setdefault(key, NonFinite(key)).load_state_dict(rule_state)
        self.alerts = [Alert(**a) for a in state.get("alerts", ())]


class RuleKeys:
    """Warns once about each user rule that watches a key no probe logs, with the nearest key that exists.

    A key is judged once its probe has published (so keys that only appear after the first evaluation are seen
    first); a key whose probe segment names no probe of the monitor is judged at once. Late stats are never judged.

    Args:
        rules: the user's extra rules.
        probes: the monitor's probes (their names and late stats).
        namespace: first key segment.
    """

    def __init__(self, rules: Sequence[Rule], probes: Sequence[Probe], namespace: str) -> None:
        self.names = {p.name for p in probes} | {"alerts"}
        self.late = [p.key(stat) for p in probes for stat in p.late_stats]
        self.pending = {k: r.name for r in rules for k in r.key.split(" & ") if not self._late(k)}
        self.seen: set[str] = set()
        self.namespace = namespace

    def _late(self, key: str) -> bool:
        return any(key == k or key.startswith(f"{k}/") for k in self.late)

    def check(self, keys: Iterable[str]) -> None:
        """After a publish: warn about the rule keys that can be judged now and are missing."""
        if not self.pending:  # every rule judged: nothing more to do on any later step
            return
        self.seen.update(keys)
        published = {k.split("/")[1] for k in self.seen if k.count("/") >= 2}
        for key, rule in list(self.pending.items()):
            parts = key.split("/")
            probe = parts[1] if len(parts) >= 3 and parts[0] == self.namespace else None
            if key in self.seen:
                del self.pending[key]
            elif probe not in self.names or probe in published:
                del self.pending[key]
                near = process.extractOne(key, sorted(self.seen)) if self.seen else None
                hint = f"; did you mean {near[0]}?" if near else ""
                warnings.warn(
                    f"mechmon: rule {rule!r} watches {key}, which no probe logs, so it never fires{hint}", stacklevel=3
                )


def _beyond(value: float, level: float, mode: str) -> float:
    """The value where it is past ``level`` (above for ``"max"``, below for ``"min"``), the level elsewhere."""
    if not math.isfinite(value):
        return level
    return max(value, level) if mode == "max" else min(value, level)


def _located(alert: Alert, scalars: Mapping[str, float]) -> Alert:
    """An alert on a max or min over layers names the layer it came from (``<key>/Lxx`` equal to the value)."""
    stat = alert.key.rsplit("/", 1)[-1]
    if not (stat.endswith(("max", "min")) or stat.startswith(("max", "min"))) or not math.isfinite(alert.value):
        return alert
    layers = {k.rsplit("/", 1)[1]: v for k, v in scalars.items() if k.startswith(alert.key + "/L") and math.isfinite(v)}
    if not layers:
        return alert
    where = min(layers, key=lambda layer: abs(layers[layer] - alert.value))
    return replace(alert, reason=f"{alert.reason}; at layer {where} ({layers[where]:.4g})")


def _one_per_rule(fired: list[Alert]) -> list[Alert]:
    """One alert per rule name and step, with every reason.

    Rules sharing a name (``routing_collapse`` on the dead share and on the entropy) that fire together are one event.
    """
    merged: dict[str, Alert] = {}
    for alert in fired:
        first = merged.get(alert.rule)
        if first is None:
            merged[alert.rule] = alert
            continue
        severity = max(first.severity, alert.severity, key=_SEVERITIES.index)  # never hide the louder one
        merged[alert.rule] = replace(first, severity=severity, reason=f"{first.reason}; {alert.reason}")
    return list(merged.values())


def _one_alert(non_finite: list[Alert], shown: int = 5) -> list[Alert]:
    """One ``non_finite`` alert per step, naming the keys (NaN weights would otherwise give one per key)."""
    if len(non_finite) <= 1:
        return non_finite
    first = non_finite[0]
    listed = ", ".join(f"{a.key} = {a.value}" for a in non_finite[:shown])
    more = f" and {len(non_finite) - shown} more" if len(non_finite) > shown else ""
    reason = f"{len(non_finite)} metrics became non-finite: {listed}{more}"
    return [Alert(first.rule, first.key, first.step, first.value, first.severity, reason)]


def declared_keys(probes: Sequence[Probe]) -> list[str]:
    """Every key the probes name at setup (:meth:`Probe.keys`); a probe whose ``keys`` raises names none yet."""
    keys: list[str] = []
    for probe in probes:
        try:
            keys += probe.keys()
        except Exception:  # caveat: a user's probe must not stop the setup; its keys appear at its first publish
            pass
    return keys


def _advice(alert: Alert) -> str:
    """The alert's "what to do" line in TensorBoard's markdown, if it has one."""
    return f" *What to do:* {alert.advice}." if alert.advice else ""
