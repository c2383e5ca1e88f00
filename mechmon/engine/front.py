"""The constructor every training-loop integration shares: validated options, the engine, alerts, close."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mechmon.adapters import AdapterSpec
from mechmon.alerts import Alert, Rule
from mechmon.checks import fail
from mechmon.engine.monitor import Monitor
from mechmon.probe import Probe
from mechmon.schedule import Schedule

__all__ = ["Integration"]


class Integration:
    """Base of the integrations (Lightning / Fabric, HF ``Trainer``): builds one :class:`Monitor` from the options.

    Args:
        probes: probe instances; default ``[InductionProbe(), LogitsProbe()]``.
        schedule: an int ``n`` (``every(n)``, plus step 1) or a :mod:`mechmon.schedule` predicate on the optimizer
            step; ``None`` (default): ``every(50)`` under the default budget. Probes may override it.
        image_schedule: when to write ``[L, H]`` heatmaps; default every 5th evaluation of an ``every(n)`` schedule.
        adapter: an :class:`~mechmon.adapters.Adapter`, a factory ``fn(module) -> Adapter``, or ``None`` to discover
            the model (any HF decoder, TransformerLens, a decoder module with a block list).
        model: dotted path of the submodule to monitor when the module holds several models (e.g. ``"student"``).
        rules: extra alert rules on any ``mechmon/...`` key (the probes' own rules are always on).
        on_alert: callables receiving each :class:`~mechmon.alerts.Alert` on rank 0.
        namespace: first key segment (default ``"mechmon"``).
        log_dir: folder for mechmon's own TensorBoard event files (each integration says its default).
        console: the live console panel: ``None`` (default) in an interactive terminal, inside the progress bar
            when one is drawn; ``True`` / ``False`` always / never. Alert lines are always printed.
        budget: the largest share of wall time the monitor may take (``0.01``: 1 %), see
            :class:`~mechmon.engine.Monitor`; ``"auto"`` (default): 1 % when ``schedule`` is left at its default,
            off when one is given; ``None``: every scheduled step is evaluated.

    Raises:
        TypeError, ValueError: on invalid arguments (the message names the argument).
    """

    def __init__(
        self,
        probes: Sequence[Probe] | None = None,
        schedule: Schedule | int | None = None,
        image_schedule: Schedule | int | None = None,
        adapter: AdapterSpec = None,
        model: str | None = None,
        rules: Sequence[Rule] = (),
        on_alert: Sequence[Callable[[Alert], Any]] = (),
        namespace: str = "mechmon",
        log_dir: str | Path | None = None,
        console: bool | None = None,
        budget: float | str | None = "auto",
    ) -> None:
        if model is not None and not isinstance(model, str):
            fail(type(self).__name__, "model", model, "a dotted submodule path such as 'student', or None", TypeError)
        self.engine = Monitor(
            probes=probes, schedule=schedule, image_schedule=image_schedule, adapter=adapter, submodule=model,
            rules=rules, on_alert=on_alert, namespace=namespace, log_dir=log_dir, console=console, budget=budget,
        )  # fmt: skip
        self.probes, self.namespace, self.log_dir = self.engine.probes, namespace, log_dir

    @property
    def alerts(self) -> list[Alert]:
        """Every alert raised so far (the last 1,000), oldest first."""
        return self.engine.alerts

    def close(self) -> None:
        """End the run: remove every hook, drain off-thread results, close the event files (idempotent)."""
        self.engine.close()
