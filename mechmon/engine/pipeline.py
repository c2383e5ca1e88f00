"""One scheduled step as a pipeline of stages, each handing its value to the next through one caller.

    forwards -> reduce -> transfer -> agree -> finish -> publish

Every rank runs every stage with the same due probes (:meth:`mechmon.engine.gate.Gate.plan` decided them alike):

- **forwards**: the snapshot probes' own ``no_grad`` forwards (the same on every rank: FSDP gathers parameters in
  them), then ``evaluate`` of the probes that read gradients or weights;
- **reduce**: **one** collective of every probe state plus the named parts each rank adds (its failure flags, the
  budget's times) (:func:`mechmon.distributed.reduce_states`);
- **transfer**: each live probe's ``compute`` and ``host_inputs``, then **one** device-to-host copy of all of it and
  of the gathered parts (:func:`mechmon.engine.record.to_host`);
- **agree**: the probes some rank flagged are disabled on every rank and log nothing at this step;
- **finish**: host floats, the probes' ``finish`` on their host copies, the budget's next stride;
- **publish**: the alert rules, then the writers (rank 0) and listeners; then the states are reset and the
  off-thread results of earlier steps published.

A stage that fails for one probe disables that probe (:class:`mechmon.engine.faults.Faults`), never the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechmon.adapters import Adapter
from mechmon.distributed import reduce_states
from mechmon.engine.budget import Budget
from mechmon.engine.faults import Faults
from mechmon.engine.forward import run_groups
from mechmon.engine.publish import Publisher
from mechmon.engine.record import HostValue, StepRecord, to_host
from mechmon.naming import metric_key
from mechmon.probe import Probe

__all__ = ["StepPipeline"]


class StepPipeline:
    """The stages of one scheduled step (see the module docstring), for one attached run.

    Args:
        adapter: the watched model's adapter.
        names: probe name -> its resolved capture names.
        probes: every probe of the monitor (for the off-thread results).
        faults: the monitor's fault isolation.
        publisher: rules and writers.
        budget: the overhead budget, or ``None``.
        namespace: first key segment.
        device: the states' device.
        after_publish: called with the published scalars' keys (the monitor's rule-key check).
    """

    def __init__(
        self,
        adapter: Adapter,
        names: dict[str, list[str]],
        probes: Sequence[Probe],
        faults: Faults,
        publisher: Publisher,
        budget: Budget | None,
        namespace: str,
        device: torch.device,
        after_publish: Callable[[dict[str, float]], Any],
    ) -> None:
        self.adapter, self.names, self.probes, self.faults = adapter, names, list(probes), faults
        self.publisher, self.budget, self.namespace, self.device = publisher, budget, namespace, device
        self.after_publish = after_publish

    def run(self, record: StepRecord) -> None:
        """Every stage for ``record`` (its step, due probes and image flag set), then the probes' states reset."""
        started = time.perf_counter()
        self.forwards(record)
        record.gathered = self.reduce(record)
        metrics, inputs, gathered = self.transfer(record)
        gone = self.faults.agree(gathered["failed"])  # probes that failed on any rank log nothing this step
        self.finish(record, metrics, inputs, gathered, gone)
        self.publish(record)
        for probe in record.due:
            probe.reset()
        self.publish_late()
        if self.budget is not None:
            self.budget.add(time.perf_counter() - started)

    def forwards(self, record: StepRecord) -> None:
        """The snapshot probes' forwards, then ``evaluate`` of the others (gradients and weights read now)."""
        snapshots = [p for p in record.due if p.kind == "snapshot"]
        run_groups(snapshots, self.adapter, self.names, self.faults.guarded)  # every rank runs the same (FSDP)
        for probe in self.faults.live(record.due):
            if probe.kind != "snapshot":
                self.faults.guarded(probe, probe.evaluate)

    def reduce(self, record: StepRecord) -> dict[str, Tensor]:
        """The step's one collective: states reduced in place; returns each sent part gathered ``[world, n]``."""
        gathered, _ = reduce_states(record.due, self.sent())  # collective: every rank, by step only
        return gathered

    def sent(self) -> dict[str, Tensor]:
        """What this rank adds to the collective besides the states, by name.

        Its failure flags ``[P]`` and, with a budget, its ``[spent, elapsed]`` seconds, filled by fill kernels on the
        states' device (no host copy).
        """
        sent = {"failed": self.faults.flags(self.device)}
        if self.budget is not None:
            sent["budget"] = torch.zeros(2, device=self.device)
            sent["budget"][0], sent["budget"][1] = self.budget.measured()
        return sent

    def transfer(
        self, record: StepRecord
    ) -> tuple[dict[str, dict[str, HostValue]], dict[str, dict], dict[str, np.ndarray]]:
        """Each live probe's metric tensors (0-d; 2-d at image steps) and host inputs, then the one copy to host.

        Returns (metrics per probe, host inputs per probe, gathered parts), as :meth:`StepRecord.unpack`.
        """
        for probe in self.faults.live(record.due):
            computed = self.faults.guarded(probe, probe.compute) or {}
            keep = {k: v for k, v in computed.items() if v.ndim == 0 or (record.with_images and v.ndim == 2)}
            record.metrics[probe.name] = keep
            inputs = self.faults.guarded(probe, probe.host_inputs) or {}
            if inputs:
                record.host_inputs[probe.name] = inputs
        return record.unpack(to_host(record.tensors()))

    def finish(
        self,
        record: StepRecord,
        metrics: dict[str, dict[str, HostValue]],
        inputs: dict[str, dict],
        gathered: dict[str, np.ndarray],
        gone: set[str],
    ) -> None:
        """The record's scalars and images: host values, ``finish`` of the probes with host inputs, the budget's."""
        record.scalars.update(self.stretch(gathered.get("budget")))
        for name, values in metrics.items():
            if name not in gone:
                record.scalars.update({k: v for k, v in values.items() if isinstance(v, float)})
                record.images.update({k: v for k, v in values.items() if not isinstance(v, float)})
        for probe in record.due:
            if probe.name in inputs and probe.name not in gone:
                record.scalars.update(self.faults.guarded(probe, probe.finish, inputs[probe.name], record.step) or {})

    def stretch(self, times_W2: np.ndarray | None) -> dict[str, float]:
        """With a budget: the next stride from the maxima over ranks of ``[spent, elapsed]`` (the same everywhere)."""
        if times_W2 is None or self.budget is None:
            return {}
        spent, elapsed = times_W2.max(axis=0)
        share = self.budget.agree(float(spent), float(elapsed))
        ns = self.namespace
        return {metric_key("monitor", "overhead_frac", namespace=ns): share,
                metric_key("monitor", "stride", namespace=ns): float(self.budget.stride)}  # fmt: skip

    def publish(self, record: StepRecord) -> None:
        """Alert rules, then writers and listeners, for the record."""
        alerts = self.publisher.check(record.step, record.scalars)
        self.publisher.publish(record.step, record.scalars, record.images, alerts)
        self.after_publish(record.scalars)

    def publish_late(self, wait: bool = False) -> None:
        """Publish off-thread results at the step of the probe forward they came from, after running the rules."""
        for probe in self.probes:
            for step, scalars in self.faults.guarded(probe, probe.late_results, wait) or []:
                self.publisher.publish(step, scalars, {}, self.publisher.check(step, scalars))
