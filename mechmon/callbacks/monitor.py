"""MechMonitor: the Lightning callback that runs mechmon probes on a schedule and raises alerts.

On a scheduled optimizer step every rank: runs the due snapshot probes (one eval-mode ``no_grad`` forward each,
eager attention, hooks only inside ``capture()``), feeds the streaming probes the captures of that step's
micro-batches, reduces all states (and agrees on failed probes) with one packed collective, makes **one** device-to-host
transfer, runs the alert rules on identical floats; rank 0 writes. Other steps evaluate a Python predicate and
nothing else: no hook, no sync, no collective.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from mechmon.adapters import Adapter, AdapterSpec, resolve_adapter
from mechmon.alerts import Alert, NonFinite, Rule
from mechmon.capture import capture, resolve_names
from mechmon.checks import flag
from mechmon.console import ConsoleView
from mechmon.distributed import rank, reduce_states, world_size
from mechmon.naming import metric_key
from mechmon.params import reshard
from mechmon.probe import Probe
from mechmon.schedule import Schedule, _Every, as_schedule, every
from mechmon.writers import NullWriter, TensorBoardWriter

__all__ = ["MechMonitor"]

_FLAGS = "monitor:failure_flags"

_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_MAX_ALERTS_KEPT = 1000


class MechMonitor(Callback):
    r"""Live mechanistic monitoring of a training run.

    Args:
        probes: probe instances; default ``[InductionProbe(), LogitsProbe()]``.
        schedule: default schedule for all probes: an int ``n`` (``every(n)``, plus step 1) or a
            :mod:`mechmon.schedule` predicate on ``trainer.global_step``. Probes may override it.
        image_schedule: when to write ``[L, H]`` heatmaps; default every 5th evaluation of an ``every(n)`` schedule.
        adapter: an :class:`~mechmon.adapters.Adapter`, a factory ``fn(pl_module) -> Adapter``, or ``None`` to
            auto-detect HF GPT-2 / GPT-NeoX / Llama-style models and TransformerLens inside the LightningModule.
        rules: extra alert rules on any ``mechmon/...`` key (the probes' own rules are always on).
        on_alert: callables receiving each :class:`~mechmon.alerts.Alert` on rank 0.
        namespace: first key segment (default ``"mechmon"``).
        log_dir: folder for mechmon's own TensorBoard writer when the trainer has no TensorBoardLogger
            (default ``<default_root_dir>/mechmon``).
        console: show a live rich table of the latest values (alerts are always printed).

    Raises:
        TypeError: on arguments of the wrong type.
        ValueError: on an invalid namespace, an empty probe list or duplicate probe names.
        RuntimeError: in ``setup``, when no adapter fits the model or a probe needs a capture the model lacks.

    Example:
        >>> from mechmon import MechMonitor, InductionProbe
        >>> monitor = MechMonitor(probes=[InductionProbe(period=20)], schedule=100)
        >>> monitor.state_key
        "MechMonitor{'namespace': 'mechmon'}"

    Logged metrics:
        Every probe's keys (see each probe's table) at each scheduled step, ``<ns>/alerts/<rule>`` = 1 at the step a
        rule fires, a text entry ``<ns>/alerts`` with the reason, and ``[L, H]`` heatmap images at
        ``image_schedule``. All are mirrored into ``trainer.callback_metrics``.
    """

    def __init__(
        self,
        probes: Sequence[Probe] | None = None,
        schedule: Schedule | int = 50,
        image_schedule: Schedule | int | None = None,
        adapter: AdapterSpec = None,
        rules: Sequence[Rule] = (),
        on_alert: Sequence[Callable[[Alert], Any]] = (),
        namespace: str = "mechmon",
        log_dir: str | Path | None = None,
        console: bool = False,
    ) -> None:
        super().__init__()
        self.probes = _validate_probes(probes)
        self.schedule = as_schedule(schedule, "schedule")
        self.image_schedule = _image_schedule(self.schedule, image_schedule)
        if adapter is not None and not (isinstance(adapter, Adapter) or callable(adapter)):
            raise TypeError(f"adapter must be an Adapter, a callable pl_module -> Adapter, or None; got {adapter!r}")
        if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
            raise ValueError(f"namespace must be snake_case like 'mechmon', got {namespace!r}")
        _check_items("rules", rules, lambda r: isinstance(r, Rule), "mechmon.alerts.Rule instances")
        _check_items("on_alert", on_alert, callable, "callables taking an Alert")
        if log_dir is not None and not isinstance(log_dir, (str, Path)):
            raise TypeError(f"log_dir must be a path or None, got {type(log_dir).__name__}")
        self.adapter_spec, self.extra_rules, self.on_alert = adapter, list(rules), list(on_alert)
        self.namespace, self.log_dir, self.console = namespace, log_dir, flag("MechMonitor", "console", console)
        self.alerts: list[Alert] = []
        self._last_step = -1
        self._step_at_start = -1
        self._disabled: set[str] = set()  # agreed by every rank
        self._failed: dict[str, str] = {}  # failed on this rank, not yet agreed (DDP)
        self._device = torch.device("cpu")
        self._rules: list[Rule] = []
        self._nonfinite: dict[str, NonFinite] = {}
        self._pending_state: dict[str, Any] | None = None
        self._writer: NullWriter = NullWriter()
        self._view: ConsoleView | None = None
        self._stream: contextlib.ExitStack | None = None
        self._stream_caps: dict[str, Tensor] | None = None
        self._stream_step = -1
        self._names: dict[str, list[str]] = {}
        self._adapter: Adapter | None = None
        self._waiting: list[Probe] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(namespace=self.namespace)

    # -- setup -------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._setup(trainer, pl_module)

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._adapter = resolve_adapter(pl_module, self.adapter_spec)
        self._device, self._failed = pl_module.device, {}
        for probe in self.probes:
            probe.namespace = self.namespace
            self._names[probe.name] = resolve_names(self._adapter, probe.requires)
            probe.setup(self._adapter.model, self._adapter, pl_module.device)
        self._rules = [rule for probe in self.probes for rule in probe.rules()] + self.extra_rules
        self._waiting = [p for p in self.probes if getattr(p, "needs_batch", False)]
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
        if trainer.is_global_zero:
            self._writer = self._make_writer(trainer)
            self._view = ConsoleView(live=self.console)

    def _make_writer(self, trainer: pl.Trainer) -> NullWriter:
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tb is not None:
            return TensorBoardWriter(tb.experiment, trainer.loggers, own_scalars=False)
        log_dir = Path(self.log_dir or Path(trainer.default_root_dir) / "mechmon")
        try:
            from torch.utils.tensorboard import SummaryWriter

            return TensorBoardWriter(SummaryWriter(str(log_dir)), trainer.loggers, own_scalars=True, owned=True)
        except Exception as err:  # caveat: an unwritable folder must not stop training
            rank_zero_warn(f"mechmon cannot write TensorBoard files to {log_dir}: {err}; metrics go to loggers only")
            return TensorBoardWriter(None, trainer.loggers, own_scalars=False) if trainer.loggers else NullWriter()

    # -- hooks -------------------------------------------------------------------------------------------
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_start = trainer.global_step
        if self._waiting:
            self._take_batch(batch)
        self._attach_streaming(trainer.global_step + 1)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._after_batch(trainer, batch)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close(trainer)

    # -- scheduling --------------------------------------------------------------------------------------
    def _due(self, step: int) -> list[Probe]:
        return [p for p in self.probes if p.name not in self._disabled and (p.schedule or self.schedule)(step)]

    def _streaming_due(self, step: int) -> list[Probe]:
        return [p for p in self._due(step) if p.kind == "streaming"]

    def _take_batch(self, batch: Any) -> None:
        """Give the snapshot probes that asked for one their probe batch, from the first training batch."""
        for probe in self._waiting:
            self._guarded(probe, probe.take_batch, batch)
        self._waiting = []

    def _attach_streaming(self, upcoming: int) -> None:
        """Hook the training forward for the micro-batches of a scheduled step only."""
        due = self._streaming_due(upcoming) if self._stream is None and self._adapter is not None else []
        if not due:
            return
        names = sorted({n for p in due for n in self._names[p.name]})
        self._stream = contextlib.ExitStack()
        self._stream_caps = self._stream.enter_context(capture(self._adapter, names))
        self._stream_step = upcoming

    def _detach_streaming(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream, self._stream_caps, self._stream_step = None, None, -1

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._stream is not None:
            for probe in self._live(self._streaming_due(self._stream_step)):
                self._guarded(probe, probe.before_optimizer_step, optimizer)

    def _after_batch(self, trainer: pl.Trainer, batch: Any) -> None:
        step = trainer.global_step
        if self._stream_caps is not None:
            self._feed_streaming(batch, self._streaming_due(self._stream_step))
        # run only right after an optimizer step (dedups gradient accumulation), once per step
        if step == self._step_at_start or step == self._last_step or not self._due(step):
            return
        self._last_step = step
        self._run(trainer, step)

    def _feed_streaming(self, batch: Any, due: list[Probe]) -> None:
        caps = self._stream_caps or {}
        for probe in self._live(due):
            if all(n in caps for n in self._names[probe.name]):
                self._guarded(probe, probe.update, caps, batch)
        caps.clear()  # captures are dropped right after update

    # -- one scheduled step ------------------------------------------------------------------------------
    def _run(self, trainer: pl.Trainer, step: int) -> None:
        due = self._due(step)
        self._detach_streaming()
        for probe in self._live(due):
            if probe.kind == "snapshot":
                self._guarded(probe, _snapshot_forward, probe, self._adapter, self._names[probe.name])
            else:
                self._guarded(probe, probe.evaluate)
        flags_WP, _ = reduce_states(due, self._failure_flags())  # collective: every rank, same probes, by step only
        tensors, owner, finishing = self._collect(self._live(due), step)
        host = _to_host({**tensors, _FLAGS: flags_WP})
        gone = self._agree(host.pop(_FLAGS))  # probes that failed on any rank log nothing this step
        host = {k: v for k, v in host.items() if owner[k] not in gone}
        for name, probe in finishing.items():
            inputs = {k.split(":", 1)[1]: host.pop(k) for k in list(host) if k.startswith(f"{name}:")}
            if name not in gone:
                host.update(self._guarded(probe, probe.finish, inputs, step) or {})
        scalars = {k: v for k, v in host.items() if isinstance(v, float)}
        alerts = self._check_rules(step, scalars)
        self._publish(trainer, step, scalars, {k: v for k, v in host.items() if not isinstance(v, float)}, alerts)
        for probe in due:
            probe.reset()
        self._publish_late(trainer)

    def _live(self, probes: list[Probe]) -> list[Probe]:
        """The probes that have not failed on this rank (under DDP a local failure is agreed at the next reduction)."""
        return [p for p in probes if p.name not in self._failed and p.name not in self._disabled]

    def _collect(self, due: list[Probe], step: int) -> tuple[dict[str, Tensor], dict[str, str], dict[str, Probe]]:
        """The step's tensors for the transfer, the probe owning each key, and the probes with host work."""
        tensors: dict[str, Tensor] = {}
        owner: dict[str, str] = {}
        finishing: dict[str, Probe] = {}
        with_images = self.image_schedule(step)
        for probe in due:
            for key, value in (self._guarded(probe, probe.compute) or {}).items():
                if value.ndim == 0 or (with_images and value.ndim == 2):
                    tensors[key], owner[key] = value, probe.name
            for name, tensor in (self._guarded(probe, probe.host_inputs) or {}).items():
                key = f"{probe.name}:{name}"
                tensors[key], owner[key], finishing[probe.name] = tensor, probe.name, probe
        return tensors, owner, finishing

    def _failure_flags(self) -> Tensor:
        """This rank's failure flag per probe, ``[P]`` on the states' device (fill kernels: no host copy)."""
        flags = torch.zeros(len(self.probes), device=self._device)
        for i, probe in enumerate(self.probes):
            if probe.name in self._failed:
                flags[i] = 1.0
        return flags

    def _agree(self, flags_WP: np.ndarray) -> set[str]:
        """Disable, on every rank alike, each probe some rank flagged; returns the names disabled now."""
        gone = set()
        for i, probe in enumerate(self.probes):
            ranks = np.flatnonzero(np.asarray(flags_WP)[:, i]).tolist()
            if ranks and probe.name not in self._disabled:
                gone.add(probe.name)
                self._disable(probe, f"probe {probe.name!r} raised on rank(s) {ranks} (see the warning there)")
        return gone

    def _disable(self, probe: Probe, reason: str) -> str:
        """Disable a probe for the rest of the fit with a ``probe_failed`` alert; returns the alert's reason."""
        self._disabled.add(probe.name)
        self._failed.pop(probe.name, None)
        key = metric_key("alerts", "probe_failed", namespace=self.namespace)
        reason = f"{reason}; it is disabled for the rest of the fit"
        self._deliver([Alert("probe_failed", key, self._last_step, math.nan, "warning", reason)])
        return reason

    def _publish_late(self, trainer: pl.Trainer, wait: bool = False) -> None:
        """Publish off-thread results at the step of the probe forward they came from, after running the rules."""
        for probe in self.probes:
            for step, scalars in self._guarded(probe, probe.late_results, wait) or []:
                self._publish(trainer, step, scalars, {}, self._check_rules(step, scalars))

    def _guarded(self, probe: Probe, fn: Callable, *args: Any) -> Any:
        """Run ``fn``; a probe that raises is disabled with an alert and training goes on.

        In one process the probe is disabled at once. Under DDP the failing rank warns and stops running the probe,
        and the flag it sends with the next reduction disables the probe on every rank at the same step.
        """
        try:
            with torch.no_grad():  # a probe never builds graph: a state tied to autograd would grow every step
                return fn(*args)
        except Exception as err:  # caveat: a failing probe must never stop the run it watches
            text = f"probe {probe.name!r} raised {type(err).__name__}: {err}"
            if world_size() == 1:
                rank_zero_warn(self._disable(probe, text))
            elif probe.name not in self._failed:
                where = f"on rank {rank()}; it is disabled on every rank at the next scheduled step"
                warnings.warn(f"{text} {where}", stacklevel=2)
                self._failed[probe.name] = text
            return None

    def _check_rules(self, step: int, scalars: Mapping[str, float]) -> list[Alert]:
        fired = []
        for key, value in scalars.items():
            alert = self._nonfinite.setdefault(key, NonFinite(key)).update(step, value)
            fired += [alert] if alert else []
        for rule in self._rules:
            alert = rule.observe(step, scalars)
            fired += [alert] if alert else []
        return fired

    def _publish(
        self, trainer: pl.Trainer, step: int, scalars: dict[str, float], images: dict[str, Any], alerts: list[Alert]
    ) -> None:
        markers = {metric_key("alerts", a.rule, namespace=self.namespace): 1.0 for a in alerts}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in {**scalars, **markers}.items()})
        names = dict.fromkeys(n for r in self._rules for n in r.names)
        alert_keys = [metric_key("alerts", n, namespace=self.namespace) for n in names]
        late_keys = [p.key(stat) for p in self.probes for stat in p.late_stats]
        self._writer.layout(list(scalars) + alert_keys + late_keys)
        self._writer.scalars({**scalars, **markers}, step)
        for key, matrix in images.items():
            self._writer.image(key, matrix, step)
        if self._view is not None:
            self._view.update(step, scalars)
        self._deliver(alerts)

    def _deliver(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            self.alerts = (self.alerts + [alert])[-_MAX_ALERTS_KEPT:]
            text = f"**{alert.severity}** `{alert.rule}`: {alert.reason}"
            self._writer.text(f"{self.namespace}/alerts", text, alert.step)
            if self._view is not None:  # rank 0 only
                self._view.alert(alert)
                for fn in self.on_alert:
                    fn(alert)

    def _close(self, trainer: pl.Trainer) -> None:
        self._detach_streaming()
        self._publish_late(trainer, wait=True)
        for probe in self.probes:
            self._guarded(probe, probe.close)
        if self._view is not None:
            self._view.stop()
        self._writer.close()
        self._writer = NullWriter()

    # -- checkpointing -----------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self._last_step,
            "rules": {f"{r.name}|{r.key}": r.state_dict() for r in self._rules},
            "nonfinite": {k: r.state_dict() for k, r in self._nonfinite.items()},
            "probes": {p.name: p.state_dict() for p in self.probes},
            "disabled": sorted(self._disabled),
            "alerts": [asdict(a) for a in self.alerts[-100:]],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict
        if self._rules:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict[str, Any]) -> None:
        self._last_step = int(state.get("last_step", self._last_step))
        saved = state.get("rules", {})
        for rule in self._rules:
            rule.load_state_dict(saved.get(f"{rule.name}|{rule.key}", {}))
        for key, rule_state in state.get("nonfinite", {}).items():
            self._nonfinite.setdefault(key, NonFinite(key)).load_state_dict(rule_state)
        for probe in self.probes:
            probe.load_state_dict(state.get("probes", {}).get(probe.name, {}))
        self._disabled = set(state.get("disabled", ()))
        self.alerts = [Alert(**a) for a in state.get("alerts", ())]
        self._pending_state = None


