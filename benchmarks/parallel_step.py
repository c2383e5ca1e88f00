"""The cost of a scheduled step under each parallelism, on this CPU (gloo): one process, DDP, TP, FSDP2 x TP, PP.

    python benchmarks/parallel_step.py                     # every mode, 12 steps
    python benchmarks/parallel_step.py --modes tp --steps 20
    python benchmarks/parallel_step.py --modes gpt pp      # pipeline parallel against its own one-process baseline

A tiny Llama (2 layers, width 64, 4 heads, vocabulary 256; 2 x 128 tokens per data-parallel replica and step) is
trained with every built-in probe that applies (the ICL score over 100 tokens) on every other step (``every(2)``,
no budget). ``ddp``: 2 ranks; ``tp``: tensor parallel over 2 ranks (heads, MLP and a vocabulary-parallel head split
by ``parallelize_module``, ``loss_parallel``); ``fsdp_tp``: ``fully_shard`` x tensor parallel on a 2 x 2 mesh.
``pp``: a 4-layer nanoGPT (width 64, vocabulary 256, the same tokens) in 2 pipeline stages (``ScheduleGPipe``, 2
micro-batches, ``Monitor(pipeline=stage)``); ``gpt``: the same model in one process. These two leave out the probes
that are off under pipeline parallel (logits, repetition).
Rank 0 prints the median wall time of the steps where no probe is due, of the scheduled steps, and of mechmon's
scheduled-step stages alone (probe forwards, reduction, transfer, publishing), in ms, over the steps after the
first two. Ranks share the machine's cores: compare modes with care, and a mode's scheduled and unscheduled steps.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.ranks import spawn  # noqa: E402

WORLD = {"one": 1, "ddp": 2, "tp": 2, "fsdp_tp": 4, "gpt": 1, "pp": 2}
STAGED = ("gpt", "pp")  # the nanoGPT modes


def shard(model, mode: str) -> tuple[torch.nn.Module, int, contextlib.AbstractContextManager]:
    """The model as ``mode`` wraps it, this rank's data-parallel replica, the loss context."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import loss_parallel

    from tests.helpers.archs import tensor_parallel_llama

    if mode == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model), dist.get_rank(), contextlib.nullcontext
    if mode == "tp":
        tensor_parallel_llama(model, init_device_mesh("cpu", (2,), mesh_dim_names=("tp",)))
        return model, 0, loss_parallel
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    tensor_parallel_llama(model, mesh["tp"])
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return model, mesh["dp"].get_local_rank(), loss_parallel


def loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def llama(mode: str) -> tuple[torch.nn.Module, int, Callable[[torch.Tensor], None], dict]:
    """The tiny Llama as ``mode`` wraps it, this rank's replica, one training forward and backward, Monitor kwargs."""
    from tests.helpers.archs import tiny_model

    model, replica, loss_context = tiny_model("llama").train(), 0, contextlib.nullcontext
    if mode != "one":
        model, replica, loss_context = shard(model, mode)

    def forward_backward(ids: torch.Tensor) -> None:
        logits = model(input_ids=ids).logits
        with loss_context():
            loss(logits, ids).backward()

    return model, replica, forward_backward, {}


def staged(mode: str, rank: int, world: int) -> tuple[torch.nn.Module, int, Callable[[torch.Tensor], None], dict]:
    """The nanoGPT in ``world`` stages (``gpt``: one, no pipeline), as :func:`llama`."""
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    from tests.helpers.nanogpt import Stage, gpt

    module = Stage(gpt(n_layer=4, n_embd=64, vocab_size=256, block_size=128), rank, world).train()
    if mode == "gpt":
        return module, 0, lambda ids: loss(module(ids), ids).backward(), {}
    stage = PipelineStage(module, rank, world, torch.device("cpu"))
    schedule = ScheduleGPipe(stage, n_microbatches=2, loss_fn=loss)

    def forward_backward(ids: torch.Tensor) -> None:
        schedule.step(ids) if rank == 0 else schedule.step(target=ids, losses=[])

    return module, 0, forward_backward, {"pipeline": stage}


def worker(rank: int, world: int, init: str, mode: str, steps: int, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    from mechmon import Monitor, every
    from mechmon.engine.pipeline import StepPipeline
    from mechmon.registry import get_probe, list_probes

    stages: list[float] = []
    run = StepPipeline.run

    def timed(self, record):
        started = time.perf_counter()
        run(self, record)
        stages.append(1e3 * (time.perf_counter() - started))

    StepPipeline.run = timed
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    model, replica, forward_backward, kwargs = staged(mode, rank, world) if mode in STAGED else llama(mode)
    off = ("apm", "moe_pathway", "moe_routing", "icl") + (("logits", "repetition") if mode in STAGED else ())
    probes = [get_probe(n)() for n in list_probes() if n not in off] + [get_probe("icl")(early=10, late=100)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer=optimizer, probes=probes, schedule=every(2), budget=None, log_dir=None,
                      console=False, **kwargs)  # fmt: skip
    gen = torch.Generator().manual_seed(replica)
    times: dict[bool, list[float]] = {True: [], False: []}
    for step in range(1, steps + 1):
        ids = torch.randint(1, 256, (2, 128), generator=gen)
        started = time.perf_counter()
        with monitor.step(step, ids):
            forward_backward(ids)
            optimizer.step()
            optimizer.zero_grad()
        if step > 2:
            times[step % 2 == 0].append(1e3 * (time.perf_counter() - started))
    monitor.close()
    if rank == 0:
        out.put((mode, world, statistics.median(times[False]), statistics.median(times[True]),
                 statistics.median(stages[1:])))  # fmt: skip
    if world > 1:
        dist.destroy_process_group()


def measure(mode: str, steps: int) -> tuple:
    """Rank 0's row of the table for ``mode``."""
    queue = mp.get_context("spawn").Queue()
    spawn(worker, WORLD[mode], mode, steps, queue)
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=list(WORLD), default=list(WORLD))
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    print(f"{'mode':>8} {'world':>5} {'no probe ms':>11} {'scheduled ms':>12} {'mechmon ms':>10}")
    for mode in args.modes:
        name, world, plain, scheduled, stages = measure(mode, args.steps)
        print(f"{name:>8} {world:>5} {plain:>11.1f} {scheduled:>12.1f} {stages:>10.1f}")


if __name__ == "__main__":
    main()
