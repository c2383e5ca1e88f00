"""Fault isolation: a probe that raises is disabled with an alert, and the run goes on, on every rank alike.

In one process a failing probe is disabled at once. Under DDP the failing rank warns and stops running the probe
(``failed``); its failure travels with the next scheduled step's reduction (:meth:`Faults.sent`: per probe, how many
ranks failed and the first of them, a size fixed by the probes alone), and every rank disables the probe at that same
step (:meth:`Faults.agree`), so no rank sends what the others do not.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechmon.alerts import Alert
from mechmon.distributed import exact_dtype, rank, world_size
from mechmon.naming import metric_key
from mechmon.probe import Probe

__all__ = ["Faults"]


class Faults:
    """Which probes still run, and what happens when one raises.

    Args:
        probes: every probe of the monitor, in its order (the flags' order).
        deliver: where a ``probe_failed`` alert goes (the publisher's ``deliver``).
        namespace: the first key segment of the alert's key.
        step: the step an alert is stamped with (the monitor's current step).

    Attributes:
        disabled: names of the probes disabled for the rest of the run, agreed by every rank.
        failed: name -> reason, probes that raised on this rank and are not agreed yet (DDP only).
    """

    def __init__(
        self, probes: Sequence[Probe], deliver: Callable[[list[Alert]], Any], namespace: str, step: Callable[[], int]
    ) -> None:
        self.probes, self._deliver, self._namespace, self._step = list(probes), deliver, namespace, step
        self.disabled: set[str] = set()
        self.failed: dict[str, str] = {}

    def live(self, probes: Iterable[Probe]) -> list[Probe]:
        """The probes that have not failed on this rank (under DDP a local failure is agreed at the next reduction)."""
        return [p for p in probes if p.name not in self.failed and p.name not in self.disabled]

    def guarded(self, probe: Probe, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` under ``no_grad``; if it raises, ``probe`` fails here (:meth:`fail_here`) and None returns."""
        try:
            with torch.no_grad():  # a probe never builds graph: a state tied to autograd would grow every step
                return fn(*args)
        except Exception as err:  # caveat: a failing probe must never stop the run it watches
            self.fail_here(probe, f"probe {probe.name!r} raised {type(err).__name__}: {err}")
            return None

    def fail_here(self, probe: Probe, text: str) -> None:
        """A failure on this rank: disabled at once in one process; under DDP flagged for the step's collective."""
        if world_size() == 1:
            warnings.warn(self.disable(probe, text), stacklevel=3)
        elif probe.name not in self.failed:
            where = f"on rank {rank()}; it is disabled on every rank at the next scheduled step"
            warnings.warn(f"{text} {where}", stacklevel=3)
            self.failed[probe.name] = text

    def disable(self, probe: Probe, reason: str) -> str:
        """Disable ``probe`` for the rest of the run with a ``probe_failed`` alert; returns the alert's reason."""
        self.disabled.add(probe.name)
        self.failed.pop(probe.name, None)
        key = metric_key("alerts", "probe_failed", namespace=self._namespace)
        reason = f"{reason}; it is disabled for the rest of the fit"
        self._deliver([Alert("probe_failed", key, self._step(), math.nan, "warning", reason)])
        return reason

    def sent(self, device: torch.device) -> dict[str, tuple[Tensor, str]]:
        """What this rank adds to the reduction, per probe ``[P]`` on ``device`` (fill kernels, no host copy).

        ``failures``: 1 where the probe failed on this rank, summed over ranks; ``first_failure``: this rank's index
        where it failed, else the world size, reduced by MIN.
        """
        dtype = exact_dtype(device)
        failures_P = torch.zeros(len(self.probes), dtype=dtype, device=device)
        first_P = torch.full((len(self.probes),), float(world_size()), dtype=dtype, device=device)
        for i, probe in enumerate(self.probes):
            if probe.name in self.failed:
                failures_P[i], first_P[i] = 1.0, float(rank())
        return {"failures": (failures_P, "sum"), "first_failure": (first_P, "min")}

    def agree(self, failures_P: np.ndarray, first_P: np.ndarray) -> set[str]:
        """Disable, on every rank alike, each probe that failed on some rank (``failures_P`` ``[P]`` above 0).

        Args:
            failures_P: how many ranks each probe failed on (the reduced :meth:`sent`).
            first_P: the lowest rank it failed on.

        Returns the names disabled now (they log nothing at this step).
        """
        gone = set()
        for i, probe in enumerate(self.probes):
            if failures_P[i] > 0 and probe.name not in self.disabled:
                gone.add(probe.name)
                where = f"on {int(failures_P[i])} rank(s), first rank {int(first_P[i])}"
                self.disable(probe, f"probe {probe.name!r} raised {where} (see the warning there)")
        return gone
