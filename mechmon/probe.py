"""Probe base class: device-resident state with declared cross-rank reductions.

The protocol mirrors torchmetrics' ``Metric`` (``add_state`` / ``update`` / ``compute`` / ``reset``) without its
hidden collectives: the monitor packs every probe's state into one buffer per (reduce op, dtype) and reduces
once per scheduled step (``mechmon.distributed``). ``update`` and ``compute`` never sync with the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from mechmon.adapters.base import LOGITS
from mechmon.alerts import Rule
from mechmon.checks import fail
from mechmon.naming import metric_key
from mechmon.schedule import Schedule, as_schedule

if TYPE_CHECKING:
    from mechmon.adapters import Adapter

__all__ = [
    "Probe",
    "SnapshotProbe",
    "StreamingProbe",
    "StateSpec",
    "REDUCE_OPS",
    "SOURCES",
    "OWN_FORWARD",
    "TRAINING_FORWARD",
    "GRADIENTS",
    "WEIGHTS",
]

REDUCE_OPS = ("sum", "max", "min")
Kind = Literal["snapshot", "streaming"]
Source = Literal["own_forward", "training_forward", "gradients", "weights"]
OWN_FORWARD: Source = "own_forward"  # a no_grad forward of the probe's own batch (replayable)
TRAINING_FORWARD: Source = "training_forward"  # hooks on the training forward of a scheduled step
GRADIENTS: Source = "gradients"  # the gradients, read before the optimizer step
WEIGHTS: Source = "weights"  # the parameters alone, after the optimizer step (replayable)
SOURCES = (OWN_FORWARD, TRAINING_FORWARD, GRADIENTS, WEIGHTS)


@dataclass
class StateSpec:
    """One declared state: its default, reduce op, whether it is identical on every rank, whether ``setup`` made it."""

    default: Tensor
    reduce: str
    replicated: bool
    from_setup: bool = False


class Probe:
    """Base class of every mechmon probe.

    Class attributes:
        name: registry name and key segment.
        requires: canonical capture names this probe reads (see :mod:`mechmon.adapters`).
        source: what the probe reads, which decides when the monitor calls it: ``"own_forward"`` (its own batch,
            one ``no_grad`` eval forward per scheduled step, then :meth:`update`), ``"training_forward"`` (hooks on
            the scheduled step's training forwards, :meth:`update` after each), ``"gradients"``
            (:meth:`before_optimizer_step`, then :meth:`evaluate`) or ``"weights"`` (:meth:`evaluate` after the
            optimizer step). ``kind`` and ``replayable`` follow from it.
        kind: ``"snapshot"`` (``source="own_forward"``) or ``"streaming"`` (the others); derived, for reading.
        late_stats: stats that may first appear after the first log (off-thread results, criteria that start
            later); named here so the TensorBoard panel layout, which is written once, has their charts.
        headline: the stat shown first (the overview panel, the report); default the first key logged.
        unmeasured_hint: why this probe's values may be NaN from its first evaluation on (never measured: no
            ``non_finite`` alert), and the fix; the monitor's one warning quotes it.
        optional_stats: stats that are NaN when an evaluation had nothing to measure (the update cosine of a step
            that moved no weight, at learning rate 0); before their first finite value such a NaN is warned about,
            never a ``non_finite`` alert.
        replayable: whether the probe can measure a saved checkpoint (``mechmon scan``): its source is its own
            forward or the weights, not the training forward or the gradients; derived.
        needs_batch: whether the probe still waits for rows from a training batch (snapshot probes given none).
        batch_key: probes with equal keys share one forward of the same batch; ``None``: never shared.
        chained: its forwards feed the model's output back in as the next input (greedy generation): under pipeline
            parallel only the last stage holds that output, so the probe is off there.

    Args:
        schedule: optional per-probe schedule (int ``n`` means ``every(n)``) overriding the monitor default.
        rules: alert rules replacing :meth:`default_rules`; ``[]`` disables this probe's alerts.

    Raises:
        TypeError: on a bad ``schedule``.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    source: ClassVar[Source] = OWN_FORWARD
    kind: ClassVar[Kind] = "snapshot"
    late_stats: ClassVar[tuple[str, ...]] = ()
    replayable: ClassVar[bool] = True
    headline: ClassVar[str] = ""
    unmeasured_hint: ClassVar[str] = ""  # why its values may be NaN from the start, and the fix (for the warning)
    optional_stats: ClassVar[tuple[str, ...]] = ()  # NaN when an evaluation had nothing to measure (not a fault)
    chained: ClassVar[bool] = False  # its forwards feed the model's output back in (greedy generation)
    needs_batch: bool = False  # a snapshot probe that builds its batch from the first training batch
    batch_key: object = None  # equal keys: the same batch, so probes can share one forward (None: never shared)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Derive ``kind`` and ``replayable`` from ``source``.

        A subclass that names only ``kind`` keeps it: its source is its own forward for ``"snapshot"``, the training
        forward for ``"streaming"``.

        Raises:
            ValueError: at class definition, if ``source`` is not one of :data:`SOURCES`.
        """
        super().__init_subclass__(**kwargs)
        if "source" not in cls.__dict__ and "kind" in cls.__dict__:
            cls.source = OWN_FORWARD if cls.kind == "snapshot" else TRAINING_FORWARD
        if cls.source not in SOURCES:
            raise ValueError(f"{cls.__name__}.source must be one of {SOURCES}, got {cls.source!r}")
        cls.kind = "snapshot" if cls.source == OWN_FORWARD else "streaming"
        cls.replayable = cls.source in (OWN_FORWARD, WEIGHTS)

    def __init__(self, schedule: Schedule | int | None = None, rules: list[Rule] | None = None) -> None:
        self.schedule = None if schedule is None else as_schedule(schedule, "schedule")
        ok = rules is None or (isinstance(rules, (list, tuple)) and all(isinstance(r, Rule) for r in rules))
        if not ok:
            fail(type(self).__name__, "rules", rules, "a list of mechmon.alerts.Rule ([] silences it)", TypeError)
        self._rules = None if rules is None else list(rules)
        self._specs: dict[str, StateSpec] = {}
        self._attaching = False
        self.namespace = "mechmon"

    # -- state -------------------------------------------------------------------------------------------
    def add_state(self, name: str, default: Tensor, reduce: str, replicated: bool = False) -> None:
        """Declare a fixed-shape tensor state, reset to ``default`` after every log.

        In ``__init__`` for states whose shape is known there, in :meth:`setup` for the others (declared anew at each
        run: :meth:`attach` forgets the previous run's).

        Raises:
            ValueError: if ``reduce`` is not one of ``sum``, ``max``, ``min`` or the name is taken.
            TypeError: if ``default`` is not a tensor.
        """
        if reduce not in REDUCE_OPS:
            raise ValueError(f"reduce must be one of {REDUCE_OPS}, got {reduce!r}")
        if not isinstance(default, Tensor):
            raise TypeError(f"state {name!r} needs a tensor default (no list states), got {type(default).__name__}")
        if name in self._specs and not self._attaching:
            raise ValueError(f"state {name!r} is already declared")
        self._specs[name] = StateSpec(default.detach().clone(), reduce, replicated, self._attaching)
        setattr(self, name, default.detach().clone())

    def states(self) -> dict[str, tuple[Tensor, StateSpec]]:
        """The live state tensors with their specs, in declaration order."""
        return {n: (getattr(self, n), s) for n, s in self._specs.items()}

    def to(self, device: torch.device | str) -> Probe:
        """Move every state (and its default) to ``device``."""
        for n, spec in self._specs.items():
            spec.default = spec.default.to(device)
            setattr(self, n, getattr(self, n).to(device))
        return self

    def reset(self) -> None:
        """Restore every state to its default in place (never rebinds)."""
        for n, spec in self._specs.items():
            getattr(self, n).copy_(spec.default)

    def state_dict(self) -> dict[str, Tensor]:
        """CPU copies of the states (called at checkpoint time only)."""
        return {n: getattr(self, n).detach().cpu() for n in self._specs}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Copy saved states in place; unknown or missing names are ignored."""
        for n in self._specs:
            if n in state and tuple(state[n].shape) == tuple(getattr(self, n).shape):
                getattr(self, n).copy_(state[n])

    # -- lifecycle ---------------------------------------------------------------------------------------
    def attach(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Set the probe up for a run (what the monitor calls, once per fit, on every rank).

        Forgets the states an earlier run's :meth:`setup` declared, calls :meth:`setup`, and moves every state to
        ``device``; a probe overrides :meth:`setup`, not this.
        """
        for name in [n for n, spec in self._specs.items() if spec.from_setup]:
            del self._specs[name]
        self._attaching = True
        try:
            self.setup(model, adapter, device)
        finally:
            self._attaching = False
        self.to(device)

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Resolve model-dependent sizes and declare the states that depend on them (:meth:`add_state`).

        Called by :meth:`attach`, which then moves every state to ``device``. Build tensors the probe keeps besides
        its states (a probe batch) on ``device`` here.
        """

    def reduce_capture(self, name: str, tensor: Tensor) -> Tensor:
        """Shrink a capture inside its hook (e.g. ``[B, H, Q, K]`` patterns to ``[H]`` scores). Identity by default."""
        return tensor

    def update(self, captures: Mapping[str, Tensor], batch: Any) -> None:
        """Accumulate device state from captures (and, for streaming probes, the training batch)."""
        raise NotImplementedError

    def compute(self) -> dict[str, Tensor]:
        """Metric key -> tensor from the reduced state; 0-d are scalars, 2-d become heatmaps.

        Pure: it reads the states and changes nothing (a baseline that moves per evaluation moves in :meth:`reset`).
        """
        raise NotImplementedError

    def keys(self) -> list[str]:
        """The scalar keys this probe logs (what the TensorBoard panel layout, written once, charts).

        By default those of :meth:`compute` on the fresh states (``compute`` is pure: calling it moves nothing) plus
        ``late_stats``; only ``late_stats`` while the states wait for the probe's first batch (they are declared
        then). A probe whose keys ``compute`` cannot show yet overrides this.
        """
        try:
            with torch.no_grad():
                shown = [k for k, v in self.compute().items() if v.ndim == 0]
        except Exception:  # caveat: states declared at the first batch: their keys appear at the first publish
            shown = []
        return shown + [self.key(stat) for stat in self.late_stats]

    def host_inputs(self) -> dict[str, Tensor]:
        """Reduced tensors that :meth:`finish` needs on the host; they ride in the step's one transfer. None by default.

        For measures with no sync-free device algorithm: CUDA eigensolvers check their convergence flag with a host
        sync, so an eigendecomposition runs on the host copy instead.
        """
        return {}

    def finish(self, host: Mapping[str, np.ndarray], step: int) -> dict[str, float]:
        """Metric key -> float from the host copies of :meth:`host_inputs` (CPU only, no device work).

        A probe may instead hand slow host work to a worker thread here and return its results later from
        :meth:`late_results`, stamped with ``step``.
        """
        return {}

    def late_results(self, wait: bool = False) -> list[tuple[int, dict[str, float]]]:
        """Finished off-thread results as ``(step of the probe forward, metrics)``, oldest first; ``wait``: all."""
        return []

    def close(self) -> None:
        """Release workers; called when the fit ends, after the last :meth:`late_results`."""

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Streaming probes: read gradients once per scheduled optimizer step (after accumulation). No-op by default."""

    def evaluate(self) -> None:
        """Once per scheduled step, right after the optimizer step and before the reduction. No-op by default."""

    def default_rules(self) -> list[Rule]:
        """Alert rules used unless the user passed ``rules``."""
        return []

    def rules(self) -> list[Rule]:
        """The alert rules in force."""
        return list(self._rules) if self._rules is not None else self.default_rules()

    def key(self, stat: str, scope: str | None = None, family: str | None = None) -> str:
        """Metric key ``<namespace>/<family or name>/<stat>[/<scope>]``."""
        return metric_key(family or self.name, stat, scope, self.namespace)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schedule={self.schedule!r})"


class SnapshotProbe(Probe):
    """A probe that runs one ``no_grad`` eval-mode forward on its own fixed batch at scheduled steps.

    Subclasses build ``self.probe_batch`` (token ids ``[B, T]``, on the model's device) in :meth:`setup`, or set
    ``needs_batch`` and build it in :meth:`take_batch` from the first training batch. The monitor runs
    :meth:`snapshot` with eager attention under the probe's hooks and passes the captures plus what
    :meth:`snapshot` returns (``"logits"`` ``[B, T, V]`` by default) to :meth:`update`; ``batch`` is ``None``.

    Memory: :meth:`reduce_capture` runs inside each hook, so a layer's capture is reduced as it is produced; an
    evaluation's extra peak is at most that of one eager ``no_grad`` forward of ``probe_batch`` plus 1 MiB for the
    built-in probes (``tests/probes/test_snapshot_memory.py``). A subclass that keeps whole captures breaks that.
    """

    source: ClassVar[Source] = OWN_FORWARD
    probe_batch: Tensor

    def take_batch(self, batch: Any) -> None:
        """Build the probe batch from a training batch; called once, before the first evaluation, if ``needs_batch``."""

    def snapshot(self, adapter: Adapter) -> dict[str, Tensor]:
        """The probe's forward(s) under its hooks; override for several forwards (e.g. greedy generation)."""
        return {LOGITS: adapter.logits(self.probe_batch)}


class StreamingProbe(Probe):
    """A probe fed by the training run itself: its forward (the default source), its gradients or its weights.

    With ``source="training_forward"`` its captures come from hooks attached for the scheduled step's micro-batches,
    and ``batch`` is the training batch; with ``"gradients"`` or ``"weights"`` it is never updated from a forward.
    """

    source: ClassVar[Source] = TRAINING_FORWARD
