"""``Monitor``: the framework-free engine that every integration (Lightning, Fabric, HF Trainer, plain loop) drives.

It touches the model only through torch's own hooks: module forward hooks and pre-hooks (captures, and the training
inputs on the steps that need them) and the optimizers' step hooks (gradients). Its step, its batches and its log
sinks come from whoever drives it. On a scheduled optimizer step every rank: runs the due snapshot probes (one
eval-mode ``no_grad`` forward each), has fed the streaming probes the captures of that step's micro-batches,
reduces all states and failure counts with one fixed-size ``all_reduce`` per op, makes **one** device-to-host
transfer, and runs the alert rules on identical floats; rank 0 writes. Other steps evaluate a Python predicate and
nothing else.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters import Adapter, AdapterSpec, resolve_adapter
from mechmon.adapters.stage import attach_stage, pipeline_stages
from mechmon.alerts import Alert, Rule
from mechmon.capture import resolve_names
from mechmon.checks import fail
from mechmon.console import ConsoleView
from mechmon.distributed import rank, rank_zero_warn
from mechmon.engine.budget import resolve_budget
from mechmon.engine.config import MonitorConfig
from mechmon.engine.faults import Faults
from mechmon.engine.first_batch import FirstBatch
from mechmon.engine.gate import Gate
from mechmon.engine.pipeline import StepPipeline
from mechmon.engine.publish import Listener, Publisher, RuleKeys, declared_keys
from mechmon.engine.record import StepRecord
from mechmon.engine.stream import (
    STREAMING_COMPILED,
    Stream,
    compile_wrapper_of,
    compiled,
    refuse_compiled,
    refuse_staged,
)
from mechmon.probe import Probe
from mechmon.schedule import Schedule
from mechmon.sharding import refuse_different_models
from mechmon.writers import open_writer

__all__ = ["Monitor"]

DEFAULT_SCHEDULE = 50


class Monitor:
    r"""Live mechanistic monitoring of any PyTorch training loop.

    Args:
        model: the module to watch (a bare model, a wrapper, a LightningModule); when given, the monitor attaches at
            once (plain loops). Integrations pass ``None`` and call :meth:`attach` when the run starts.
        optimizer: the optimizer whose step the monitor hooks for gradients and to know when a step happened;
            ``None`` hooks every optimizer that holds the model's parameters (torch's global step hooks).
        probes: probe instances; default ``[InductionProbe(), LogitsProbe()]``.
        schedule: an int ``n`` (``every(n)``, plus step 1) or a :mod:`mechmon.schedule` predicate on the optimizer
            step; ``None`` (default): ``every(50)`` under the default budget. Probes may override it.
        image_schedule: when to write ``[L, H]`` heatmaps; default every 5th evaluation of an ``every(n)`` schedule.
        adapter: an :class:`~mechmon.adapters.Adapter`, a factory ``fn(root) -> Adapter``, or ``None`` to discover
            the model (any HF decoder, TransformerLens, a decoder module with a block list).
        submodule: dotted path of the model to monitor when ``model`` holds several (e.g. ``"student"``).
        rules: extra alert rules on any ``mechmon/...`` key (the probes' own rules are always on).
        on_alert: callables receiving each :class:`~mechmon.alerts.Alert` on rank 0.
        namespace: first key segment (default ``"mechmon"``).
        log_dir: folder of mechmon's own TensorBoard writer (plain loops: default ``runs/mechmon``).
        console: the live console panel: ``None`` (default) in an interactive terminal that no progress bar owns,
            ``True`` / ``False`` always / never. Alert lines are always printed.
        pipeline: this rank's ``torch.distributed.pipelining.PipelineStage`` (one stage per rank) when ``model`` is
            that stage's module: the stages cooperate (probe forwards run through them, layers keep their global
            indices); probes that read the training forward are disabled (see README "Pipeline parallel").
        budget: the largest share of wall time the monitor may take, in (0, 1) (``0.01``: 1 %); due evaluations are
            thinned to keep under it (:mod:`mechmon.engine.budget`), and ``<ns>/monitor/overhead_frac`` and
            ``<ns>/monitor/stride`` are logged. ``"auto"`` (default): 1 % when ``schedule`` is left at its default,
            off when a schedule is given; ``None``: every scheduled step is evaluated.

    Raises:
        TypeError, ValueError: on invalid arguments (the message names the argument).
        RuntimeError: in :meth:`attach`, when no model is found or a probe needs a capture the model lacks.

    Example:
        >>> import torch
        >>> from mechmon import Monitor, LogitsProbe
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, bos_token_id=0, eos_token_id=0)
        >>> model = GPT2LMHeadModel(config)
        >>> optimizer = torch.optim.AdamW(model.parameters())
        >>> monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], schedule=2, log_dir=None)
        >>> batch = torch.randint(1, 64, (2, 16))
        >>> for step in (1, 2):
        ...     with monitor.step(step, batch):
        ...         model(input_ids=batch, labels=batch).loss.backward()
        ...         optimizer.step(); optimizer.zero_grad()
        >>> monitor.close()
        >>> sorted(monitor.latest)[0]
        'mechmon/logits/absorb_gap_nats'

    Logged metrics:
        Every probe's keys (see each probe's table) at each scheduled step, ``<ns>/alerts/<rule>`` = 1 at the step a
        rule fires, a text entry ``<ns>/alerts`` with the reason, and ``[L, H]`` heatmap images at
        ``image_schedule``.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        probes: Sequence[Probe] | None = None,
        schedule: Schedule | int | None = None,
        image_schedule: Schedule | int | None = None,
        adapter: AdapterSpec = None,
        submodule: str | None = None,
        rules: Sequence[Rule] = (),
        on_alert: Sequence[Callable[[Alert], Any]] = (),
        namespace: str = "mechmon",
        log_dir: str | Path | None = "runs/mechmon",
        console: bool | None = None,
        budget: float | str | None = "auto",
        pipeline: Any = None,
    ) -> None:
        self.config = MonitorConfig.build(
            "Monitor", probes=probes, schedule=DEFAULT_SCHEDULE if schedule is None else schedule,
            image_schedule=image_schedule, adapter=adapter, submodule=submodule, rules=rules, on_alert=on_alert,
            namespace=namespace, log_dir=log_dir, console=console,
        )  # fmt: skip
        if model is not None and not isinstance(model, nn.Module):
            fail("Monitor", "model", model, "an nn.Module (or None, to attach later)", TypeError)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            fail("Monitor", "optimizer", optimizer, "a torch.optim.Optimizer or None", TypeError)
        if optimizer is not None and model is None:
            fail("Monitor", "optimizer", optimizer, "given together with model=", ValueError)
        self.probes = self.config.probes
        self.budget = resolve_budget(budget, schedule is not None, "Monitor")
        self.publisher = Publisher(self.config.namespace, self.config.on_alert)
        self.latest: dict[str, float] = {}
        self.adapter: Adapter | None = None
        self.faults = Faults(self.probes, self.publisher.deliver, self.config.namespace, lambda: self._step)
        self.gate = Gate(self.config.schedule, self.probes, self.faults, self.budget)
        self._device = torch.device("cpu")
        self._names: dict[str, list[str]] = {}
        self.first = FirstBatch(self.faults)
        self._last_step = -1
        self._step = 0
        self._stream: Stream | None = None
        self._handles: list[Any] = []  # the optimizer step hooks: removed in close()
        self._stepped = False
        self._seen_step, self._first_step, self._told_no_step = False, None, False  # the never-stepped warning
        self._thread: int | None = None  # the thread that drives the steps (see _one_thread)
        self._compiled = False  # the training forward is compiled: no hook in it (shadow forwards only)
        self._entry: nn.Module | None = None  # where the model's inputs are read (None: nowhere eager, compiled)
        self._pending: dict[str, Any] | None = None
        self._rule_keys = RuleKeys((), (), self.config.namespace)  # the real one is built in attach
        self.pipeline: StepPipeline | None = None  # built in attach
        self.stages = None if pipeline is None else pipeline_stages(pipeline)
        if model is not None:
            self.attach(model, optimizer=optimizer, log_dir=self.config.log_dir)

    @property
    def disabled(self) -> set[str]:
        """Names of the probes disabled for the rest of the run (agreed by every rank)."""
        return self.faults.disabled

    @property
    def alerts(self) -> list[Alert]:
        """Every alert raised so far (the last 1,000), oldest first."""
        return self.publisher.alerts

    # -- attach --------------------------------------------------------------------------------------------
    def attach(
        self,
        root: nn.Module,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        hook_optimizers: bool = True,
        experiment: Any | None = None,
        loggers: Sequence[Any] = (),
        log_dir: str | Path | None = None,
        listeners: Sequence[Listener] = (),
        writes: bool | None = None,
        compiled_forward: bool = False,
        progress_bar: bool = False,
        purge_step: int | None = None,
    ) -> None:
        """Resolve the model, set the probes up and open the writer. Called once per run, on every rank.

        Args:
            root: the module to search for the model.
            optimizer: hook this optimizer's steps; ``None`` with ``hook_optimizers`` hooks any optimizer holding
                the model's parameters.
            hook_optimizers: hook optimizer steps at all (False when the driver calls :meth:`before_optimizer_step`
                and :meth:`after_optimizer_step` itself, as Lightning's closures require).
            experiment: a ``SummaryWriter`` a logger owns (heatmaps and text go there; scalars via ``loggers``).
            loggers: objects with ``log_metrics(metrics, step)`` receiving every scalar.
            log_dir: folder of mechmon's own event files when there is no ``experiment``; ``None``: no files.
            listeners: ``fn(scalars, step)`` called with every published dict.
            writes: whether this process writes (default: rank 0 of the default process group).
            compiled_forward: the driver compiles the training forward itself (HF ``torch_compile=True``); a
                compiled module inside ``root`` is found without it.
            progress_bar: the driver draws a progress bar on the terminal (the live panel then stays off unless
                ``console=True``; alert lines are written above the bar).
            purge_step: a resumed run's first step: events that an earlier, killed run of the same ``log_dir``
                wrote at this step or later are hidden (TensorBoard's ``purge_step``), so no step shows twice.

        Raises:
            RuntimeError: if no model is found, a probe needs a capture the model lacks, or the ranks hold different
                models (pipeline-parallel stages).
        """
        if self.stages is None:
            refuse_different_models(root)  # before anything a rank could fail alone: every rank answers alike
            self.adapter = resolve_adapter(root, self.config.adapter, self.config.submodule)
        else:  # the stages' exchange comes first: a stage that fails to find its model tells the others
            self.adapter = attach_stage(root, self.config.adapter, self.config.submodule, self.stages)
        self._thread = None
        params = list(self.adapter.model.parameters())
        self._device, self.faults.failed = (params[0].device if params else torch.device("cpu")), {}
        for probe in self.probes:
            probe.namespace = self.config.namespace
            self._names[probe.name] = resolve_names(self.adapter, probe.requires)
            probe.attach(self.adapter.model, self.adapter, self._device)
        rules = [rule for probe in self.probes for rule in probe.rules()] + self.config.rules
        self.first.start(self.probes)
        writes = rank() == 0 if writes is None else writes
        writer = open_writer(experiment, loggers, log_dir, purge_step) if writes else None
        headlines = [p.key(p.headline) for p in self.probes if p.headline]
        ns = self.config.namespace
        view = ConsoleView(self.config.console, None, headlines, ns, progress_bar) if writes else None
        self.publisher.open(rules, declared_keys(self.probes), writer, view, [self._remember, *listeners], headlines)
        self.publisher.hints = {p.name: p.unmeasured_hint for p in self.probes if p.unmeasured_hint}
        self.publisher.optional = {f"{p.name}/{stat}" for p in self.probes for stat in p.optional_stats}
        weakref.finalize(self, self.publisher.close)  # a run that ends by an exception: events flushed at exit
        self._rule_keys = RuleKeys(self.config.rules, self.probes, self.config.namespace)
        self._rule_keys.check(())
        self.pipeline = StepPipeline(
            self.adapter, self._names, self.probes, self.faults, self.publisher, self.budget, self.config.namespace,
            self._device, self._rule_keys.check,
        )  # fmt: skip
        for name, reason in self.gate.attach(root, self.probes, self._device).items():  # the same on every rank
            warnings.warn(self.faults.disable(self.gate.probe(name), reason), stacklevel=2)
        for probe, reason in refuse_staged(self.probes, self.adapter):  # decided from the probe's class alone
            warnings.warn(self.faults.disable(probe, reason), stacklevel=2)
        self._entry = self.adapter.model
        if compiled_forward or compiled(root):
            self._entry = compile_wrapper_of(root, self.adapter.model)
            self._compiled = True
            for probe in refuse_compiled(self.probes, self._names, self._entry is not None):
                warnings.warn(self.faults.disable(probe, STREAMING_COMPILED.format(name=probe.name)), stacklevel=2)
        if hook_optimizers:
            self._hook_optimizers(optimizer)
        if self.budget is not None:
            self.budget.restart_clock()
        if self._pending is not None:
            self.load_state_dict(self._pending)

    def _remember(self, scalars: dict[str, float], step: int) -> None:
        self.latest.update(scalars)

    def _hook_optimizers(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Step pre-hook: gradients of a scheduled step; post-hook: a step happened (plain loops, Fabric)."""
        ids = {id(p) for p in self.adapter.model.parameters()}
        known: dict[int, bool] = {}

        def ours(opt: torch.optim.Optimizer) -> bool:
            if id(opt) not in known:
                known[id(opt)] = any(id(p) in ids for g in opt.param_groups for p in g["params"])
            return known[id(opt)]

        def pre(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if ours(opt):
                self.before_optimizer_step(opt)

        def post(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self._stepped = self._stepped or ours(opt)

        while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):  # accelerate's wrapper
            optimizer = optimizer.optimizer  # caveat: it subclasses Optimizer without its hook registries
        if optimizer is not None:
            self._handles += [optimizer.register_step_pre_hook(pre), optimizer.register_step_post_hook(post)]
        else:
            from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

            self._handles += [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]

    # -- driving -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, step: int, batch: Any = None) -> Iterator[Monitor]:
        """Wrap one micro-batch of optimizer step ``step`` (forward, backward and, on the last, the optimizer step).

        Hooks are attached only when ``step`` is scheduled. ``batch`` is what the streaming probes read their
        targets from (a tensor ``[B, T]``, a dict with ``input_ids``/``labels``, ``(x, y)``); ``None`` reads the
        model's own inputs. The evaluation runs when the block exits after an optimizer step happened in it.
        """
        self._stepped = False
        self._warn_if_never_stepped(step)
        self.begin_batch(step, batch)
        try:
            yield self
        except BaseException:
            self._detach_streaming()
            raise
        self.end_batch(batch)
        if self._stepped:
            self._seen_step = True
            self.after_optimizer_step(step)

    def _warn_if_never_stepped(self, step: int) -> None:
        """Once: the loop's steps advance, yet no optimizer step of the model's parameters was seen (nothing runs)."""
        if self._first_step is None:
            self._first_step = step
        if self._seen_step or self._told_no_step or step <= self._first_step:
            return
        self._told_no_step = True
        warnings.warn(
            f"mechmon: the loop reached step {step}, but no optimizer step of the watched model's parameters has "
            f"happened inside monitor.step() since step {self._first_step}, so nothing has been evaluated: the "
            "optimizer that updates the model holds other tensors (DeepSpeed's engine.step() steps its own fp32 "
            "copies) or is no torch.optim.Optimizer. Step the model's optimizer inside the block, or call "
            "monitor.after_optimizer_step(step) after your own step",
            stacklevel=4,
        )

    def begin_batch(self, step: int, batch: Any = None, steps: int = 1) -> None:
        """Before a micro-batch of optimizer step ``step``: take the first batch, attach hooks if ``step`` is due.

        ``batch=None`` reads the batch from the model's inputs (a forward pre-hook, on those steps only). ``steps``:
        how many optimizer steps the batch is expected to make (manual optimization with several optimizers counts
        each): hooks are attached when any of ``step .. step + steps - 1`` is due.
        """
        self._step = step
        if self.adapter is None:  # not attached yet
            return
        self._one_thread()
        self.first.offer(batch, self._entry)  # the probes waiting for training rows
        if self._stream is not None and self._stream.step != step:  # a step that never ran its optimizer step
            self._detach_streaming()
        if self._stream is None:
            due = [p for p in self.gate.plan(step, step + steps - 1, final=False) if p.kind == "streaming"]
            if due:
                self._stream = Stream.open(
                    self.adapter,
                    self._names,
                    step,
                    due,
                    batch is None,
                    self._update,
                    self._fail,
                    self._compiled,
                    self._entry,
                )
        if self._stream is not None:
            self._stream.next_batch(batch)

    def _one_thread(self) -> None:
        """A monitor is driven from one thread: its step state and hooks are not shared between training loops.

        Raises:
            RuntimeError: at the first step a second thread drives (one monitor per loop is the fix).
        """
        me = threading.get_ident()
        if self._thread is None:
            self._thread = me
        elif self._thread != me:
            raise RuntimeError(
                f"mechmon: this Monitor is driven from thread {self._thread} and now from thread {me}: one Monitor "
                "serves one training loop; give each thread its own Monitor (and its own model)"
            )

    def _update(self, probe: Probe, caps: dict[str, Tensor], batch: Any) -> None:
        if self.faults.live([probe]):
            self.faults.guarded(probe, probe.update, caps, batch)

    def _fail(self, probe: Probe, error: Exception) -> None:
        """A probe whose capture hook failed inside the training forward: disabled here, under the guard."""
        if self.faults.live([probe]):
            self.faults.guarded(probe, _reraise, error)

    def end_batch(self, batch: Any = None) -> None:
        """After a micro-batch: feed the streaming probes what its training forward did not.

        They are fed right after the model's forward, so no capture lives into the backward; ``batch`` is
        :meth:`begin_batch`'s, unused.
        """
        if self._stream is not None:
            self._stream.end_batch()

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Before the optimizer step (after backward and accumulation): the gradient probes of a scheduled step."""
        if self._stream is not None:
            if self._compiled:
                self._stream.shadow_step()
            for probe in self.faults.live(self._stream.due):
                self.faults.guarded(probe, probe.before_optimizer_step, optimizer)

    def after_optimizer_step(self, step: int, steps: int = 1) -> None:
        """After optimizer step ``step``: run the scheduled evaluation (once per step, whatever the micro-batches).

        ``steps``: how many optimizer steps the batch made (``step - steps + 1 .. step``); the evaluation runs, at
        ``step``, when any of them is due, so a schedule is never skipped by a batch that counts several steps.
        """
        if step == self._last_step:
            return
        first = max(step - steps + 1, self._last_step + 1)
        due = self.gate.with_batch(self.gate.plan(first, step, final=True), self._device, step)
        if not due:
            self._detach_streaming()
            return
        self._last_step = self._step = step
        images = any(_safe_call(self.config.image_schedule, s) for s in range(first, step + 1))
        self._detach_streaming()
        self.pipeline.run(StepRecord(step, due, images))

    def _detach_streaming(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = None

    def flush(self) -> None:
        """Write the events published so far to disk (before recording progress that says they are there)."""
        self.publisher.flush()

    def close(self) -> None:
        """End the run: remove every hook, drain off-thread results, stop workers, close the writer."""
        self._detach_streaming()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.first.close()
        if self.pipeline is not None:
            self.pipeline.publish_late(wait=True)
        for probe in self.probes:
            self.faults.guarded(probe, probe.close)
        self.publisher.close()

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The last evaluated step, rule states, probe states, disabled probes and recent alerts."""
        return {
            "last_step": self._last_step,
            **self.publisher.state_dict(),
            "probes": {p.name: p.state_dict() for p in self.probes},
            "disabled": sorted(self.faults.disabled),
            **({"budget": self.budget.state_dict()} if self.budget is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; before :meth:`attach` it is kept and applied there."""
        if self.adapter is None:
            self._pending = state
            return
        self._last_step = int(state.get("last_step", self._last_step))
        if self.budget is not None:
            self.budget.load_state_dict(state.get("budget", {}))
        self.publisher.load_state_dict(state)
        for probe in self.probes:
            probe.load_state_dict(state.get("probes", {}).get(probe.name, {}))
        self.first.restored()
        self.gate.restore(self.probes)
        again = sorted(set(state.get("disabled", ())) & {p.name for p in self.probes})
        if again:  # the user may have fixed what made them fail; if not, they fail again, with an alert
            rank_zero_warn(f"mechmon: probes {again} were disabled in the run this state comes from; they run again")
        self._pending = None

    @property
    def view(self) -> ConsoleView | None:
        """The console view on the writing rank (None elsewhere, and before :meth:`attach`)."""
        return self.publisher.view

    @property
    def last_step(self) -> int:
        """The last optimizer step evaluated (-1 before the first)."""
        return self._last_step


def _reraise(error: Exception) -> None:
    raise error


def _safe_call(schedule: Schedule, step: int) -> bool:
    try:
        return bool(schedule(step))
    except Exception as err:  # caveat: a user's image schedule must not stop the run
        warnings.warn(f"mechmon: image_schedule raised {type(err).__name__} at step {step}: {err}", stacklevel=3)
        return False
