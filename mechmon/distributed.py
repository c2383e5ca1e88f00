"""Pack -> all_reduce -> unpack: one collective per (reduce op, dtype) for all probes together.

Every rank must call :func:`reduce_states` on every scheduled step with the same probes, whatever its data:
whether to enter a collective depends only on the step (CONVENTIONS.md §5-6).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from mechmon.probe import Probe

__all__ = ["reduce_states", "world_size"]

_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def world_size() -> int:
    """Number of processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _groups(probes: Iterable[Probe]) -> dict[tuple[str, torch.dtype, torch.device], list[Tensor]]:
    groups: dict[tuple[str, torch.dtype, torch.device], list[Tensor]] = {}
    for probe in probes:
        for tensor, spec in probe.states().values():
            if not spec.replicated:
                groups.setdefault((spec.reduce, tensor.dtype, tensor.device), []).append(tensor)
    return groups


def reduce_states(probes: Iterable[Probe]) -> int:
    """Reduce every non-replicated state across ranks, in place.

    Returns:
        The number of collectives issued (0 in a single process).
    """
    if world_size() == 1:
        return 0
    groups = _groups(probes)
    for (reduce, _, _), tensors in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), str(kv[0][2]))):
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=getattr(dist.ReduceOp, _OPS[reduce]))  # collective: one per (op, dtype)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
    return len(groups)
