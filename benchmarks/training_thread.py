"""What a scheduled step costs the training thread: the probe forwards, and what the monitor adds around them.

    python benchmarks/training_thread.py                     # 2-layer GPT-2, width 128, 8 x 128 tokens, 40 steps
    python benchmarks/training_thread.py --profile 20        # + cProfile of 20 monitored steps, top entries

A plain loop (AdamW) on random tokens; the default ``Monitor()`` probes (induction + logits) with ``schedule=1``,
``budget=None`` (every step is scheduled; heatmaps every 5th evaluation, the default), no console. Steps alternate
plain / monitored so drift cancels. Printed, in ms per step (medians):

- ``plain``: a training step without the monitor;
- ``monitored``: the same step with an evaluation after it, on steps without and with heatmaps;
- ``on the training thread``: monitored minus plain, and the probe forwards alone (the same ``no_grad`` forwards
  of the induction and prefix-matching batches, timed by themselves: the floor);
- the writer thread's time per image step (drawing the heatmaps, off the training thread).

With ``--profile N``: cProfile over N monitored steps, the top entries by cumulative time whose file is mechmon's.
Runs against whichever ``mechmon`` is importable (``PYTHONPATH=<another checkout>`` measures that one).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from mechmon import Monitor


def build(width: int, layers: int, ctx: int):
    config = GPT2Config(vocab_size=512, n_positions=ctx, n_embd=width, n_layer=layers, n_head=4)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def step(model, optimizer, batch) -> None:
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def probe_forwards(model, monitor) -> float:
    """Seconds of the default probes' own forwards alone (their fixed batches, no_grad, eval mode)."""
    batches = [p.probe_batch for p in monitor.probes if getattr(p, "probe_batch", None) is not None]
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch)
    seconds = time.perf_counter() - start
    model.train()
    return seconds


def thread_times(model, optimizer, data: torch.Tensor, steps: int, folder: str) -> dict:
    """Medians in seconds: the plain step; the monitor's extra time on the training thread per scheduled step
    (each monitored step minus the plain step before it), without and with heatmaps (default probes,
    ``schedule=1``, ``budget=None``); the probe forwards alone; close().
    """
    monitor = Monitor(model, optimizer=optimizer, schedule=1, budget=None, log_dir=folder, console=False)
    step(model, optimizer, data)  # warm-up
    plain, with_images, without = [], [], []
    for n in range(1, steps + 1):  # interleaved, plain then monitored, so drift cancels
        start = time.perf_counter()
        step(model, optimizer, data)
        middle = time.perf_counter()
        with monitor.step(n, data):
            step(model, optimizer, data)
        end = time.perf_counter()
        if n > 1:  # each monitored step against the plain step just before it
            plain.append(middle - start)
            (with_images if monitor.config.image_schedule(n) else without).append((end - middle) - (middle - start))
    forwards = statistics.median(probe_forwards(model, monitor) for _ in range(5))
    started = time.perf_counter()
    monitor.close()
    base = statistics.median(plain)
    extra = {label: (statistics.median(t) if t else float("nan")) for label, t in
             (("without heatmaps", without), ("with heatmaps", with_images))}  # fmt: skip
    return {"plain": base, **extra, "without heatmaps steps": len(without), "with heatmaps steps": len(with_images),
            "forwards": forwards, "close": time.perf_counter() - started}  # fmt: skip


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="monitored steps (as many plain ones, interleaved)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--profile", type=int, default=0, help="then cProfile this many monitored steps")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, optimizer = build(args.width, args.layers, args.ctx)
    data = torch.randint(1, 512, (args.rows, args.ctx), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        times = thread_times(model, optimizer, data, args.steps, folder)
        print(f"GPT-2 {args.layers} x {args.width}, batch {args.rows} x {args.ctx}, {args.steps} monitored steps")
        print(f"  plain step                                  {times['plain'] * 1e3:8.1f} ms")
        for label in ("without heatmaps", "with heatmaps"):
            if times[label]:
                print(f"  monitored, {label:<18} ({times[label + ' steps']:>2} steps) "
                      f"{(times['plain'] + times[label]) * 1e3:8.1f} ms   on the training thread "
                      f"{times[label] * 1e3:7.1f} ms")  # fmt: skip
        print(f"  probe forwards alone (the floor)            {times['forwards'] * 1e3:8.1f} ms")
        print(f"  close() (drains the writer)                 {times['close'] * 1e3:8.1f} ms")
        if args.profile:
            profile(model, optimizer, data, monitor_kwargs={"log_dir": folder}, steps=args.profile)


def profile(model, optimizer, data, monitor_kwargs: dict, steps: int, top: int = 15) -> None:
    """cProfile ``steps`` monitored steps; print mechmon's top entries by cumulative time (ms)."""
    monitor = Monitor(model, optimizer=optimizer, schedule=1, budget=None, console=False, **monitor_kwargs)
    profiler = cProfile.Profile()
    profiler.enable()
    for n in range(1, steps + 1):
        with monitor.step(n, data):
            step(model, optimizer, data)
    profiler.disable()
    monitor.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
    stats.print_stats(r"mechmon", top)
    print(f"\ncProfile of {steps} monitored steps (training thread), mechmon's top entries by cumulative time:")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[-2200:])


if __name__ == "__main__":
    main()
