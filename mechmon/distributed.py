"""Pack -> all_gather -> reduce locally: **one** collective per scheduled step for all probes together.

Every rank must call :func:`reduce_states` on every scheduled step with the same probes, whatever its data:
whether to enter a collective depends only on the step and on what the ranks agreed. All non-replicated states,
whatever their reduce op (sum, max, min) and dtype, travel as one float64 vector (exact for float32 and for int64
counts below 2**53) together with the named parts each rank adds (its per-probe failure flags, the budget's times);
each rank gathers the ``[world, n]`` matrix and applies the ops itself. The gathered flags tell every rank which
probes failed on which rank, so a probe that raises on one rank only is disabled on all of them at the same step
instead of desynchronising the next collective.
Memory: ``world × n`` float64 on the states' device, n being a few thousand numbers for the built-in probes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from mechmon.probe import Probe

__all__ = ["reduce_states", "world_size", "rank", "rank_zero_warn", "all_ranks", "same_on_all_ranks"]

_REDUCE = {"sum": lambda m: m.sum(dim=0), "max": lambda m: m.amax(dim=0), "min": lambda m: m.amin(dim=0)}


def world_size() -> int:
    """Number of processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group (0 when torch.distributed is not initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_zero_warn(message: str, stacklevel: int = 3) -> None:
    """A ``UserWarning`` on rank 0 only (every rank would otherwise print the same line)."""
    if rank() == 0:
        warnings.warn(message, stacklevel=stacklevel)


def reduce_states(probes: Iterable[Probe], sent: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """Reduce every non-replicated state across ranks in place, and gather each of this rank's ``sent`` parts.

    Args:
        probes: the probes due at this step (the same list on every rank).
        sent: part name -> this rank's 1-d tensor on the states' device (the same names and sizes on every rank),
            e.g. the per-probe failure flags ``[P]``.

    Returns:
        ``(gathered, collectives)``: part name -> every rank's copy ``[world, n]`` (``[1, n]`` in one process), and
        the number of collectives issued (1, or 0 in one process).
    """
    world = world_size()
    if world == 1:
        return {name: t.unsqueeze(0) for name, t in sent.items()}, 0
    states = [(t, spec.reduce) for probe in probes for t, spec in probe.states().values() if not spec.replicated]
    tensors = [t for t, _ in states] + list(sent.values())
    dtype = torch.float32 if tensors[-1].device.type == "mps" else torch.float64  # MPS has no float64
    flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
    copies = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(copies, flat)  # collective: the one of a scheduled step
    matrix, offset = torch.stack(copies), 0
    for t, reduce in states:
        t.copy_(_REDUCE[reduce](matrix[:, offset : offset + t.numel()]).view_as(t))
        offset += t.numel()
    gathered = {}
    for name, t in sent.items():
        gathered[name], offset = matrix[:, offset : offset + t.numel()], offset + t.numel()
    return gathered, 1


def all_ranks(flags: list[bool], device: torch.device) -> list[bool]:
    """Whether each flag holds on every rank: one tiny ``all_reduce`` (MIN) of ``len(flags)`` numbers.

    Every rank must call it with a list of the same length, at the same point. In one process: ``flags`` as given.
    """
    if world_size() == 1 or not flags:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)  # collective: a fixed-size agreement, every rank alike
    return [bool(v) for v in t.tolist()]  # sync: the agreement's answer


def same_on_all_ranks(values: list[float], device: torch.device) -> list[bool]:
    """Whether each value is the same on every rank: one ``all_reduce`` (MAX) of ``[v, -v]`` (exact below 2**53)."""
    if world_size() == 1 or not values:
        return [True] * len(values)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    t = torch.tensor(list(values) + [-v for v in values], dtype=dtype, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # collective: at attach only
    high, low = t[: len(values)].tolist(), t[len(values) :].tolist()  # sync: at attach only
    return [h == -lo for h, lo in zip(high, low, strict=True)]