# -- private helpers -------------------------------------------------------------------------------------
def _validate_probes(probes: Sequence[Probe] | None) -> list[Probe]:
    if probes is None:
        from mechmon.probes import InductionProbe, LogitsProbe

        return [InductionProbe(), LogitsProbe()]
    _check_items("probes", probes, lambda p: isinstance(p, Probe), "Probe instances such as InductionProbe()")
    if not probes:
        raise ValueError("probes must not be empty; omit it for the defaults [InductionProbe(), LogitsProbe()]")
    names = [p.name for p in probes]
    if len(set(names)) != len(names):
        raise ValueError(f"probe names must be unique (they are key segments), got {names}")
    return list(probes)


def _check_items(what: str, items: Any, ok: Callable[[Any], bool], need: str) -> None:
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable) or not all(ok(i) for i in items):
        raise TypeError(f"{what} must be a sequence of {need}, got {items!r}")


def _image_schedule(schedule: Schedule, image_schedule: Schedule | int | None) -> Schedule:
    if image_schedule is not None:
        return as_schedule(image_schedule, "image_schedule")
    if isinstance(schedule, _Every):
        return every(schedule.n * 5, offset=schedule.offset, first=schedule.first)
    return schedule


def _to_host(tensors: Mapping[str, Tensor]) -> dict[str, float | np.ndarray]:
    """One stacked device-to-host transfer; 0-d tensors become floats, others numpy arrays."""
    if not tensors:
        return {}
    first = next(iter(tensors.values()))
    dtype = torch.float32 if first.device.type == "mps" else torch.float64
    flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors.values()])
    values = np.asarray(flat.cpu())  # sync: the one device-to-host transfer of a scheduled step
    out: dict[str, float | np.ndarray] = {}
    offset = 0
    for key, t in tensors.items():
        n = t.numel()
        chunk = values[offset : offset + n]
        out[key] = float(chunk[0]) if t.ndim == 0 else chunk.reshape(tuple(t.shape))
        offset += n
    return out


def _snapshot_forward(probe: Probe, adapter: Adapter, names: list[str]) -> None:
    """One eval-mode ``no_grad`` forward of the probe batch; restores the previous mode and sharding.

    Attention runs eager (probabilities materialised) only when the probe reads attention patterns. Under FSDP2 a
    ``no_grad`` forward leaves the root's parameters gathered (no backward follows to reshard them); they are
    resharded here so that memory and the weight probes see the model as training left it.
    """
    model = adapter.model
    was_training = model.training
    model.eval()
    eager = (
        adapter.eager_attention() if any(n.endswith("attn.hook_pattern") for n in names) else contextlib.nullcontext()
    )
    try:
        with torch.no_grad(), eager:
            with capture(adapter, names, probe.reduce_capture) as caps:
                caps.update(probe.snapshot(adapter))
                probe.update(caps, None)
    finally:
        model.train(was_training)
        reshard(model)
