"""Pipeline-parallel ranks: ``python tests/distributed/pipeline_worker.py MODE OUT`` (a 4-layer nanoGPT in stages).

Each rank builds its stage as torchtitan does (its blocks under their global indices in a ``ModuleDict``, the
embeddings on the first stage, the final norm and head on the last) and trains it for 3 steps with
``torch.distributed.pipelining`` (``ScheduleGPipe``, 2 micro-batches), watched by ``Monitor(pipeline=stage)``.
Before the group starts, the same model is trained unpipelined in one process (the whole model as a single stage),
watched alike: the reference. MODE ``pp``: 2 stages on 2 ranks; ``pp3``: 3 stages on 3 ranks (6 layers) at learning
rate 0 (the pipelined gradients, summed over micro-batches, differ from the reference's in the last bits; at lr 0
the weights stay equal). Each rank first attaches a monitor without ``pipeline=`` (refused on every rank alike). A
snapshot probe that fails on the first stage only at step 2 is disabled on every stage. Each rank writes
``OUT/rank<r>.json``.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mechmon import Monitor  # noqa: E402
from mechmon.probes import InductionProbe  # noqa: E402
from mechmon.registry import get_probe, list_probes  # noqa: E402
from tests.helpers.nanogpt import Stage, gpt  # noqa: E402
from tests.helpers.ranks import spawn  # noqa: E402

STEPS, ROWS, CTX = 3, 4, 48
STEP = {"now": 0}
LR = {"lr": 1e-3}  # pp3: 0 (the weights stay equal, so every activation key equals exactly)


class Fragile(InductionProbe):
    """The induction probe, failing in its capture hook on the first stage at step 2 (a rank-local failure)."""

    name = "fragile"

    def reduce_capture(self, name, tensor):
        if dist.is_initialized() and dist.get_rank() == 0 and STEP["now"] == 2:
            raise RuntimeError("only the first stage sees this")
        return super().reduce_capture(name, tensor)


def probes() -> list:
    skip = ("apm", "moe_pathway", "moe_routing", "icl")
    return [get_probe(n)() for n in list_probes() if n not in skip] + [get_probe("icl")(early=5, late=40), Fragile()]


def batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(1, 64, (ROWS, CTX), generator=gen) for _ in range(STEPS)]


def loss_fn(logits, ids):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def reference(layers: int) -> Monitor:
    """The whole model as one stage, in one process, trained on the same rows."""
    model = Stage(gpt(n_layer=layers), 0, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR["lr"])
    monitor = Monitor(model, optimizer=optimizer, probes=probes(), schedule=1, budget=None, log_dir=None)
    for step, ids in enumerate(batches(), start=1):
        STEP["now"] = step
        with monitor.step(step, ids):
            loss_fn(model(ids), ids).backward()
            optimizer.step()
            optimizer.zero_grad()
    monitor.close()
    return monitor


def pipelined(rank: int, world: int, layers: int) -> tuple[Monitor, str | None]:
    """Attach without ``pipeline=`` (refused), then with it, and train."""
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    module = Stage(gpt(n_layer=layers), rank, world)
    optimizer = torch.optim.AdamW(module.parameters(), lr=LR["lr"])
    stage = PipelineStage(module, rank, world, torch.device("cpu"))
    schedule = ScheduleGPipe(stage, n_microbatches=2, loss_fn=loss_fn)
    refused = None
    try:
        Monitor(module, optimizer=optimizer, probes=probes(), log_dir=None)
    except RuntimeError as err:
        refused = str(err)
    monitor = Monitor(module, optimizer=optimizer, probes=probes(), schedule=1, budget=None, log_dir=None,
                      pipeline=stage)  # fmt: skip
    for step, ids in enumerate(batches(), start=1):
        STEP["now"] = step
        with monitor.step(step, ids):
            if rank == 0:
                schedule.step(ids)
            elif rank == world - 1:
                schedule.step(target=ids, losses=[])
            else:
                schedule.step()
            optimizer.step()
            optimizer.zero_grad()
    monitor.close()
    return monitor, refused


def worker(rank: int, world: int, init: str, mode: str, out: str) -> None:
    import faulthandler
    import warnings

    faulthandler.dump_traceback_later(200, exit=True)  # a hang prints every stack and ends the worker
    torch.set_num_threads(1)
    layers = 2 * world
    LR["lr"] = 0.0 if mode == "pp3" else 1e-3
    expected = reference(layers)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        monitor, refused = pipelined(rank, world, layers)
    result = {
        "refused": refused,
        "warnings": [str(w.message) for w in seen],
        "reference": expected.latest,
        "pipelined": monitor.latest,
        "alerts": [[a.rule, a.step, a.reason] for a in monitor.alerts],
        "disabled": sorted(monitor.disabled),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    mode = sys.argv[1]
    spawn(worker, 3 if mode == "pp3" else 2, mode, sys.argv[2])
