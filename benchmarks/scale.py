"""The monitor's cost at three model shapes: one training step, and each probe's extra time and peak memory.

    python benchmarks/scale.py                          # demo, 6 x 384, GPT-2 124M (about an hour on 2 cores)
    python benchmarks/scale.py --shapes demo 6x384 --steps 5
    python benchmarks/scale.py --shapes gpt2-124M --rows defaults Logits Collapse Rank all --steps 3
    python benchmarks/scale.py --shapes 6x384 --rows LogitsProbe shadow --steps 5    # + the compiled shadow row

For each shape a plain PyTorch loop (AdamW) trains on random tokens; each row is a fresh ``Monitor`` with one probe
(or the defaults, or every probe) scheduled on every step, so each measured step pays one evaluation. "extra ms"
is the median difference between a monitored step and the plain step just before it (interleaved, so drift
cancels; "share" divides it by the median plain step); "own ms" is the median host time spent inside the
monitor's step methods and probe updates (its hooks, the streaming updates fed after the forward, the evaluation:
the same work, without the noise of a whole step; on a GPU, launch time only), "own share" divides it by the
plain step, and "at every(50)" spreads that share over the default schedule's 50 steps (the monitor's share of a
run at its defaults); "extra MiB" is the
peak of the bytes that operators allocate during one monitored step minus that of one plain step
(``tests/helpers/memory.py``'s accounting, which counts every storage, so it works on CPU; on a GPU, ``--device cuda``,
the CUDA allocator's peak). Text probes read 8 rows of the step's batch. The shadow row (asked for with
``--rows shadow``) trains ``torch.compile(model)`` (``--compile-backend``, inductor by default) in both columns: its
LogitsProbe measures 8 rows through an eager ``no_grad`` forward before the optimizer step, against the compiled step.

``--thread`` prints the training thread's table instead, one line per shape, default probes on every step
(``budget=None``), ``--steps`` monitored steps interleaved with as many plain ones (medians): the plain step; the
bare forwards of the probe batches (the physical floor); the measures themselves (the probes' forwards with their
hooks, and their updates); the monitor's own time on the training thread and what it spends beyond the measures,
without and with heatmaps; each monitored step minus the plain step before it; the share at the defaults
(``every(50)``, heatmaps every 5th evaluation); with ``--ranks N``, how long rank 1 of a 2-process gloo DDP run
waits per heatmap step of rank 0 (two runs of N steps, heatmaps at every evaluation or never:
``benchmarks/rank_wait.py``); with ``--profile N``, cProfile of N monitored steps::

    python benchmarks/scale.py --thread --steps 20 --ranks 16

``--budget-steps N`` then trains N more steps under a default ``Monitor()`` (default probes, ``every(50)``, the
default 1 % budget) and prints the steps it evaluated and the share of wall time it measured itself
(``mechmon/monitor/overhead_frac``: its evaluations after the first, over the run's elapsed time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rank_wait import rank_one_waits  # noqa: E402
from shapes import SHAPES  # noqa: E402
from training_thread import COLUMNS, SHARE, OwnTime, profile, share_at_defaults, thread_times  # noqa: E402

from mechmon import (  # noqa: E402
    AttentionEntropyProbe,
    AttentionLogitProbe,
    AttentionSinkProbe,
    CollapseProbe,
    InductionProbe,
    LogitsProbe,
    MassiveActivationProbe,
    Monitor,
    NLMProbe,
    PrefixMatchingProbe,
    RankProbe,
    WeightsProbe,
)
from tests.helpers.memory import LiveBytes  # noqa: E402


def probe_sets(batch: torch.Tensor) -> dict[str, list]:
    """Rows of the table: the defaults, each probe alone, every probe together."""
    text = batch[:8]

    def each():
        return {
            "InductionProbe": [InductionProbe()],
            "PrefixMatchingProbe": [PrefixMatchingProbe()],
            "LogitsProbe": [LogitsProbe()],
            "WeightsProbe": [WeightsProbe()],
            "NLMProbe": [NLMProbe()],
            "CollapseProbe": [CollapseProbe(text)],
            "RankProbe": [RankProbe(text)],
            "MassiveActivationProbe": [MassiveActivationProbe(text)],
            "AttentionLogitProbe": [AttentionLogitProbe(text)],
            "AttentionEntropyProbe": [AttentionEntropyProbe(text)],
            "AttentionSinkProbe": [AttentionSinkProbe(text)],
        }

    rows = {"defaults (induction + logits)": None, **each()}
    rows["all of the above"] = [p for probes in each().values() for p in probes]
    return rows


def train_step(model, optimizer, batch) -> None:
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, so the memory rows compare like with like


def clock(device: torch.device) -> float:
    """``perf_counter`` after the device's queued work (a benchmark may sync; the monitor never does here)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def paired_times(model, optimizer, batch, steps: int, monitor) -> tuple[list[float], list[float], list[float]]:
    """Plain and monitored step times, interleaved (plain, monitored, ...) so that drift cancels, and own times."""
    plain, watched, own = [], [], []
    timer = OwnTime(monitor)
    for step in range(1, steps + 2):  # the first pair warms up
        start = clock(batch.device)
        train_step(model, optimizer, batch)
        middle = clock(batch.device)
        timer.seconds = 0.0
        with monitor.step(step, batch):
            train_step(model, optimizer, batch)
        end = clock(batch.device)
        if step > 1:
            plain.append(middle - start)
            watched.append(end - middle)
            own.append(timer.seconds)
    return plain, watched, own


