"""Which probes run at a step: decided alike on every rank, before anyone sends.

Under ``torch.distributed`` every rank must send the same vector to the step's collective, and under FSDP every rank
must run the same probe forwards (each forward all-gathers parameters). So every decision that changes what a rank
sends is taken from facts every rank shares, or agreed first:

- **due** (:meth:`Gate.plan`): the probes' schedules on the step, minus the probes disabled by agreement, thinned
  by the budget (the same decision on every rank: the budget's stride is agreed at each evaluation). A schedule
  that raises on a rank counts as due there and flags its probe as failed, so the step's reduction disables it on
  every rank.
  Schedules are also checked once at attach, over their first :data:`HORIZON` steps: a schedule that raises or
  answers differently on some rank (it reads rank-local state) is disabled on every rank before training starts.
- **has its batch**: a probe that takes its rows from training may hold them on one rank and not on another (rows
  too short, all padding). Until every rank holds them, a scheduled step where it is due agrees with one tiny
  ``all_reduce`` of one number per such probe; a probe without its batch on some rank is skipped on every rank.
- **DDP ``join()``**: a rank that ran out of data shadows DDP's collectives, not mechmon's; while the join context
  of the watched ``DistributedDataParallel`` module is on (the same on every rank), mechmon evaluates nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import nn

from mechmon.distributed import all_ranks, rank_zero_warn, same_on_all_ranks, world_size
from mechmon.engine.budget import Budget
from mechmon.engine.faults import Faults
from mechmon.probe import Probe
from mechmon.schedule import Schedule

__all__ = ["Gate", "HORIZON"]

HORIZON = 1000  # steps over which schedules are compared across ranks at attach


class Gate:
    """The due-set decisions of one run (see the module docstring).

    Args:
        default: the monitor-wide schedule, for probes without their own.
        probes: every probe of the monitor.
        faults: the monitor's fault isolation (disabled probes; a schedule that raises fails its probe there).
        budget: the overhead budget, or ``None``.
    """

    def __init__(self, default: Schedule, probes: Sequence[Probe], faults: Faults, budget: Budget | None) -> None:
        self.default, self.probes, self.faults, self.budget = default, list(probes), faults, budget
        self.has_batch: set[str] = set()  # agreed: every rank holds these probes' batches
        self._takes_batch: set[str] = set()
        self._told: set[str] = set()
        self._root: nn.Module | None = None
        self._join_told = False

    def attach(self, root: nn.Module, probes: Sequence[Probe], device: torch.device) -> dict[str, str]:
        """Remember the run; returns probe name -> why its schedule cannot be trusted (the same on every rank)."""
        self._root = root
        self._takes_batch = {p.name for p in probes if p.needs_batch}
        self.has_batch = {p.name for p in probes if p.name not in self._takes_batch}
        if world_size() == 1:
            return {}
        prints = [_fingerprint(self.schedule(p)) for p in probes]
        same = same_on_all_ranks(prints, device)  # collective: once, at attach
        return {
            p.name: f"the schedule of probe {p.name!r} "
            + ("raised" if f < 0 else "gives different steps on different ranks")
            + f" over steps 1-{HORIZON} on some rank (a schedule must depend on the step only)"
            for p, f, ok in zip(probes, prints, same, strict=True)
            if not ok or f < 0
        }

    def plan(self, first: int, last: int, final: bool) -> list[Probe]:
        """The probes to run for optimizer steps ``first .. last``: every gate but the batch (:meth:`with_batch`).

        The enabled probes whose schedule is due (:meth:`due`; a schedule that raises fails its probe, see
        :class:`~mechmon.engine.faults.Faults`), thinned by the budget: on a due step it skips, only the probes with
        their own schedule run. ``final``: the optimizer step happened, so the budget counts the step as evaluated or
        skipped (before the training forward the same question is asked without counting).
        """
        enabled = [p for p in self.probes if p.name not in self.faults.disabled]
        due, errors = self.due(enabled, first, last)
        for name, err in errors.items():
            probe = self.probe(name)
            error = f"{type(err).__name__} at step {first}: {err}"
            self.faults.fail_here(probe, f"the schedule of probe {name!r} raised {error}")
            if name in self.faults.disabled:
                due.remove(probe)
        if self.budget is None or all(p.schedule is not None for p in due):
            return due
        admitted = self.budget.admits()
        if final:
            self.budget.take() if admitted else self.budget.skip()
        return due if admitted else [p for p in due if p.schedule is not None]

    def probe(self, name: str) -> Probe:
        """The probe named ``name``."""
        return next(p for p in self.probes if p.name == name)

    def schedule(self, probe: Probe) -> Schedule:
        """The schedule in force for ``probe``."""
        return probe.schedule or self.default

    def due(self, probes: Sequence[Probe], first: int, last: int) -> tuple[list[Probe], dict[str, Exception]]:
        """The probes due at any step of ``first .. last``, and the errors of schedules that raised (counted due).

        Nothing is due while DDP's ``join()`` is on (every rank alike; warned once).
        """
        if self.joining():
            return [], {}
        due, errors = [], {}
        for probe in probes:
            try:
                if any(self.schedule(probe)(s) for s in range(first, last + 1)):
                    due.append(probe)
            except Exception as err:  # caveat: a user's schedule callable must not stop the run
                errors[probe.name] = err
                due.append(probe)  # the other ranks may find it due: send it, flagged as failed
        return due, errors

    def with_batch(self, due: Sequence[Probe], device: torch.device, step: int) -> list[Probe]:
        """``due`` without the probes that do not hold their batch on every rank (agreed while one is missing)."""
        pending = [p for p in due if p.name not in self.has_batch]
        if not pending:
            return list(due)
        held = all_ranks([not p.needs_batch for p in pending], device)  # collective: see module
        for probe, ok in zip(pending, held, strict=True):
            if ok:
                self.has_batch.add(probe.name)
            elif probe.name not in self._told:
                self._told.add(probe.name)
                where = "yet" if world_size() == 1 else "on every rank yet (some rank's rows are too short or padding)"
                rank_zero_warn(
                    f"mechmon: probe {probe.name!r} has no probe batch {where}: it is skipped at step {step} and "
                    "waits for training rows that suit it (warned once)"
                )
        return [p for p in due if p.name in self.has_batch]

    def restore(self, probes: Sequence[Probe]) -> None:
        """After a state load: probes whose batch was restored are agreed again at their next due step."""
        self.has_batch = {p.name for p in probes if p.name not in self._takes_batch}

    def joining(self) -> bool:
        """Whether the watched DDP module's ``join()`` context is on (then nothing is evaluated; warned once)."""
        config = getattr(self._root, "_join_config", None)
        on = world_size() > 1 and bool(getattr(config, "enable", False))
        if on and not self._join_told:
            self._join_told = True
            rank_zero_warn(
                "mechmon: DistributedDataParallel.join() is on: a rank that ran out of data shadows DDP's collectives "
                "but not mechmon's, so mechmon evaluates nothing inside it. To monitor, give every rank the same "
                "number of batches (e.g. DistributedSampler(drop_last=True)) and leave join() out"
            )
        return on


def _fingerprint(schedule: Schedule) -> float:
    """A number naming the steps in ``1 .. HORIZON`` where ``schedule`` is due; -1 if it raises."""
    try:
        bits = bytes(bool(schedule(s)) for s in range(1, HORIZON + 1))
    except Exception:  # caveat: a user's schedule must not stop the run
        return -1.0
    return float(zlib.crc32(bits))
