"""The snapshot probes that take their rows from the first training batch, and where that batch is read.

A probe built without a batch (``CollapseProbe()``, ``RankProbe()``, ...) waits for training rows. The driver's
batch is offered to it before each micro-batch; without one, the model's own inputs are read by one forward
pre-hook, removed as soon as no probe waits. Whether every rank holds its rows is agreed later, at a scheduled step
(:meth:`mechmon.engine.gate.Gate.with_batch`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from mechmon.engine.faults import Faults
from mechmon.engine.stream import model_inputs
from mechmon.probe import Probe

__all__ = ["FirstBatch"]


class FirstBatch:
    """The probes waiting for training rows (``waiting``) and the pre-hook that reads them when no batch is given.

    Args:
        faults: the monitor's fault isolation (a probe whose ``take_batch`` raises is disabled there).
    """

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.waiting: list[Probe] = []
        self._tap: RemovableHandle | None = None  # the pre-hook reading the model's inputs, while one is on

    def start(self, probes: Sequence[Probe]) -> None:
        """A run starts: every probe that needs a batch waits."""
        self.close()
        self.waiting = [p for p in probes if p.needs_batch]

    def restored(self) -> None:
        """After a state load: the probes whose batch was restored wait no more."""
        self.waiting = [p for p in self.waiting if p.needs_batch]

    def close(self) -> None:
        """Remove the pre-hook, if one is on (the run ends)."""
        if self._tap is not None:
            self._tap.remove()
            self._tap = None

    def offer(self, batch: Any, entry: nn.Module | None) -> None:
        """Before a micro-batch: give ``batch`` to the waiting probes, or without one read the model's inputs.

        The inputs are read at ``entry`` by a pre-hook, removed as soon as no probe waits (or at :meth:`close`).
        ``entry`` ``None`` (a compiled model called directly: no eager place to read its inputs): the waiting
        probes are disabled, once, with the fix.
        """
        if not self.waiting:
            return
        if batch is not None:
            self.take(batch)
        elif self._tap is None:
            self._read_inputs(entry)

    def take(self, batch: Any) -> None:
        """Give the waiting probes their probe batch from ``batch``; those that hold one wait no more."""
        for probe in self.waiting:
            self.faults.guarded(probe, probe.take_batch, batch)
        self.waiting = [p for p in self.waiting if p.needs_batch and p.name not in self.faults.disabled]

    def _read_inputs(self, entry: nn.Module | None) -> None:
        if entry is None:
            for probe in self.waiting:
                reason = (
                    f"probe {probe.name!r} takes its probe batch from the first training batch, which a compiled "
                    "model called directly hides from hooks; hand the batch over (monitor.step(step, batch)), wrap "
                    "the model with torch.compile(model) instead of model.compile(), or give the probe a batch"
                )
                warnings.warn(self.faults.disable(probe, reason), stacklevel=4)
            self.waiting = []
            return

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if module.training and self.waiting:
                self.take(model_inputs(args, kwargs))
            if not self.waiting:
                self.close()

        self._tap = entry.register_forward_pre_hook(hook, with_kwargs=True)
