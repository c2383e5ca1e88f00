"""The hooks of one scheduled step's streaming probes, and the batch read from a model's own inputs.

A :class:`Stream` lives from the first micro-batch of a scheduled step to its optimizer step: capture hooks for the
due streaming probes and, when the driver hands over no batch (Fabric, the HF ``Trainer``), a forward pre-hook that
reads the model's inputs and a forward hook that feeds the probes after each training forward.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from torch import Tensor

from mechmon.capture import capture
from mechmon.probe import Probe

if TYPE_CHECKING:
    from mechmon.engine.monitor import Monitor

__all__ = ["Stream", "model_inputs"]

_HF_KEYS = {"labels", "input_ids", "attention_mask"}


class Stream:
    """The hooks of one scheduled step's streaming probes, from its first micro-batch to its optimizer step.

    Args:
        monitor: the engine (its names, live probes and guarded calls).
        step: the optimizer step the hooks serve.
        due: the streaming probes due at that step.
        tap: read the batch from the model's inputs instead of receiving it in :meth:`feed`.
    """

    def __init__(self, monitor: Monitor, step: int, due: list[Probe], tap: bool) -> None:
        self.monitor, self.step, self.due, self.tap = monitor, step, due, tap
        self.stack = contextlib.ExitStack()
        self.caps: dict[str, Tensor] = {}

    @classmethod
    def open(cls, monitor: Monitor, step: int, due: list[Probe], tap: bool) -> Stream:
        """Attach the hooks (see the class arguments)."""
        stream = cls(monitor, step, due, tap)
        names = sorted({n for p in due for n in monitor._names[p.name]})
        stream.caps = stream.stack.enter_context(capture(monitor.adapter, names))
        if tap:  # the batch is the model's own input: read it before, feed the probes after each training forward
            model = monitor.adapter.model
            inputs: list[Any] = [None]
            pre = model.register_forward_pre_hook(
                lambda m, a, k: inputs.__setitem__(0, model_inputs(a, k)), with_kwargs=True
            )
            post = model.register_forward_hook(lambda m, a, o: stream.feed(inputs[0]) if m.training else None)
            stream.stack.callback(pre.remove)
            stream.stack.callback(post.remove)
        return stream

    def feed(self, batch: Any) -> None:
        """Update every live probe whose captures are all there; the captures are dropped right after."""
        for probe in self.monitor._live(self.due):
            if all(n in self.caps for n in self.monitor._names[probe.name]):
                self.monitor._guarded(probe, probe.update, self.caps, batch)
        self.caps.clear()

    def close(self) -> None:
        """Remove every hook this stream attached."""
        self.stack.close()


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
