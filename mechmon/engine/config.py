"""The monitor's validated configuration, shared by the engine and every integration.

Every argument is checked when the monitor is built, before training starts, with a message that names the
argument and the fix (``Owner(arg=...) must be <what>, got <value>``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechmon.adapters import Adapter, AdapterSpec
from mechmon.alerts import Alert, Rule
from mechmon.checks import fail, flag
from mechmon.probe import Probe
from mechmon.schedule import Schedule, _Every, as_schedule, every

__all__ = ["MonitorConfig"]

_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SUBMODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


@dataclass
class MonitorConfig:
    """What a monitor watches, when, and where it reports (see :class:`mechmon.Monitor` for each field)."""

    probes: list[Probe]
    schedule: Schedule
    image_schedule: Schedule
    adapter: AdapterSpec
    submodule: str | None
    rules: list[Rule]
    on_alert: list[Callable[[Alert], Any]]
    namespace: str
    log_dir: str | Path | None
    console: bool | None

    @classmethod
    def build(
        cls,
        owner: str,
        *,
        probes: Sequence[Probe] | None,
        schedule: Schedule | int,
        image_schedule: Schedule | int | None,
        adapter: AdapterSpec,
        submodule: str | None,
        rules: Sequence[Rule],
        on_alert: Sequence[Callable[[Alert], Any]],
        namespace: str,
        log_dir: str | Path | None,
        console: bool | None,
    ) -> MonitorConfig:
        """Validate every argument.

        Raises:
            TypeError: on arguments of the wrong type.
            ValueError: on an invalid namespace or submodule path, an empty probe list or duplicate probe names.
        """
        sched = _runs(owner, "schedule", as_schedule(schedule, "schedule"))
        if adapter is not None and not (isinstance(adapter, Adapter) or callable(adapter)):
            fail(owner, "adapter", adapter, "an Adapter, a callable root -> Adapter, or None", TypeError)
        if submodule is not None and (not isinstance(submodule, str) or not _SUBMODULE_RE.match(submodule)):
            fail(owner, "submodule", submodule, "a dotted submodule path such as 'student', or None", TypeError)
        if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
            fail(owner, "namespace", namespace, "snake_case like 'mechmon'")
        if log_dir is not None and not isinstance(log_dir, (str, Path)):
            fail(owner, "log_dir", log_dir, "a path or None", TypeError)
        probes = _probes(owner, probes)
        for probe in probes:
            if probe.schedule is not None:
                _runs(type(probe).__name__, "schedule", probe.schedule)
        return cls(
            probes=probes,
            schedule=sched,
            image_schedule=_runs(owner, "image_schedule", _image_schedule(sched, image_schedule)),
            adapter=adapter,
            submodule=submodule,
            rules=_items(owner, "rules", rules, lambda r: isinstance(r, Rule), "mechmon.alerts.Rule instances"),
            on_alert=_items(owner, "on_alert", on_alert, callable, "callables taking an Alert"),
            namespace=namespace,
            log_dir=log_dir,
            console=None if console is None else flag(owner, "console", console),
        )


def _runs(owner: str, arg: str, schedule: Schedule) -> Schedule:
    """Fail fast on a schedule that cannot answer for step 1 (it would otherwise fail in the run)."""
    try:
        schedule(1)
    except Exception as err:
        fail(owner, arg, schedule, f"a callable step -> bool (at step 1 it raised {type(err).__name__}: {err})")
    return schedule


def _probes(owner: str, probes: Sequence[Probe] | None) -> list[Probe]:
    if probes is None:
        from mechmon.probes import InductionProbe, LogitsProbe

        return [InductionProbe(), LogitsProbe()]
    probes = _items(owner, "probes", probes, lambda p: isinstance(p, Probe), "Probe instances such as InductionProbe()")
    if not probes:
        fail(owner, "probes", probes, "a non-empty list; omit it for the defaults [InductionProbe(), LogitsProbe()]")
    names = [p.name for p in probes]
    if len(set(names)) != len(names):
        fail(owner, "probes", names, "probes with unique names (they are key segments)")
    return probes


def _items(owner: str, arg: str, items: Any, ok: Callable[[Any], bool], need: str) -> list:
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        fail(owner, arg, items, f"a sequence of {need}", TypeError)
    items = list(items)
    if not all(ok(i) for i in items):
        fail(owner, arg, items, f"a sequence of {need}", TypeError)
    return items


def _image_schedule(schedule: Schedule, image_schedule: Schedule | int | None) -> Schedule:
    if image_schedule is not None:
        return as_schedule(image_schedule, "image_schedule")
    if isinstance(schedule, _Every):
        return every(schedule.n * 5, offset=schedule.offset, first=schedule.first)
    return schedule
