"""Sharded models seen from a probe: the unsharded activations on every rank, and each shard counted once.

Tensor parallelism (torch's ``parallelize_module``: ``ColwiseParallel`` / ``RowwiseParallel`` DTensor weights)
splits the attention heads and the output vocabulary across the ranks of its mesh dimension: each rank's attention
module returns its own heads ``[B, H/tp, Q, K]``, a vocabulary-parallel head its own logits ``[B, T, V/tp]`` (or a
``Shard(-1)`` DTensor). :func:`whole` gathers them back, so every probe sees the model's global heads and whole
vocabulary on every rank: an ``all_gather`` in the capture hook, inside a forward that every rank of the group runs
alike (its own collectives already require it). :func:`share` tells the weight probes how many ranks hold the same
local part of a parameter (replicated weights, data-parallel copies of a tensor-parallel shard), so a sum over
ranks counts each element once.

The tensor-parallel dimension is found from the parameters: the mesh dimension on which some DTensor weight is
sharded along an input dimension (``Shard(1)``: only a row-wise split does that; FSDP2 shards dimension 0).

Pipeline parallelism gives each rank different layers: unless the monitor is told the stage (``Monitor(pipeline=)``,
:mod:`mechmon.stages`), :func:`refuse_different_models` stops it at attach, on every rank alike, when the ranks'
parameter names differ.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mechmon.distributed import same_on_all_ranks, world_size

__all__ = ["TensorParallel", "find_tensor_parallel", "whole", "share", "is_dtensor", "refuse_different_models"]


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return None
    return DTensor


def is_dtensor(tensor: object) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor``."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


@dataclass(frozen=True)
class TensorParallel:
    """The tensor-parallel group of this rank.

    Attributes:
        group: the process group of the mesh dimension that splits heads and vocabulary.
        size: its number of ranks.
        rank: this rank's index in it (heads ``[rank * H/size, (rank + 1) * H/size)`` are its own).
    """

    group: dist.ProcessGroup
    size: int
    rank: int

    def gather(self, tensor: Tensor, dim: int) -> Tensor:
        """Every rank's ``tensor`` concatenated along ``dim`` in rank order (the unsharded tensor)."""
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)  # collective: the group's own forward
        return torch.cat(parts, dim=dim)


def find_tensor_parallel(model: nn.Module) -> TensorParallel | None:
    """The tensor-parallel group of ``model``'s DTensor weights, or ``None`` (not sharded by tensor parallel)."""
    for param in model.parameters():
        if not is_dtensor(param):
            continue
        for dim, placement in enumerate(param.placements):
            if placement.is_shard() and placement.dim >= 1:  # a row-wise split: tensor parallel, never FSDP
                mesh = param.device_mesh
                return TensorParallel(mesh.get_group(dim), mesh.size(dim), mesh.get_local_rank(dim))
    return None


def whole(tensor: Tensor, tp: TensorParallel | None, heads: int | None = None, vocab: int | None = None) -> Tensor:
    """The unsharded value of a captured activation, on every rank.

    Args:
        tensor: a DTensor (gathered with ``full_tensor``), or a local shard: attention ``[B, H/tp, ...]`` when
            ``heads`` is given, logits ``[..., V/tp]`` when ``vocab`` is given.
        tp: this rank's tensor-parallel group, or ``None`` (then only DTensors are gathered).
        heads: the model's attention heads, for a pattern or row statistics.
        vocab: the model's vocabulary size, for logits.

    Returns:
        ``[B, H, ...]`` or ``[..., V]``; the tensor itself when it is whole already.
    """
    if is_dtensor(tensor):
        return tensor.full_tensor()  # collective: the DTensor's mesh, inside the forward every rank runs
    if tp is None:
        return tensor
    if heads and tensor.ndim >= 2 and tensor.shape[1] * tp.size == heads:
        return tp.gather(tensor, 1)
    if vocab and tensor.shape[-1] * tp.size == vocab:
        return tp.gather(tensor, -1)
    return tensor


def share(param: Tensor, stages: int = 1) -> float:
    """The share of a sum over ranks that this rank's local part of ``param`` stands for: 1 / the ranks holding it.

    A DTensor's local shard is held by every rank of its mesh's ``Replicate`` dimensions and by each copy of its
    mesh among the ranks of its pipeline stage (data-parallel replicas of a tensor-parallel mesh); an FSDP1 flattened
    view by its rank alone; a plain tensor by every rank of its stage (``world / stages``; all ranks without pipeline
    parallel). Exact in float for powers of two; else within one rounding.
    """
    world = world_size() // stages
    if is_dtensor(param):
        mesh = param.device_mesh
        copies = world // mesh.size()
        for dim, placement in enumerate(param.placements):
            if placement.is_replicate():
                copies *= mesh.size(dim)
        return 1.0 / copies
    return 1.0 if getattr(param, "_fsdp_flattened", False) else 1.0 / world


def refuse_different_models(root: nn.Module) -> None:
    """Raise on every rank alike when the ranks hold different models (pipeline-parallel stages).

    One ``all_reduce`` at attach compares the number of parameter tensors and a CRC-32 of their names (the same
    under DDP, FSDP and tensor parallel, whose DTensors keep their names).

    Raises:
        RuntimeError: on every rank, when the names differ on some rank.
    """
    if world_size() == 1:
        return
    names = [name for name, _ in root.named_parameters()]
    device = next(root.parameters()).device if names else torch.device("cpu")
    fingerprint = [float(len(names)), float(zlib.crc32("\n".join(names).encode()))]
    if all(same_on_all_ranks(fingerprint, device)):  # collective: at attach only
        return
    raise RuntimeError(
        f"mechmon: the ranks hold different models (the names of the {len(names)} parameter tensors here differ "
        "from some other rank's). Pipeline-parallel stages? Pass this rank's stage: Monitor(model=stage.submod, "
        "pipeline=stage), with the torch.distributed.pipelining.PipelineStage (one per rank), and the stages "
        "cooperate. Any other layout needs the whole model on every rank (DDP, FSDP, tensor parallel)"
    )
