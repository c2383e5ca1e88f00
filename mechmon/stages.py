"""Pipeline-parallel stages seen from a probe: the stages cooperate so that no rank needs layers it does not hold.

Under ``torch.distributed.pipelining`` each rank holds one stage: some of the blocks, the embeddings on the first,
the final norm and head on the last. A probe forward then runs as a chain: the first stage runs its layers on the
probe batch and sends its output to the next, which runs its own, and so on; each stage's capture hooks reduce
what its own layers produce (``reduce_capture``), and those small reductions ride along with the activations, so the
last stage ends the chain holding every layer's captures and the logits, and feeds the probes there. The other
stages send the reduction's identity for those probes (:meth:`mechmon.adapters.stage.StageAdapter.holds_activations`).

A message between stages is a JSON header (its tensors' names, dtypes and shapes, or the failure that stopped the
chain) and one byte payload: never pickled. A stage whose forward fails sends the failure on, so every later stage
raises too instead of waiting for a message that never comes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Stages", "StageFailed", "pack", "unpack"]

_LEN = 2  # the length message: header bytes, payload bytes


class StageFailed(RuntimeError):
    """An earlier stage's probe forward failed; this stage cannot run its layers."""


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {name!r}")
    return dtype


def pack(tensors: dict[str, Tensor], info: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor]:
    """A header (``uint8`` JSON: ``info``, each tensor's name, dtype, shape) and the tensors' bytes, on ``device``."""
    header = {"info": info, "tensors": [[n, str(t.dtype), list(t.shape)] for n, t in tensors.items()]}
    raw = json.dumps(header).encode()
    parts = [t.detach().to(device).contiguous().reshape(-1).view(torch.uint8) for t in tensors.values()]
    payload = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8, device=device)
    return torch.tensor(list(raw), dtype=torch.uint8, device=device), payload


def unpack(header: Tensor, payload: Tensor) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and ``info`` of :func:`pack` (copies, each with its dtype and shape)."""
    doc = json.loads(bytes(header.cpu().tolist()).decode())  # sync: the header is read to know the shapes
    tensors, offset = {}, 0
    for name, dtype_name, shape in doc["tensors"]:
        dtype = _dtype(dtype_name)
        count = 1
        for size in shape:
            count *= size
        nbytes = count * torch.empty((), dtype=dtype).element_size()
        tensors[name] = payload[offset : offset + nbytes].clone().view(dtype).reshape(shape)
        offset += nbytes
    return tensors, doc["info"]


@dataclass(frozen=True)
class Stages:
    """This rank's pipeline stage.

    Attributes:
        group: the pipeline's process group (``None``: the default group).
        index: this stage's index, 0 (it holds the embeddings) to ``count - 1`` (the head).
        count: the number of stages, one per rank of ``group``.
        ranks: the global rank of each stage, by stage index.
        holders: ranks holding a copy of this stage (the data-parallel replicas), ``world size / count``.
    """

    group: Any
    index: int
    count: int
    ranks: tuple[int, ...]
    holders: int

    @classmethod
    def of(cls, stage: Any) -> Stages:
        """From a ``torch.distributed.pipelining.PipelineStage`` (one stage per rank).

        Raises:
            ValueError: when the rank holds several stages (interleaved schedules).
        """
        group = stage.group
        size = dist.get_world_size(group)
        if size != stage.num_stages:
            raise ValueError(
                f"Monitor(pipeline=...) supports one stage per rank; this pipeline has {stage.num_stages} stages on "
                f"{size} ranks (an interleaved schedule): monitor a run with one stage per rank"
            )
        default = group or dist.distributed_c10d._get_default_group()
        ranks = tuple(dist.get_global_rank(default, stage.stage_index_to_group_rank[i]) for i in range(size))
        return cls(group, stage.stage_index, stage.num_stages, ranks, dist.get_world_size() // size)

    @property
    def first(self) -> bool:
        """Whether this stage holds the embeddings (it reads the token ids)."""
        return self.index == 0

    @property
    def last(self) -> bool:
        """Whether this stage holds the head (the chain of a probe forward ends here)."""
        return self.index == self.count - 1

    def send(self, tensors: dict[str, Tensor], info: dict[str, Any], device: torch.device) -> None:
        """Send a message to the next stage."""
        header, payload = pack(tensors, info, device)
        to = self.ranks[self.index + 1]
        lengths = torch.tensor([header.numel(), payload.numel()], dtype=torch.int64, device=device)
        dist.send(lengths, to)  # collective: point to point, the chain every stage runs alike
        dist.send(header, to)
        if payload.numel():
            dist.send(payload, to)

    def recv(self, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Receive the previous stage's message."""
        source = self.ranks[self.index - 1]
        lengths = torch.zeros(_LEN, dtype=torch.int64, device=device)
        dist.recv(lengths, source)  # collective: point to point, the chain every stage runs alike
        n_header, n_payload = lengths.tolist()  # sync: the message's size
        header = torch.zeros(n_header, dtype=torch.uint8, device=device)
        payload = torch.zeros(n_payload, dtype=torch.uint8, device=device)
        dist.recv(header, source)
        if n_payload:
            dist.recv(payload, source)
        return unpack(header, payload)

    def any_failed(self, failed: bool, device: torch.device) -> bool:
        """Whether ``failed`` holds on some stage: one ``all_reduce`` (MAX) of the pipeline group."""
        flag = torch.tensor([int(failed)], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)  # collective: after each probe forward
        return bool(flag.item())  # sync: every stage raises or none does

    def exchange(self, info: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
        """Every stage's ``info`` (JSON-able), by stage index: two ``all_gather`` of the pipeline group (at attach)."""
        header, _ = pack({}, info, device)
        size = torch.tensor([header.numel()], dtype=torch.int64, device=device)
        sizes = [torch.zeros_like(size) for _ in range(self.count)]
        dist.all_gather(sizes, size, group=self.group)  # collective: at attach only
        longest = max(int(s) for s in sizes)  # sync: at attach only
        padded = torch.zeros(longest, dtype=torch.uint8, device=device)
        padded[: header.numel()] = header
        gathered = [torch.zeros_like(padded) for _ in range(self.count)]
        dist.all_gather(gathered, padded, group=self.group)  # collective: at attach only
        by_rank = [unpack(g[: int(s)], padded[:0])[1] for g, s in zip(gathered, sizes, strict=True)]
        order = {dist.get_group_rank(self.group, r) if self.group else r: i for i, r in enumerate(self.ranks)}
        out: list[dict[str, Any]] = [{}] * self.count
        for group_rank, doc in enumerate(by_rank):
            out[order[group_rank]] = doc
        return out
