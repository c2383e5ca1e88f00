"""Parameter selection shared by the weight-side probes: trainable tensors, the output layer, glob subsets.

Sharded parameters (FSDP2 ``fully_shard`` and tensor-parallel DTensors, FSDP1 ``use_orig_params`` views) are read
through their local shard: a per-tensor sum of squares or dot product over the local shards, each weighted by the
share of the ranks holding that part (:func:`shares`) and summed across ranks, is the full one, so the weight probes
declare such states as summed instead of replicated.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mechmon.adapters.base import Adapter
from mechmon.sharding import is_dtensor, share

__all__ = [
    "select",
    "check_globs",
    "tracked_params",
    "is_sharded",
    "local",
    "local_grad",
    "shares",
    "reshard",
]


def reshard(model: nn.Module) -> None:
    """Reshard every FSDP2 module of ``model`` (a ``no_grad`` forward leaves the root's parameters gathered)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` holds only this rank's shard (a DTensor: FSDP2, tensor parallel; an FSDP1 flat view)."""
    return is_dtensor(tensor) or bool(getattr(tensor, "_fsdp_flattened", False))


def local(tensor: Tensor) -> Tensor:
    """This rank's part of ``tensor``: the local shard of a DTensor, the tensor itself otherwise."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def local_grad(param: Tensor) -> Tensor | None:
    """This rank's part of ``param.grad``, laid out as :func:`local` of ``param`` (None without a gradient).

    A DTensor parameter's gradient may come in another layout (Hugging Face's own tensor parallel leaves some
    replicated, or plain full-size tensors): it is redistributed to the parameter's placements, which from a
    replicated gradient takes this rank's chunk without communicating.
    """
    grad = param.grad
    if grad is None or not is_dtensor(param):
        return None if grad is None else local(grad)
    mesh, placements = param.device_mesh, param.placements
    if not is_dtensor(grad):
        if grad.shape != param.shape:
            return grad  # already this rank's part
        from torch.distributed.tensor import DTensor, Replicate

        grad = DTensor.from_local(grad, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return grad.to_local() if grad.placements == placements else grad.redistribute(mesh, placements).to_local()


def shares(named: Sequence[tuple[str, nn.Parameter]], device: torch.device, stages: int = 1) -> Tensor | None:
    """Per tensor, the share of a sum over ranks its local part stands for ``[P]`` float64, or ``None`` unsharded.

    Multiplying each local sum of squares (or dot product) by it before the reduction's SUM counts every element
    once: a weight replicated across tensor-parallel ranks, or a shard copied on data-parallel replicas, is held by
    several ranks (:func:`mechmon.sharding.share`). ``None`` when no tensor is sharded and the model is not split into
    ``stages`` pipeline stages (each holding its own tensors): the states are replicated.
    """
    if stages == 1 and not any(is_sharded(p) for _, p in named):
        return None
    return torch.tensor([share(p, stages) for _, p in named], dtype=torch.float64, device=device)


def select(named: Sequence[tuple[str, nn.Parameter]], patterns: Sequence[str]) -> list[int]:
    """Indices of the tensors whose name matches any glob in ``patterns``.

    Raises:
        ValueError: if a pattern matches nothing (listing a few names that exist).
    """
    chosen: list[int] = []
    for pattern in patterns:
        hits = [i for i, (n, _) in enumerate(named) if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"no parameter matches {pattern!r}; some names: {[n for n, _ in named][:12]}")
        chosen += [i for i in hits if i not in chosen]
    return chosen


def check_globs(params: Sequence[str] | None) -> list[str] | None:
    """Validate a probe's ``params`` argument: ``None`` or a list of glob strings.

    Raises:
        TypeError: for a bare string or non-string items.
    """
    ok = params is None or (isinstance(params, (list, tuple)) and all(isinstance(p, str) for p in params))
    if not ok:
        raise TypeError(f"params=... must be a list of glob strings such as ['*head*'], got {params!r}")
    return None if params is None else list(params)


def tracked_params(adapter: Adapter, globs: Sequence[str] | None) -> tuple[list[tuple[str, nn.Parameter]], list[int]]:
    """Every trainable tensor (:meth:`Adapter.trainable`) and the indices of those ``globs`` pick (default: the head).

    Raises:
        ValueError: if a glob matches nothing.
    """
    named = adapter.trainable()
    return named, select(named, globs or adapter.output_names())
