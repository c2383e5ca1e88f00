"""The hooks of one scheduled step's streaming probes, and the batch read from a model's own inputs.

A :class:`Stream` lives from the first micro-batch of a scheduled step to its optimizer step: capture hooks for the
due streaming probes, a forward hook that feeds the probes right after each training forward (so no capture, the
logits above all, is kept alive through the backward), and, when the driver hands over no batch (Fabric, the HF
``Trainer``), a forward pre-hook that reads the model's inputs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters import Adapter
from mechmon.adapters.base import is_compile_wrapper
from mechmon.capture import capture
from mechmon.distributed import rank_zero_warn
from mechmon.engine.forward import uncompiled
from mechmon.probe import TRAINING_FORWARD, Probe
from mechmon.probes.fixed_batch import batch_tokens

__all__ = [
    "Stream",
    "compiled",
    "compile_wrapper_of",
    "refuse_compiled",
    "refuse_staged",
    "STREAMING_COMPILED",
    "first_rows",
    "model_inputs",
]

_HF_KEYS = {"labels", "input_ids", "attention_mask"}
Updater = Callable[[Probe, dict[str, Tensor], Any], None]
Failer = Callable[[Probe, Exception], None]


class Stream:
    """The hooks of one scheduled step's streaming probes, from its first micro-batch to its optimizer step.

    Args:
        step: the optimizer step the hooks serve.
        due: the streaming probes due at that step.
        tap: read the batch from the model's inputs (the driver hands over none); otherwise the driver hands each
            micro-batch's batch to :meth:`next_batch`. Either way the probes are fed after each training forward, or
            at :meth:`end_batch` when no training forward of the model ran (a driver calling a submodule).
        names: probe name -> its capture names.
        update: ``fn(probe, captures, batch)``, the engine's guarded probe update.
        fail: ``fn(probe, error)`` for a probe whose capture hook failed inside the training forward.
    """

    def __init__(
        self, step: int, due: list[Probe], tap: bool, names: dict[str, list[str]], update: Updater, fail: Failer
    ) -> None:
        self.step, self.due, self.tap, self.names, self._update, self._fail = step, due, tap, names, update, fail
        self.batch: Any = None  # the driver's batch of the current micro-batch (without ``tap``)
        self.inputs: Any = None  # what the latest training forward of the model was called with
        self.fed = False  # the current micro-batch's captures were fed after its forward
        self.stack = contextlib.ExitStack()
        self.caps: dict[str, Tensor] = {}
        self.errors: dict[str, Exception] = {}  # capture hooks that failed inside the training forward
        self.post: Any = None  # the feeding hook, also called when the training forward raises
        self.adapter: Adapter | None = None
        self.shadowed: set[str] = set()  # probes fed from a shadow forward at this step

    @classmethod
    def open(
        cls,
        adapter: Adapter,
        names: dict[str, list[str]],
        step: int,
        due: list[Probe],
        tap: bool,
        update: Updater,
        fail: Failer,
        compiled: bool = False,
        entry: nn.Module | None = None,
    ) -> Stream:
        """Attach the capture hooks of ``due`` and, with ``tap``, the input hooks.

        ``names`` maps probe names to capture names; ``update(probe, captures, batch)`` is called for each probe
        whose captures are all there. ``compiled`` (a compiled training forward): no hook inside it, the stream only
        keeps the batch for :meth:`shadow_step`: the driver's, or with ``tap`` the inputs a pre-hook on ``entry``
        reads (the ``torch.compile`` wrapper, whose own hooks run eagerly; ``None``: nowhere to read them).
        """
        stream = cls(step, due, tap, names, update, fail)
        stream.adapter = adapter
        if compiled:
            if tap and entry is not None:
                stream._read_inputs(entry)
            return stream
        wanted = sorted({n for p in due for n in names[p.name]})
        stream.caps = stream.stack.enter_context(capture(adapter, wanted, errors=stream.errors))
        if tap or wanted:  # the model's own inputs, read before each training forward (tap, or several per block)
            stream._read_inputs(adapter.model)
            # feed right after the forward: no capture outlives it into the backward
            stream.post = adapter.model.register_forward_hook(stream._after_forward, always_call=True)
        return stream

    def _read_inputs(self, module: nn.Module) -> None:
        """Keep what each training forward of ``module`` is called with (a forward pre-hook, until :meth:`close`)."""
        pre = module.register_forward_pre_hook(
            lambda m, a, k: setattr(self, "inputs", model_inputs(a, k)) if m.training else None, with_kwargs=True
        )
        self.stack.callback(pre.remove)

    def next_batch(self, batch: Any) -> None:
        """A new micro-batch, with the driver's batch (ignored with ``tap``: the model's inputs are read)."""
        if not self.tap:
            self.batch = batch
        self.fed = False

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        """After each forward of the model: feed the probes; if the training forward raised, unhook the step.

        A training forward that raises (out of memory, a bad batch) may end the run with no callback after it (the
        HF ``Trainer`` has no exception hook): every hook of the step goes at once.
        """
        if not module.training:
            return
        if output is None:  # torch calls always-call hooks with no output when the forward raised
            self.stack.close()
            self.caps.clear()
            self._unhook(module)
            return
        self.feed(self._batch_of_this_forward(), forward=True)
        self.fed = True

    def _batch_of_this_forward(self) -> Any:
        """The batch this forward is paired with: never another forward's targets.

        The driver's batch for the first forward of a micro-batch; the model's own inputs with ``tap``, or for further
        forwards in one block (a loop that accumulates inside one ``monitor.step``).
        """
        if self.tap:
            return self.inputs
        if self.fed:
            warnings.warn(
                "mechmon: several training forwards ran inside one monitor.step(step, batch) block: each is paired "
                "with the model's own inputs, not with the batch given (wrap each micro-batch in monitor.step, or "
                "pass batch=None, to silence this)",
                stacklevel=4,
            )
            return self.inputs
        return self.batch

    def end_batch(self) -> None:
        """After a micro-batch: feed what no training forward fed (then drop the captures)."""
        if not self.fed and not self.tap:
            self.feed(self.batch)
        self.caps.clear()

    def feed(self, batch: Any, forward: bool = False) -> None:
        """Update every probe whose captures are all there; the captures are dropped right after.

        ``forward``: fed right after a training forward of the model. A probe with ``shadow_rows`` whose captures that
        forward never made (a fused or chunked LM head computes the loss without full logits) is fed from a shadow
        forward instead: eager, ``no_grad``, eval mode, of the micro-batch's first ``shadow_rows`` rows, with the
        weights the training forward used; once per scheduled step.
        """
        shadow = []
        for probe in (p for p in self.due if p.source == TRAINING_FORWARD):  # gradients and weights: no forward
            failed = [self.errors[n] for n in self.names[probe.name] if n in self.errors]
            if failed:
                self._fail(probe, failed[0])
            elif all(n in self.caps for n in self.names[probe.name]):
                self._update(probe, self.caps, batch)
            elif forward and getattr(probe, "shadow_rows", 0) and probe.name not in self.shadowed:
                shadow.append(probe)
        self.caps.clear()
        for probe in shadow:
            self._shadow(probe, batch, self.caps)

    def shadow_step(self) -> None:
        """Feed the due shadow probes before the optimizer step of a compiled training forward (no hook inside it).

        Each gets ``shadow_rows`` rows of the last batch (the driver's, or the inputs read at the compile wrapper)
        through an eager forward, hooked only around it.
        """
        batch = self.inputs if self.tap else self.batch
        for probe in self.due:
            if getattr(probe, "shadow_rows", 0) and probe.name not in self.shadowed and batch is not None:
                with capture(self.adapter, self.names[probe.name]) as caps, uncompiled(self.adapter.model):
                    self._shadow(probe, batch, caps)

    def _shadow(self, probe: Probe, batch: Any, caps: dict[str, Tensor]) -> None:
        """Feed ``probe`` from an eager ``no_grad`` forward of the first ``probe.shadow_rows`` rows of ``batch``.

        ``caps`` is filled by capture hooks during that forward (eval mode: this stream's own hooks ignore it).
        """
        self.shadowed.add(probe.name)
        model, was_training = self.adapter.model, self.adapter.model.training
        try:
            ids, rows = first_rows(batch, probe.shadow_rows)
            model.eval()
            with torch.no_grad():
                self.adapter.forward(ids)
            if all(n in caps for n in self.names[probe.name]):
                self._update(probe, caps, rows)
        except Exception as err:  # caveat: charged to the probe, never to the training step
            self._fail(probe, err)
        finally:
            model.train(was_training)
            caps.clear()

    def _unhook(self, module: nn.Module) -> None:
        """Remove this hook from inside its own call on the exception path.

        caveat: torch is iterating ``module._forward_hooks`` at that moment, so the handle's ``remove`` (a ``del``)
        would break its loop; binding a copy without this hook leaves the dict being iterated as it is.
        """
        hook_id = self.post.id
        module._forward_hooks = OrderedDict((k, h) for k, h in module._forward_hooks.items() if k != hook_id)
        module._forward_hooks_always_called.pop(hook_id, None)
        self.post = None

    def close(self) -> None:
        """Remove every hook this stream attached."""
        self.stack.close()
        if self.post is not None:
            self.post.remove()


def first_rows(batch: Any, rows: int) -> tuple[Tensor, Any]:
    """Token ids ``[r, T]`` and the batch cut to its first ``rows`` rows (every tensor sharing the batch dimension).

    Raises:
        TypeError: if the batch holds no 2-d integer ids (a tensor, ``input_ids``, or the first of a tuple).
    """
    ids, _ = batch_tokens(batch, "a shadow forward")
    size = ids.shape[0]

    def cut(value: Any) -> Any:
        return value[:rows] if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == size else value

    if isinstance(batch, dict):
        return ids[:rows], {k: cut(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return ids[:rows], type(batch)(cut(v) for v in batch)
    return ids[:rows], cut(batch)


def model_inputs(args: tuple, kwargs: dict) -> Any:
    """What a training forward was called with, as a batch the probes read (see :func:`default_targets`).

    Keyword arguments alone (HF ``model(**inputs)``) stay a dict; one positional argument is itself; several are a
    tuple (nanoGPT ``model(x, y)``); ids with HF keywords become ``{"input_ids": ids, **kwargs}``; other keywords
    follow the positional arguments (``model(x, targets=y)`` -> ``(x, y)``).
    """
    if not args:
        return dict(kwargs)
    if not kwargs:
        return args[0] if len(args) == 1 else tuple(args)
    if _HF_KEYS & set(kwargs):
        return {"input_ids": args[0], **kwargs}
    return (*args, *kwargs.values())


def compiled(root: nn.Module) -> bool:
    """Whether ``root`` trains through ``torch.compile`` (a wrapper inside it, ``compile()``, Lightning's fit of one).

    Found: an ``OptimizedModule`` among its modules, ``module.compile()``, ``trainer.fit(torch.compile(module))``.

    Dynamo does not guard on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``): hooks added after a
    compilation never fire in its code, and hooks present at one stay baked in after their removal. So the engine
    adds no forward hook to the training forward of a compiled model.
    """
    return any(
        is_compile_wrapper(m)
        or getattr(m, "_compiled_call_impl", None) is not None
        or getattr(m, "_compiler_ctx", None) is not None
        for m in root.modules()
    )


def compile_wrapper_of(root: nn.Module, model: nn.Module) -> nn.Module | None:
    """The outermost ``torch.compile`` wrapper in ``root`` around ``model``, or ``None``.

    Its own hooks run eagerly, outside dynamo, and see the model's inputs (under Fabric it sits in ``_FabricModule``).
    """
    wrappers = (m for m in root.modules() if is_compile_wrapper(m))
    return next((w for w in wrappers if any(m is model for m in w.modules())), None)


STREAMING_COMPILED = (
    "probe {name!r} reads the training forward's activations, which hooks cannot see in a torch.compile'd model "
    "(dynamo ignores hooks added after compilation). To watch them, train uncompiled, or measure on a fixed batch "
    "with a snapshot probe"
)  # the reason a streaming probe without a shadow forward is disabled under a compiled training forward


STREAMING_STAGED = (
    "probe {name!r} {why}; under pipeline parallel it is off (README 'Pipeline parallel'): measure on a fixed batch "
    "with a snapshot probe, whose forward runs through the stages"
)  # the reason a probe is disabled under pipeline parallel


def refuse_staged(probes: Sequence[Probe], adapter: Adapter) -> list[tuple[Probe, str]]:
    """Under pipeline parallel: the probes that cannot run through the stages, each with its reason.

    Those that read the training forward (the schedule splits it into micro-batches across the stages) and the
    ``chained`` ones (greedy generation feeds the last stage's output back into the first).
    """
    if adapter.pipeline_stages == 1:
        return []
    refused = []
    for probe in probes:
        if probe.source == TRAINING_FORWARD:
            why = "reads the training forward, which the pipeline schedule splits into micro-batches across stages"
        elif probe.chained:
            why = "runs forwards of its own (each fed by the last one's output, which only the last stage holds)"
        else:
            continue
        refused.append((probe, STREAMING_STAGED.format(name=probe.name, why=why)))
    return refused


def refuse_compiled(probes: Sequence[Probe], names: dict[str, list[str]], inputs_read: bool) -> list[Probe]:
    """Under a compiled training forward: the streaming probes that read its activations and cannot go on.

    A probe with ``shadow_rows`` goes on through its shadow forward (said once, on rank 0, with where its rows come
    from: ``inputs_read``, the inputs are read at the ``torch.compile`` wrapper); the others are returned, for the
    caller to disable with :data:`STREAMING_COMPILED`. Snapshot probes run their own forwards on the original module
    and gradient probes read the optimizer: untouched.
    """
    refused = []
    for probe in (p for p in probes if p.source == TRAINING_FORWARD and names[p.name]):
        if not getattr(probe, "shadow_rows", 0):
            refused.append(probe)
            continue
        source = (
            "the batch handed to the monitor, else the inputs read at the torch.compile wrapper,"
            if inputs_read
            else "the batch handed to the monitor (without one, as when HF torch_compile=True compiles the model "
            "itself, it stays NaN),"
        )
        rank_zero_warn(
            f"mechmon: the training forward is compiled (hooks cannot see it): probe {probe.name!r} measures the "
            f"first {probe.shadow_rows} rows of {source} at each scheduled step through an eager no_grad forward "
            "before the optimizer step (shadow_rows)"
        )
    return refused
