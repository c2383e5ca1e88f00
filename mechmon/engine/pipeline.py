"""One scheduled step as a pipeline of stages, each handing its value to the next through one caller.

    forwards -> reduce -> transfer -> agree -> finish -> publish

Every rank runs every stage with the same due probes (:meth:`mechmon.engine.gate.Gate.plan` decided them alike):

- **forwards**: the snapshot probes' own ``no_grad`` forwards (the same on every rank: FSDP gathers parameters in
  them), then ``evaluate`` of the probes that read gradients or weights;
- **reduce**: every probe state plus the parts each rank adds (its failure counts, the budget's times) in one
  fixed-size ``all_reduce`` per op (SUM; MAX carrying MIN) (:func:`mechmon.distributed.reduce_states`);
- **transfer**: each live probe's ``compute`` and ``host_inputs``, then **one** device-to-host copy of all of it and
  of the reduced parts (:func:`mechmon.engine.record.to_host`);
- **agree**: the probes some rank flagged are disabled on every rank and log nothing at this step;
- **finish**: host floats, the probes' ``finish`` on their host copies, the budget's next stride;
- **publish**: the alert rules, then the writers (rank 0) and listeners; then the states are reset and the
  off-thread results of earlier steps published.

A stage that fails for one probe disables that probe (:class:`mechmon.engine.faults.Faults`), never the step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechmon.adapters import Adapter
from mechmon.distributed import exact_dtype, reduce_states
from mechmon.engine.budget import Budget
from mechmon.engine.faults import Faults
from mechmon.engine.forward import run_groups
from mechmon.engine.publish import Publisher
from mechmon.engine.record import HostValue, StepRecord, to_host
from mechmon.naming import metric_key
from mechmon.probe import OWN_FORWARD, TRAINING_FORWARD, Probe

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
        record.reduced = self.reduce(record)
        metrics, inputs, reduced = self.transfer(record)
        gone = self.faults.agree(reduced["failures"], reduced["first_failure"])  # they log nothing this step
        self.finish(record, metrics, inputs, reduced, gone)
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
        """The step's reduction: states reduced in place; returns each sent part reduced over ranks ``[n]``.

        The activation probes' states are sent by the ranks that feed them (:meth:`Adapter.holds_activations`): a
        tensor-parallel group's other ranks hold copies of the same gathered captures, and pipeline stages before the
        last pass theirs on; those send the op's identity, so each row counts once. Under pipeline parallel the
        replicated states of those probes are sent by one rank (:meth:`Adapter.leads_activations`), the identity by
        all others; elsewhere replicated states are identical on every rank and stay out of the reduction.
        """
        holds, leads = self.adapter.holds_activations(), self.adapter.leads_activations()
        staged = self.adapter.pipeline_stages > 1
        parts = []
        for probe in record.due:
            activations = probe.source in (OWN_FORWARD, TRAINING_FORWARD)
            for t, spec in probe.states().values():
                if spec.replicated and not (staged and activations):
                    continue
                if activations and not (leads if spec.replicated else holds):
                    t.fill_(identity(spec.reduce, t.dtype))
                parts.append((t, spec.reduce))
        sent = self.sent()
        reduce_states(parts + list(sent.values()))  # collective: every rank, by step only, a size fixed by the probes
        return {name: t for name, (t, _) in sent.items()}

    def sent(self) -> dict[str, tuple[Tensor, str]]:
        """What this rank adds to the reduction besides the states: name -> (tensor, reduce op).

        Its failure counts (:meth:`Faults.sent`) and, with a budget, its ``[spent, elapsed]`` seconds (MAX), filled by
        fill kernels on the states' device (no host copy).
        """
        sent = self.faults.sent(self.device)
        if self.budget is not None:
            times = torch.zeros(2, dtype=exact_dtype(self.device), device=self.device)
            times[0], times[1] = self.budget.measured()
            sent["budget"] = (times, "max")
        return sent

    def transfer(
        self, record: StepRecord
    ) -> tuple[dict[str, dict[str, HostValue]], dict[str, dict], dict[str, np.ndarray]]:
        """Each live probe's metric tensors (0-d; 2-d at image steps) and host inputs, then the one copy to host.

        Returns (metrics per probe, host inputs per probe, reduced parts), as :meth:`StepRecord.unpack`.
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
        reduced: dict[str, np.ndarray],
        gone: set[str],
    ) -> None:
        """The record's scalars and images: host values, ``finish`` of the probes with host inputs, the budget's."""
        record.scalars.update(self.stretch(reduced.get("budget")))
        for name, values in metrics.items():
            if name not in gone:
                record.scalars.update({k: v for k, v in values.items() if isinstance(v, float)})
                record.images.update({k: v for k, v in values.items() if not isinstance(v, float)})
        for probe in record.due:
            if probe.name in inputs and probe.name not in gone:
                record.scalars.update(self.faults.guarded(probe, probe.finish, inputs[probe.name], record.step) or {})

    def stretch(self, times: np.ndarray | None) -> dict[str, float]:
        """With a budget: the next stride from the maxima over ranks of ``[spent, elapsed]`` (the same everywhere)."""
        if times is None or self.budget is None:
            return {}
        spent, elapsed = times
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


def identity(reduce: str, dtype: torch.dtype) -> float:
    """What a rank sends that changes nothing in the reduction ``reduce`` of tensors of ``dtype``."""
    if reduce == "sum":
        return 0.0
    if dtype.is_floating_point:
        low, high = -math.inf, math.inf
    else:
        low, high = torch.iinfo(dtype).min, torch.iinfo(dtype).max
    return low if reduce == "max" else high
