"""How long rank 1 waits for rank 0 after an image step, in a 2-process gloo DDP run.

    python benchmarks/rank_wait.py                   # 2-layer GPT-2, width 128, 8 x 128 tokens a rank, 30 steps
    python benchmarks/rank_wait.py --shape 6x384 --steps 16   # a shape of benchmarks/shapes.py

Only rank 0 writes (and, on image steps, draws the heatmaps); every rank runs the same probes and the one
reduction. Rank 1's time in the next step's backward (where DDP's gradient all-reduce waits for rank 0) is printed
for the steps right after an image step and for the others (medians, ms); the difference is rank 0's stall of the
whole job. Runs against whichever ``mechmon`` is importable (``PYTHONPATH=<another checkout>`` measures that one).
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


def worker(rank: int, world: int, port: int, steps: int, folder: str, out: mp.Queue, shape: str | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from mechmon import Monitor

    torch.manual_seed(0)
    model, rows, ctx = build(shape)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    monitor = Monitor(ddp, optimizer=optimizer, schedule=1, budget=None, log_dir=folder, console=False)
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
        after_image = [backward[s + 1] for s in range(2, steps) if monitor.config.image_schedule(s)]
        others = [backward[s + 1] for s in range(2, steps) if not monitor.config.image_schedule(s)]
        out.put((after_image, others))
    dist.destroy_process_group()


def rank_one_waits(steps: int, port: int, shape: str | None = None) -> tuple[float, float, int]:
    """Rank 1's median backward (s) after image steps and after the others, and the image steps counted."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as folder:
        procs = [ctx.Process(target=worker, args=(r, 2, port, steps, folder, out, shape)) for r in range(2)]
        for proc in procs:
            proc.start()
        after_image, others = out.get(timeout=1800)
        for proc in procs:
            proc.join(60)
    if any(proc.exitcode != 0 for proc in procs):
        sys.exit(f"a rank failed: exit codes {[proc.exitcode for proc in procs]}")
    return statistics.median(after_image), statistics.median(others), len(after_image)


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--port", type=int, default=29517)
    p.add_argument("--shape", help="a shape of benchmarks/shapes.py (default: GPT-2 2 x 128 on 8 x 128 tokens)")
    args = p.parse_args()
    image, plain, count = rank_one_waits(args.steps, args.port, args.shape)
    print(
        f"{args.shape or 'GPT-2 2 x 128'}: 2 ranks (gloo, 1 thread each), {args.steps} steps, heatmaps every 5th "
        "evaluation"
    )
    print(f"  rank 1's backward after an image step   {image * 1e3:7.1f} ms  ({count} steps)")
    print(f"  rank 1's backward after the other steps {plain * 1e3:7.1f} ms")
    print(f"  rank 1 waits for rank 0's image step    {(image - plain) * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
