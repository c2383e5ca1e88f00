"""How long rank 1 waits for rank 0's heatmaps, in 2-process gloo DDP runs.

    python benchmarks/rank_wait.py                   # 2-layer GPT-2, width 128, 8 x 128 tokens a rank, 30 steps
    python benchmarks/rank_wait.py --shape 6x384 --steps 16   # a shape of benchmarks/shapes.py

Only rank 0 writes (and draws the heatmaps); every rank runs the same probes and the one reduction, at every step.
Two runs of the same steps: one that writes heatmaps at every evaluation, one that never does. Rank 1's time in
each step's backward (where DDP's gradient all-reduce waits for a rank still busy with the step before) is
printed for both (medians over the steps after the first, ms); the difference is what one heatmap step of rank 0
costs the whole job. Runs against whichever ``mechmon`` is importable (``PYTHONPATH=<another checkout>``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel


def build(shape: str | None):
    """The model, batch rows and context: a shape of ``benchmarks/shapes.py``, or GPT-2 2 x 128 on 8 x 128."""
    if shape is None:
        return GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=128, n_embd=128, n_layer=2, n_head=4)), 8, 128
    from shapes import SHAPES

    config, rows, ctx = SHAPES[shape]
    return AutoModelForCausalLM.from_config(config), rows, ctx


def worker(
    rank: int, world: int, port: int, steps: int, folder: str, out: mp.Queue, shape: str | None, images: bool
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from mechmon import Monitor

    torch.manual_seed(0)
    model, rows, ctx = build(shape)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    monitor = Monitor(
        ddp, optimizer=optimizer, schedule=1, image_schedule=lambda step: images, budget=None, log_dir=folder,
        console=False,
    )  # fmt: skip
    vocab = model.config.vocab_size
    data = torch.randint(1, vocab, (rows, ctx), generator=torch.Generator().manual_seed(rank))
    backward: dict[int, float] = {}
    for step in range(1, steps + 1):
        with monitor.step(step, data):
            loss = ddp(input_ids=data, labels=data).loss
            start = time.perf_counter()
            loss.backward()  # DDP's all-reduce: waits here for a rank still busy with the previous step
            backward[step] = time.perf_counter() - start
            optimizer.step()
            optimizer.zero_grad()
    monitor.close()
    if rank == 1:
        out.put([backward[s] for s in range(3, steps + 1)])  # from the step after the first evaluation's
    dist.destroy_process_group()


def rank_one_backward(steps: int, port: int, shape: str | None, images: bool) -> float:
    """Rank 1's median backward (s) over a 2-process run whose rank 0 writes heatmaps at every step, or never."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as folder:
        args = (2, port, steps, folder, out, shape, images)
        procs = [ctx.Process(target=worker, args=(r, *args)) for r in range(2)]
        for proc in procs:
            proc.start()
        backward = out.get(timeout=1800)
        for proc in procs:
            proc.join(60)
    if any(proc.exitcode != 0 for proc in procs):
        sys.exit(f"a rank failed: exit codes {[proc.exitcode for proc in procs]}")
    return statistics.median(backward)


def rank_one_waits(steps: int, port: int, shape: str | None = None) -> tuple[float, float]:
    """Rank 1's median backward (s) with heatmaps at every evaluation and without any."""
    return rank_one_backward(steps, port, shape, True), rank_one_backward(steps, port + 1, shape, False)


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--port", type=int, default=29517)
    p.add_argument("--shape", help="a shape of benchmarks/shapes.py (default: GPT-2 2 x 128 on 8 x 128 tokens)")
    args = p.parse_args()
    image, plain = rank_one_waits(args.steps, args.port, args.shape)
    print(f"{args.shape or 'GPT-2 2 x 128'}: 2 ranks (gloo, 1 thread each), {args.steps} steps, an evaluation each")
    print(f"  rank 1's backward, heatmaps at every step   {image * 1e3:7.1f} ms")
    print(f"  rank 1's backward, no heatmaps              {plain * 1e3:7.1f} ms")
    print(f"  rank 1 waits per heatmap step of rank 0     {(image - plain) * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
