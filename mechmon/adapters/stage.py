"""One pipeline-parallel stage seen as the whole model: global layer indices, names and sizes agreed at attach.

:class:`StageAdapter` wraps the adapter of the stage's own module (found as for any model; the first stages have no
head) and gives the probes the unpipelined model's view: ``n_layers`` over all stages, every stage's canonical names
under global layer indices (a stage's block ``i`` is global block ``i`` plus the blocks of the stages before it), the
last stage's vocabulary, and every stage's trainable tensors in stage order, those of other stages as empty tensors
(their norms and dot products are 0 here; the stage holding them adds theirs in the reduction). A probe forward runs
through the stages (:mod:`mechmon.stages`); the last stage feeds the probes.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mechmon.adapters.base import LOGITS, Adapter, HookPoint, first_output
from mechmon.adapters.discover import find_layout
from mechmon.adapters.structural import StructuralAdapter
from mechmon.checks import fail
from mechmon.stages import StageFailed, Stages

__all__ = ["StageAdapter", "stage_adapter", "attach_stage", "pipeline_stages"]

_LAYER = re.compile(r"^blocks\.(\d+)\.")


def _shift(name: str, offset: int) -> str:
    """``blocks.{i}.…`` -> ``blocks.{i + offset}.…``; other names as they are."""
    return _LAYER.sub(lambda m: f"blocks.{int(m.group(1)) + offset}.", name)


def _describe(local: Adapter | None, error: str | None) -> dict[str, Any]:
    """What a stage tells the others at attach (JSON): its sizes, names and trainable tensors, or its error."""
    if local is None:
        return {"error": error}
    try:
        return {
            "error": None,
            "layers": local.n_layers,
            "heads": local.n_heads,
            "vocab": local.vocab_size if LOGITS in local.hook_points() else 0,
            "context": local.max_positions or 0,
            "bos": local.bos_token_id,
            "names": list(local.hook_points()),
            "params": [n for n, _ in local.trainable()],
            "output": local.output_names(),
        }
    except Exception as err:  # caveat: told to every stage, which all raise alike
        return {"error": f"{type(err).__name__}: {err}"}


_STAGE_ATTRS = ("stage_index", "num_stages", "group", "stage_index_to_group_rank")


def pipeline_stages(stage: Any) -> Stages:
    """Validate ``Monitor(pipeline=...)``: this rank's ``PipelineStage``.

    Raises:
        TypeError: if it is not a pipeline stage; ValueError: if torch.distributed is not initialised, or the rank
            holds several stages.
    """
    if not all(hasattr(stage, a) for a in _STAGE_ATTRS):
        fail("Monitor", "pipeline", stage, "this rank's torch.distributed.pipelining.PipelineStage", TypeError)
    if not torch.distributed.is_initialized():
        fail("Monitor", "pipeline", stage, "given after torch.distributed.init_process_group()", ValueError)
    return Stages.of(stage)


def attach_stage(root: nn.Module, spec: Any, submodule: str | None, stages: Stages) -> StageAdapter:
    """This stage's adapter, agreed with the other stages (:func:`stage_adapter`); every rank calls it at attach.

    Found as for any model (:func:`resolve_adapter`); a stage before the last is a block list without a head.

    Raises:
        RuntimeError: on every stage alike, when some stage found no model.
    """
    from mechmon.adapters import resolve_adapter  # the package imports this module's siblings first

    params = list(root.parameters())
    device = params[0].device if params else torch.device("cpu")
    local, error = None, None
    try:
        try:
            local = resolve_adapter(root, spec, submodule)
        except RuntimeError:
            model = root if submodule is None else root.get_submodule(submodule)
            if spec is not None or find_layout(model) is None:
                raise
            local = StructuralAdapter(model, headless=True)  # a stage before the last: blocks, no head
    except Exception as err:  # caveat: told to every stage, which all raise alike
        error = f"{type(err).__name__}: {err}"
    return stage_adapter(local, error, stages, device)


def stage_adapter(local: Adapter | None, error: str | None, stages: Stages, device: torch.device) -> StageAdapter:
    """Agree the stages' views (one exchange over the pipeline group) and wrap this stage's adapter.

    Every rank calls it at attach, with its adapter or the error that kept it from finding one.

    Raises:
        RuntimeError: on every stage alike, when some stage found no adapter (naming it and why).
    """
    docs = stages.exchange(_describe(local, error), device)
    failed = [(i, d["error"]) for i, d in enumerate(docs) if d["error"]]
    if failed or local is None:
        index, why = failed[0]
        raise RuntimeError(f"mechmon: pipeline stage {index} has no model mechmon can read: {why}")
    return StageAdapter(local, stages, docs)


class StageAdapter(Adapter):
    """The adapter of one pipeline stage, with the unpipelined model's sizes and names (see the module docstring).

    Args:
        local: the stage module's own adapter.
        stages: this rank's stage.
        docs: every stage's description, by stage index (:func:`stage_adapter`).
    """

    family: ClassVar[str] = "stage"

    def __init__(self, local: Adapter, stages: Stages, docs: list[dict[str, Any]]) -> None:
        super().__init__(local.model)
        self.local, self.stages = local, stages
        offsets = [sum(d["layers"] for d in docs[:i]) for i in range(len(docs))]
        self.offset = offsets[stages.index]
        self.n_layers = sum(d["layers"] for d in docs)
        self.n_heads = int(docs[0]["heads"])
        self.vocab_size = max(int(d["vocab"]) for d in docs)
        self.max_positions = max(int(d["context"]) for d in docs) or None
        self.bos_token_id = docs[0]["bos"]
        self.n_experts, self.top_k = local.n_experts, local.top_k
        self.pipeline_stages = stages.count
        self._names = [_shift(n, off) for d, off in zip(docs, offsets, strict=True) for n in d["names"]]
        self._params = [(i, n) for i, d in enumerate(docs) for n in d["params"]]
        self._output = [n for d in docs for n in d["output"]]
        params = list(local.model.parameters())
        self.device = params[0].device if params else torch.device("cpu")
        self._open: list[dict] = []  # the capture dicts of the probe forward under way (innermost last)

    def hook_points(self) -> dict[str, HookPoint]:
        """This stage's own capture points, under global layer indices."""
        return {_shift(n, self.offset): p for n, p in self.local.hook_points().items()}

    def names(self) -> list[str]:
        """Every stage's canonical names (what a probe may ask for)."""
        return list(self._names)

    def trainable(self) -> list[tuple[str, Tensor]]:
        """Every stage's trainable tensors in stage order; those of other stages as empty tensors."""
        own = dict(self.local.trainable())
        device = next(iter(own.values())).device if own else torch.device("cpu")
        return [(n, own[n] if i == self.stages.index else torch.empty(0, device=device)) for i, n in self._params]

    def output_names(self) -> list[str]:
        """The names of the output layer's weight, held by the last stage."""
        return list(self._output)

    def holds_activations(self) -> bool:
        """The last stage feeds the probes (every layer's captures reach it); the others send the identity."""
        return self.stages.last and self.local.holds_activations()

    def leads_activations(self) -> bool:
        """The last stage of the pipeline holding rank 0: replicated activation states are sent once."""
        return self.holds_activations() and 0 in self.stages.ranks

    def feeds_probes(self) -> bool:
        """The last stage: every stage's captures reach it with the activations."""
        return self.stages.last

    def agree_max(self, value: int) -> int:
        """The largest ``value`` over the stages: one ``all_reduce`` of the pipeline group (at setup)."""
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.stages.group)  # collective: setup
        return int(t.item())  # sync: at setup only

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """The stage module's eager attention."""
        with self.local.eager_attention():
            yield

    @contextlib.contextmanager
    def sdpa_attention(self) -> Iterator[None]:
        """The stage module's SDPA attention."""
        with self.local.sdpa_attention():
            yield

    @contextlib.contextmanager
    def collecting(self, captures: dict) -> Iterator[None]:
        """Captures of a probe forward travel with the activations to the last stage (see :meth:`forward`)."""
        self._open.append(captures)
        try:
            yield
        finally:
            self._open = [c for c in self._open if c is not captures]  # by identity: two dicts may be equal

    def forward(self, input_ids: Tensor) -> Tensor:
        """This stage's part of a probe forward; the logits ``[B, T, V]`` on the last stage, its output elsewhere.

        In: the token ids (first stage) or the previous stage's output; out, to the next stage: this stage's output
        and the captures so far, or the failure that stopped the chain. Then the stages agree whether any failed
        (one ``all_reduce`` of the pipeline group), so every stage raises or none does: a caller that falls back to
        other forwards after a failure does so on every stage alike.

        Raises:
            StageFailed: on every stage, when some stage's part failed (that stage raises its own error).
        """
        device = input_ids.device
        out, error = None, None
        try:
            x = input_ids if self.stages.first else self._receive(device)
            out = self.local.forward(x) if self.stages.last else first_output(self.model(x))
        except Exception as err:  # caveat: passed on and agreed before anyone raises
            error = err
        why = (
            None
            if error is None
            else str(error)
            if isinstance(error, StageFailed)
            else f"stage {self.stages.index}: {error!r}"
        )
        if not self.stages.last:
            self.stages.send({"": out, **self._outgoing()} if error is None else {}, {"failed": why}, device)
        if self.stages.any_failed(error is not None, device):
            if error is not None:
                raise error
            raise StageFailed("another pipeline stage's part of this probe forward failed")
        return out

    def _receive(self, device: torch.device) -> Tensor:
        tensors, info = self.stages.recv(device)
        if info["failed"]:
            raise StageFailed(info["failed"])
        if self._open:
            self._merge(tensors)
        return tensors.pop("")

    def _outgoing(self) -> dict[str, Tensor]:
        """The innermost capture dict, flat: a list of per-probe reductions as ``name#i``."""
        if not self._open:
            return {}
        flat = {}
        for name, value in self._open[-1].items():
            if isinstance(value, list):
                flat.update({f"{name}#{i}": v for i, v in enumerate(value)})
            else:
                flat[name] = value
        return flat

    def _merge(self, tensors: dict[str, Tensor]) -> None:
        caps = self._open[-1]
        for key in [k for k in tensors if k]:
            name, _, index = key.partition("#")
            if index:
                caps.setdefault(name, [])
                caps[name].append(tensors.pop(key))
            else:
                caps[name] = tensors.pop(key)

    def tensor_parallel(self) -> Any:
        """The stage module's tensor-parallel group, if any."""
        return self.local.tensor_parallel()

    def __repr__(self) -> str:
        return f"StageAdapter(stage {self.stages.index} of {self.stages.count}, {self.local!r})"
