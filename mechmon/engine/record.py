"""One record per scheduled step, and the step's one device-to-host transfer.

The record is created once when a scheduled step runs and carries everything the step produces, in order:
the due probes, the metric tensors each probe computed, the tensors each probe's host work needs, the reduced parts
(failure counts, the budget's times), their host copies, and the results. Nothing travels through string-prefixed keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mechmon.probe import Probe

__all__ = ["StepRecord", "to_host"]

HostValue = float | np.ndarray


@dataclass
class StepRecord:
    """What one scheduled step computes, from the due probes to the published values.

    Attributes:
        step: the optimizer step (``global_step``).
        due: the probes due at this step, in the monitor's order (the same list on every rank).
        with_images: whether 2-d results are written as heatmaps at this step.
        metrics: probe name -> metric key -> device tensor (0-d, or 2-d at image steps).
        host_inputs: probe name -> input name -> device tensor for :meth:`Probe.finish`.
        reduced: part name -> its value reduced over ranks ``[n]`` on the device (the failure counts, the budget's
            times: what the step's reduction carried besides the states).
        scalars: metric key -> float, after the transfer and ``finish``.
        images: metric key -> ``[rows, cols]`` array.
    """

    step: int
    due: list[Probe]
    with_images: bool
    metrics: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    host_inputs: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    reduced: dict[str, Tensor] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)

    def tensors(self) -> list[Tensor]:
        """Every tensor of the transfer, in a fixed order: metrics, host inputs, then the reduced parts."""
        parts = [t for per in self.metrics.values() for t in per.values()]
        parts += [t for per in self.host_inputs.values() for t in per.values()]
        return parts + list(self.reduced.values())

    def unpack(
        self, values: Sequence[HostValue]
    ) -> tuple[dict[str, dict[str, HostValue]], dict[str, dict], dict[str, np.ndarray]]:
        """Split the host copies back into (metrics per probe, host inputs per probe, reduced parts ``[n]``)."""
        it = iter(values)
        metrics = {p: {k: next(it) for k in per} for p, per in self.metrics.items()}
        inputs = {p: {k: np.asarray(next(it)) for k in per} for p, per in self.host_inputs.items()}
        reduced = {name: np.asarray(next(it)) for name in self.reduced}
        return metrics, inputs, reduced


def to_host(tensors: Sequence[Tensor]) -> list[HostValue]:
    """One stacked device-to-host transfer; 0-d tensors become floats, others numpy arrays of their shape."""
    if not tensors:
        return []
    dtype = torch.float32 if tensors[0].device.type == "mps" else torch.float64  # MPS has no float64
    flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])
    values = np.asarray(flat.cpu())  # sync: the one device-to-host transfer of a scheduled step
    out: list[HostValue] = []
    offset = 0
    for t in tensors:
        chunk = values[offset : offset + t.numel()]
        out.append(float(chunk[0]) if t.ndim == 0 else chunk.reshape(tuple(t.shape)))
        offset += t.numel()
    return out
