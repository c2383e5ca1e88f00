"""Pack -> one fixed-size ``all_reduce`` per reduce op: what a rank sends does not grow with the world size.

Every rank must call :func:`reduce_states` on every scheduled step with the same parts, whatever its data:
whether to enter a collective depends only on the step and on what the ranks agreed. All non-replicated states and
the named parts each rank adds (its failure counts, the budget's times) travel as float64 vectors (exact for float32
and for int64 counts below 2**53), one per op in use: a SUM vector, and a MAX vector that also carries the MIN parts
as ``-max(-x)``; so a scheduled step issues at most two collectives, each of the same size on 2 ranks as on 1,024.
A NaN in a MAX/MIN part is counted in the SUM vector and restored after the reduction (an ``all_reduce`` MAX may
drop it, depending on the order of the ranks): a rank whose maximum is NaN makes the reduced value NaN, as in one
process. Memory: two float64 copies of the ``n`` numbers sent, n being a few thousand for the built-in probes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["reduce_states", "exact_dtype", "world_size", "rank", "rank_zero_warn", "all_ranks", "same_on_all_ranks"]

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


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


def exact_dtype(device: torch.device) -> torch.dtype:
    """The dtype mechmon reduces and copies in: float64, float32 on MPS (which has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def reduce_states(parts: Sequence[tuple[Tensor, str]]) -> int:
    """Reduce each tensor of ``parts`` across ranks, in place, by its op.

    Args:
        parts: (this rank's tensor on the states' device, its reduce op ``sum``/``max``/``min``), the same shapes,
            dtypes and ops in the same order on every rank: the due probes' non-replicated states, then what the
            step adds (the per-probe failure counts, the budget's times).

    Returns:
        The number of collectives issued: one ``all_reduce`` per op bucket in use (SUM; MAX, which carries MIN too),
        0 in one process, where every tensor is left as it is.
    """
    if world_size() == 1 or not parts:
        return 0
    dtype = exact_dtype(parts[-1][0].device)
    sums = [(t, 1.0) for t, reduce in parts if reduce == "sum"]
    extremes = [(t, -1.0 if reduce == "min" else 1.0) for t, reduce in parts if reduce != "sum"]
    # the NaN counts of the extremes ride in the SUM vector (MAX may drop a NaN)
    flats = {
        "sum": torch.cat([_flat(t, dtype) for t, _ in sums] + [_flat(t, dtype).isnan().to(dtype) for t, _ in extremes])
    }
    if extremes:
        flats["max"] = torch.cat(
            [(_flat(t, dtype) * sign).nan_to_num(-math.inf, math.inf, -math.inf) for t, sign in extremes]
        )
    for op, flat in flats.items():
        dist.all_reduce(flat, op=_OPS[op])  # collective: one per op in use, of a size fixed by the probes alone
    offset = 0
    for t, _ in sums:
        t.copy_(flats["sum"][offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    nan_counts, offset = flats["sum"][offset:], 0
    for t, sign in extremes:
        chunk = flats["max"][offset : offset + t.numel()] * sign
        t.copy_(chunk.masked_fill(nan_counts[offset : offset + t.numel()] > 0, math.nan).view_as(t))
        offset += t.numel()
    return len(flats)


def _flat(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.reshape(-1).to(dtype)


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
    t = torch.tensor(list(values) + [-v for v in values], dtype=exact_dtype(device), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # collective: at attach only
    high, low = t[: len(values)].tolist(), t[len(values) :].tolist()  # sync: at attach only
    return [h == -lo for h, lo in zip(high, low, strict=True)]