def peak_bytes(model, optimizer, batch, monitor=None, step: int = 10_000) -> int:
    """Peak bytes one step allocates: the CUDA allocator's peak on a GPU, else ``tests/helpers/memory.py``'s count."""

    def one():
        if monitor is None:
            train_step(model, optimizer, batch)
        else:
            with monitor.step(step, batch):
                train_step(model, optimizer, batch)

    if batch.device.type == "cuda":
        torch.cuda.synchronize(batch.device)
        torch.cuda.reset_peak_memory_stats(batch.device)
        before = torch.cuda.memory_allocated(batch.device)
        one()
        torch.cuda.synchronize(batch.device)
        return torch.cuda.max_memory_allocated(batch.device) - before
    known = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
    known += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    with LiveBytes(known) as live:
        one()
    return live.peak


def default_run(model, optimizer, batch, steps: int) -> None:
    """``steps`` steps under a default ``Monitor()``: the steps it evaluated, the share it measured, its own time."""
    monitor = Monitor(model, optimizer=optimizer, log_dir=None, console=False)
    timer = OwnTime(monitor)
    evaluated: list[tuple[int, float, float]] = []

    def listen(values, step):
        if "mechmon/monitor/overhead_frac" in values:
            evaluated.append((step, values["mechmon/monitor/overhead_frac"], values["mechmon/monitor/stride"]))

    monitor.publisher.listeners.append(listen)
    start = clock(batch.device)
    for step in range(1, steps + 1):
        with monitor.step(step, batch):
            train_step(model, optimizer, batch)
    wall = clock(batch.device) - start
    monitor.close()
    step, share, stride = evaluated[-1]
    print(f"default Monitor(), {steps} steps in {wall:.0f} s: evaluated at steps {[s for s, _, _ in evaluated]}")
    print(f"  overhead_frac logged at step {step}: {share:.2%} (budget 1 %; up to the previous evaluation)")
    print(f"  stride {stride:.0f}; own time over wall time: {timer.seconds / wall:.2%} (the first evaluation too)")


def row(label: str, model, optimizer, batch, probes, steps: int, base_peak: int | None) -> None:
    """One line of the table: ``probes`` on every step of ``model`` (``base_peak``: a plain step's peak bytes)."""
    monitor = Monitor(model, optimizer=optimizer, probes=probes, schedule=1, log_dir=None, console=False)
    plain, watched, own = paired_times(model, optimizer, batch, steps, monitor)
    step, own = statistics.median(plain), statistics.median(own)
    extra = statistics.median(w - p for p, w in zip(plain, watched, strict=True))
    base_peak = peak_bytes(model, optimizer, batch) if base_peak is None else base_peak
    memory = (peak_bytes(model, optimizer, batch, monitor) - base_peak) / 2**20
    monitor.close()
    share = extra / step
    print(
        f"{label:<32} {step * 1000:>8.0f} {extra * 1000:>9.0f} {share:>7.1%} {own * 1000:>7.0f} "
        f"{own / step:>9.1%} {own / step / 50:>12.2%} {memory:>10.0f}"
    )


