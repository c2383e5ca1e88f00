"""Pipeline-parallel ranks: ``python tests/distributed/pipeline_worker.py OUT`` (2 stages of a 4-layer nanoGPT).

Each rank builds its stage as torchtitan does (its layers under their global indices, the embeddings on the first
stage, the head on the last), tries to attach ``mechmon.Monitor`` to it, then trains 2 steps with
``torch.distributed.pipelining`` (``ScheduleGPipe``, 2 micro-batches). Writes ``OUT/rank<r>.json``: the refusal's
message and the steps trained.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from mechmon import Monitor  # noqa: E402
from tests.helpers.nanogpt import gpt  # noqa: E402
from tests.helpers.ranks import spawn  # noqa: E402


class Stage(nn.Module):
    """One stage of a nanoGPT: its blocks (global indices), the embeddings if first, the final norm and head if last."""

    def __init__(self, model, index: int, stages: int) -> None:
        super().__init__()
        blocks = list(model.transformer.h)
        per = len(blocks) // stages
        self.first, self.last = index == 0, index == stages - 1
        self.h = nn.ModuleDict({str(i): blocks[i] for i in range(index * per, (index + 1) * per)})
        if self.first:
            self.wte, self.wpe = model.transformer.wte, model.transformer.wpe
        if self.last:
            self.ln_f = model.transformer.ln_f
            self.lm_head = nn.Linear(*reversed(model.lm_head.weight.shape), bias=False)  # untied across stages
            self.lm_head.weight.data.copy_(model.lm_head.weight.data)

    def forward(self, x):
        if self.first:
            x = self.wte(x) + self.wpe(torch.arange(x.shape[1]))
        for block in self.h.values():
            x = block(x)
        return self.lm_head(self.ln_f(x)) if self.last else x


def worker(rank: int, world: int, init: str, out: str) -> None:
    import faulthandler

    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    faulthandler.dump_traceback_later(120, exit=True)  # a hang prints every stack and ends the worker
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    module = Stage(gpt(n_layer=4), rank, world)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    try:
        Monitor(module, optimizer=optimizer, log_dir=None)
        refused = None
    except RuntimeError as err:
        refused = str(err)
    stage = PipelineStage(module, rank, world, torch.device("cpu"))
    schedule = ScheduleGPipe(
        stage, n_microbatches=2, loss_fn=lambda y, t: F.cross_entropy(y.flatten(0, 1), t.flatten())
    )
    gen = torch.Generator().manual_seed(0)
    steps = 0
    for _ in range(2):
        ids = torch.randint(1, 64, (4, 48), generator=gen)
        if rank == 0:
            schedule.step(ids)
        else:
            schedule.step(target=ids.roll(-1, dims=1), losses=[])
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
    Path(out, f"rank{rank}.json").write_text(json.dumps({"refused": refused, "steps": steps}))
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    spawn(worker, 2, sys.argv[1])
