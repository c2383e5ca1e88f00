"""Tensor-parallel ranks: ``python tests/distributed/tp_worker.py MODE OUT`` (MODE ``tp``: 2 ranks, ``fsdp_tp``: 4).

A tiny Llama is trained for 3 steps with every probe that applies (and a token count that fails on the last rank at
step 2), watched by the real ``Monitor``, twice: in one
process before the group starts (the reference, on every row of every data-parallel replica), then sharded:
``tp`` splits the attention and MLP weights (heads), the output head (vocabulary-parallel logits) over 2 ranks with
``parallelize_module``; ``fsdp_tp`` composes it with ``fully_shard`` on a 2 x 2 mesh (data-parallel x tensor). Each
rank writes ``OUT/rank<r>.json``: both monitors' latest values, the alerts, the disabled probes.
"""

import contextlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mechmon import Monitor, StreamingProbe  # noqa: E402
from mechmon.registry import get_probe, list_probes  # noqa: E402
from tests.helpers.archs import tensor_parallel_llama, tiny_model  # noqa: E402
from tests.helpers.ranks import spawn  # noqa: E402

STEPS, ROWS, CTX, VOCAB = 3, 2, 128, 256
STEP = {"now": 0}


class Tokens(StreamingProbe):
    """Counts the tokens of the training forwards (a raw count: each row once, whatever the tensor parallelism);
    raises on the last rank at step 2 (disabled on every rank at that step)."""

    name = "tokens"
    requires = ("logits",)

    def setup(self, model, adapter, device):
        self.add_state("count", torch.zeros((), dtype=torch.float64), "sum")

    def update(self, captures, batch):
        if dist.is_initialized() and dist.get_rank() == dist.get_world_size() - 1 and STEP["now"] == 2:
            raise RuntimeError("only the last rank sees this")
        self.count += captures["logits"].shape[0] * captures["logits"].shape[1]

    def compute(self):
        return {self.key("count"): self.count}


def probes() -> list:
    names = [n for n in list_probes() if n not in ("apm", "moe_pathway", "moe_routing", "icl")]
    return [get_probe(n)() for n in names] + [get_probe("icl")(early=10, late=100), Tokens()]


def batches(replica: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + replica)
    return [torch.randint(1, VOCAB, (ROWS, CTX), generator=gen) for _ in range(STEPS)]


def train(model, data: list[torch.Tensor], parallel_loss=contextlib.nullcontext) -> Monitor:
    """3 AdamW steps; the loss is the mean next-token cross-entropy (over a vocabulary-parallel head: loss_parallel)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer=optimizer, probes=probes(), schedule=1, budget=None, log_dir=None)
    for step, ids in enumerate(data, start=1):
        STEP["now"] = step
        with monitor.step(step, ids):
            logits = model(input_ids=ids).logits
            with parallel_loss():
                F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
            optimizer.step()
            optimizer.zero_grad()
    monitor.close()
    return monitor


def worker(rank: int, world: int, init: str, mode: str, out: str) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(200, exit=True)  # a hang prints every stack and ends the worker
    torch.set_num_threads(1)
    replicas = 2 if mode == "fsdp_tp" else 1
    every_row = [torch.cat(rows) for rows in zip(*map(batches, range(replicas)), strict=True)]
    reference = train(tiny_model("llama").train(), every_row)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh

    model = tiny_model("llama").train()
    if mode == "tp":
        tensor_parallel_llama(model, init_device_mesh("cpu", (2,), mesh_dim_names=("tp",)))
        replica = 0
    else:
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        tensor_parallel_llama(model, mesh["tp"])
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
        replica = mesh["dp"].get_local_rank()
    from torch.distributed.tensor.parallel import loss_parallel

    sharded = train(model, batches(replica), loss_parallel)
    result = {
        "reference": reference.latest,
        "sharded": sharded.latest,
        "alerts": [[a.rule, a.step, a.reason] for a in sharded.alerts],
        "disabled": sorted(sharded.disabled),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    mode = sys.argv[1]
    spawn(worker, 2 if mode == "tp" else 4, mode, sys.argv[2])