def measure(
    name: str,
    steps: int,
    only: list[str] | None,
    device: str = "cpu",
    budget_steps: int = 0,
    compile_backend: str = "inductor",
) -> None:
    config, rows, ctx = SHAPES[name]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(1, config.vocab_size, (rows, ctx), generator=torch.Generator().manual_seed(0)).to(device)
    train_step(model, optimizer, batch)  # warm-up
    start = clock(batch.device)
    train_step(model, optimizer, batch)
    base = clock(batch.device) - start
    base_peak = peak_bytes(model, optimizer, batch)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"\n{name}: {params:.1f}M parameters, batch {rows} x {ctx}: training step {base * 1000:.0f} ms")
    print(f"{'probes':<32} {'step ms':>8} {'extra ms':>9} {'share':>7} {'own ms':>7} {'own share':>9} "
          f"{'at every(50)':>12} {'extra MiB':>10}")  # fmt: skip
    for label, probes in probe_sets(batch).items():
        if not only or any(r.lower() in label.lower() for r in only):
            row(label, model, optimizer, batch, probes, steps, base_peak)
    if only and "shadow" in [r.lower() for r in only]:
        torch._dynamo.reset()
        trained = torch.compile(model, backend=compile_backend)
        train_step(trained, optimizer, batch)  # compiles
        row(f"LogitsProbe, shadow ({compile_backend})", trained, optimizer, batch, [LogitsProbe()], steps, None)
    if budget_steps:
        default_run(model, optimizer, batch, budget_steps)


def thread_table(name: str, steps: int, ranks: int, port: int, profile_steps: int = 0) -> None:
    """The training thread's side of one shape: the limit, the monitor's time, its share, and rank 1's wait."""
    config, rows, ctx = SHAPES[name]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(1, config.vocab_size, (rows, ctx), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        t = thread_times(model, optimizer, batch, steps, folder)
        if profile_steps:
            profile(model, optimizer, batch, monitor_kwargs={"log_dir": folder}, steps=profile_steps)
    line = f"{name:<10}" + "".join(f" {t.get(key, float('nan')) * 1e3:>9.2f}" for _, key in COLUMNS)
    line += f" {share_at_defaults(t):>9.2%}"
    if ranks:
        image, plain = rank_one_waits(ranks, port, name)
        line += f" {(image - plain) * 1e3:>9.1f}"
    print(line, flush=True)


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--steps", type=int, default=3, help="measured steps per row (after one warm-up)")
    p.add_argument("--rows", nargs="+", help="only rows whose label contains one of these (e.g. defaults Logits all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (memory then from the CUDA allocator's peak)")
    p.add_argument("--budget-steps", type=int, default=0, help="then this many steps under a default Monitor()")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the shadow row")
    p.add_argument("--thread", action="store_true", help="the training thread's table instead (default probes)")
    p.add_argument("--ranks", type=int, default=0, help="with --thread: rank 1's wait over this many 2-rank steps")
    p.add_argument("--port", type=int, default=29517, help="with --ranks: the gloo rendezvous port")
    p.add_argument("--profile", type=int, default=0, help="with --thread: cProfile this many monitored steps a shape")
    args = p.parse_args()
    if args.thread:
        print("ms per step (medians); columns:")
        for n, (label, _) in enumerate(COLUMNS, 1):
            print(f"  {n}. {label}")
        print(f"  {len(COLUMNS) + 1}. {SHARE}")
        if args.ranks:
            print(f"  {len(COLUMNS) + 2}. rank 1's wait per heatmap step of rank 0, 2 processes (ms)")
        print(f"{'shape':<10}" + "".join(f" {n:>9}" for n in range(1, len(COLUMNS) + 2 + bool(args.ranks))))
        for name in args.shapes:
            thread_table(name, args.steps, args.ranks, args.port, args.profile)
        return
    for name in args.shapes:
        measure(name, args.steps, args.rows, args.device, args.budget_steps, args.compile_backend)


if __name__ == "__main__":
    main()
