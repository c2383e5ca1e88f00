"""Ranks for the reduction test: ``python tests/distributed/reduce_worker.py WORLD OUT``.

Each rank fills states of every reduce op (and a NaN, an int count, a replicated state) from a generator seeded by
its rank, reduces them with :func:`mechmon.distributed.reduce_states`, and writes ``OUT/rank<r>.json``: the reduced
values, the reference (every rank's values rebuilt locally, reduced by an explicit loop) and the size and op of
each collective mechmon issued.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from mechmon.distributed import reduce_states  # noqa: E402
from mechmon.probe import Probe  # noqa: E402
from tests.helpers.ranks import spawn  # noqa: E402

SENT: list[dict] = []


def values(rank: int) -> dict[str, torch.Tensor]:
    """What rank ``rank`` holds: random values, a NaN maximum on rank 1 only, an all -inf slot, counts."""
    gen = torch.Generator().manual_seed(rank)
    peak = torch.randn(4, generator=gen)
    peak[3] = float("-inf")
    if rank == 1:
        peak[0] = float("nan")
    return {
        "count": torch.randint(0, 2**40, (3,), generator=gen),  # int64 counts, exact in float64 below 2**53
        "total": torch.randn(2, 2, generator=gen),
        "peak": peak,
        "low": torch.randn(3, generator=gen),
        "same": torch.tensor([1.5, -2.0]),
        "failures": torch.tensor([0.0, float(rank == 2)], dtype=torch.float64),
        "times": torch.tensor([0.1 * rank, 10.0 + rank], dtype=torch.float64),
    }


OPS = {"count": "sum", "total": "sum", "peak": "max", "low": "min", "same": "sum", "failures": "sum", "times": "max"}


class States(Probe):
    name = "states"
    source = "weights"

    def __init__(self, rank: int) -> None:
        super().__init__()
        for name, t in values(rank).items():
            if name not in ("failures", "times"):
                self.add_state(name, t, OPS[name], replicated=name == "same")


def reference(world: int) -> dict[str, list]:
    """An explicit loop over every rank's values, element by element, in Python floats (sums of float32 exact)."""
    out = {}
    for name, op in OPS.items():
        per_rank = [values(r)[name].reshape(-1).tolist() for r in range(world)]
        if name == "same":
            out[name] = per_rank[0]
            continue
        reduced = []
        for column in zip(*per_rank, strict=True):
            if op == "sum":
                reduced.append(sum(column))
            elif any(v != v for v in column):
                reduced.append(float("nan"))
            else:
                reduced.append(max(column) if op == "max" else min(column))
        out[name] = torch.tensor(reduced, dtype=values(0)[name].dtype).tolist()  # rounded to the state's dtype
    return out


def counted(fn):
    def wrapper(tensor, op=dist.ReduceOp.SUM, **kwargs):
        SENT.append({"numel": tensor.numel(), "bytes": tensor.numel() * tensor.element_size(), "op": str(op)})
        return fn(tensor, op=op, **kwargs)

    return wrapper


def worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    dist.all_reduce = counted(dist.all_reduce)
    dist.all_gather = None  # the reduction never gathers
    probe, mine = States(rank), values(rank)
    sent = {"failures": (mine["failures"], "sum"), "times": (mine["times"], "max")}
    states = [(t, spec.reduce) for t, spec in probe.states().values() if not spec.replicated]
    collectives = reduce_states(states + list(sent.values()))
    got = {name: t.reshape(-1).tolist() for name, (t, _) in probe.states().items()}
    got.update({name: t.tolist() for name, (t, _) in sent.items()})
    result = {"collectives": collectives, "sent": SENT, "got": got, "want": reference(world)}
    result["dtypes"] = {name: str(t.dtype) for name, (t, _) in probe.states().items()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    spawn(worker, int(sys.argv[1]), sys.argv[2])
