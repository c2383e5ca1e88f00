"""What each rank sends in mechmon's reduction, per scheduled step, at world sizes 1, 2 and 4 (gloo, this CPU).

    python benchmarks/reduction_size.py                  # worlds 1 2 4, 6 steps
    python benchmarks/reduction_size.py --worlds 1 2 4 8 --steps 12

Each world is a real DDP run of a 2-layer GPT-2 (width 128, 4 x 128 tokens a rank) watched by ``mechmon.Monitor``
with every built-in probe that applies to it (all but the MoE ones and ``apm``, which needs a target; the ICL score
over 100 tokens) at every step. The collectives issued from mechmon's own files are counted with their size;
the table prints, per scheduled step: collectives, the bytes each rank puts in them and the bytes their results
hold on each rank, the numbers the states hold, the probes, and the median wall time of the reduction stage (ms,
after a barrier: the reduction's own time, not a slower rank's lag; 4 ranks share the cores). The last rows project to
1,024 ranks: the all_reduce buffers stay the size measured, where the former layout (one ``all_gather`` of the
packed states and a failure flag per probe) gathered ``world x n`` float64 on every rank.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.append(str(Path(__file__).resolve().parents[1]))  # a mechmon on PYTHONPATH stays first
from tests.helpers.ranks import spawn  # noqa: E402

PACKAGE = str(Path(__import__("mechmon").__file__).parent)


def worker(rank: int, world: int, init: str, steps: int, folder: str, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from mechmon import Monitor
    from mechmon.engine.pipeline import StepPipeline
    from mechmon.registry import get_probe, list_probes

    calls: list[tuple[str, int, int]] = []  # name, bytes sent, bytes it leaves on each rank
    reduce_ms: list[float] = []
    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast"):
        real = getattr(dist, name)

        def counted(tensor, *args, _real=real, _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(PACKAGE):
                t = tensor if isinstance(tensor, torch.Tensor) else args[0]  # all_gather(outputs, input)
                sent = t.numel() * t.element_size()
                calls.append((_name, sent, sent * (world if _name.startswith("all_gather") else 1)))
            return _real(tensor, *args, **kwargs)

        setattr(dist, name, counted)
    timed = StepPipeline.reduce

    def reduce(self, record):
        if world > 1:
            dist.barrier()  # the ranks line up first, so the time is the reduction's, not a slower rank's lag
        started = time.perf_counter()
        try:
            return timed(self, record)
        finally:
            reduce_ms.append(1e3 * (time.perf_counter() - started))

    StepPipeline.reduce = reduce
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=128, n_embd=128, n_layer=2, n_head=4))
    ddp = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    names = [n for n in list_probes() if n not in ("apm", "moe_pathway", "moe_routing", "icl")]
    probes = [get_probe(name)() for name in names] + [get_probe("icl")(early=10, late=100)]
    monitor = Monitor(ddp, optimizer=optimizer, probes=probes, schedule=1, budget=None, log_dir=folder, console=False)
    data = torch.randint(1, 512, (4, 128), generator=torch.Generator().manual_seed(rank))
    per_step: list[list[tuple[str, int, int]]] = []
    for step in range(1, steps + 1):
        before = len(calls)
        with monitor.step(step, data):
            ddp(input_ids=data, labels=data).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        per_step.append(calls[before:])
    states = sum(t.numel() for p in monitor.probes for t, spec in p.states().values() if not spec.replicated)
    monitor.close()
    if rank == 0:
        last = per_step[-1]  # a steady scheduled step (step 1 also agrees on the rows taken from training)
        assert last or world == 1, "the last step was not evaluated"
        out.put((world, len(last), sum(c[1] for c in last), sum(c[2] for c in last), states, len(monitor.probes),
                 statistics.median(reduce_ms[1:] or reduce_ms)))  # fmt: skip
    dist.destroy_process_group()


def measure(world: int, steps: int) -> tuple:
    """Rank 0's row of the table for ``world`` ranks."""
    queue = mp.get_context("spawn").Queue()
    with tempfile.TemporaryDirectory() as folder:
        spawn(worker, world, steps, folder, queue)
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    print(
        f"{'world':>6} {'collectives':>11} {'sent B':>10} {'result B':>10} {'states':>7} {'probes':>6} {'reduce ms':>9}"
    )
    rows = [measure(world, args.steps) for world in args.worlds]
    for world, collectives, sent, result, states, probes, ms in rows:
        print(f"{world:>6} {collectives:>11} {sent:>6} {result:>8} {states:>6} {probes:>6} {ms:>9.2f}")
    sent = max(r[2] for r in rows)
    n_old = rows[-1][4] + rows[-1][5]  # the states and a flag per probe (no budget)
    print(f"projection at 1,024 ranks: all_reduce buffers {sent:,} bytes a rank (as measured at any world > 1);")
    print(f"  the former all_gather: {n_old:,} float64 a rank -> {1024 * n_old * 8:,} bytes gathered on every rank")


if __name__ == "__main__":
    main()
