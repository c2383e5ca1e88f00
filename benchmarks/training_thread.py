"""What a scheduled step costs the training thread: the probe forwards, and what the monitor adds around them.

    python benchmarks/training_thread.py                     # 2-layer GPT-2, width 128, 8 x 128 tokens, 40 steps
    python benchmarks/training_thread.py --profile 20        # + cProfile of 20 monitored steps, top entries

A plain loop (AdamW) on random tokens; the default ``Monitor()`` probes (induction + logits) with ``schedule=1``,
``budget=None`` (every step is scheduled; heatmaps every 5th evaluation, the default), no console. Steps alternate
plain / monitored so drift cancels. Printed, in ms per step (medians; :data:`COLUMNS`):

- the plain step; the bare forwards of the probe batches (no hooks, no key-value cache: the physical floor);
- the measures: the probes' forwards as they run them (eager attention, their hooks reducing the captures) and
  their ``update`` calls (the logits probe's on the training logits);
- the monitor's own time on the training thread (inside its step methods), and what it spends beyond the measures
  (compute, the reduction, the one transfer, the rules, handing the writes to the writer thread), without and with
  heatmaps;
- each monitored step minus the plain step before it, without and with heatmaps, and from them the share of wall
  time at the defaults (``every(50)``, heatmaps every 5th evaluation);
- one update of the live console panel (80 x 24), which a scheduled step adds when the panel is on.

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
from rich.console import Console
from transformers import GPT2Config, GPT2LMHeadModel

from mechmon import Monitor
from mechmon.console import ConsoleView


class Timer:
    """Host seconds spent inside the methods it wraps (as instance attributes); nested calls count once."""

    def __init__(self) -> None:
        self.seconds, self.depth = 0.0, 0

    def counts(self) -> bool:
        """Whether a call made now is timed (all of them by default)."""
        return True

    def wrap(self, owner, name: str) -> None:
        """Time ``owner.name`` from now on (an instance attribute: the owner's own calls go through it too)."""
        method = getattr(owner, name)

        def timed(*args, **kwargs):
            if self.depth or not self.counts():  # nested, or not counted
                return method(*args, **kwargs)
            start = time.perf_counter()
            self.depth += 1
            try:
                return method(*args, **kwargs)
            finally:
                self.depth -= 1
                self.seconds += time.perf_counter() - start

        setattr(owner, name, timed)


class OwnTime(Timer):
    """Host seconds spent inside the monitor's per-step methods and its probe updates, for one monitor.

    ``_update`` is where the streaming probes are fed, from the forward hook right after the training forward.
    """

    METHODS = ("begin_batch", "end_batch", "before_optimizer_step", "after_optimizer_step", "_update")

    def __init__(self, monitor) -> None:
        super().__init__()
        for name in self.METHODS:
            self.wrap(monitor, name)


class MeasureTime(Timer):
    """Host seconds of the measures themselves inside an :class:`OwnTime`: the model's forwards (with the probes'
    hooks, which reduce the captured tensors) and the probes' ``update`` calls; the rest of the own time is the
    monitor's scaffolding (compute, the reduction, the transfer, the alert rules, handing the writes over).
    """

    def __init__(self, own: OwnTime, model, probes) -> None:
        super().__init__()
        self.own = own
        self.wrap(model, "forward")  # nn.Module.__call__ reads the instance attribute
        for probe in probes:
            self.wrap(probe, "update")

    def counts(self) -> bool:
        """Only inside the monitor's methods (a training forward is not a measure)."""
        return self.own.depth > 0


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
            model(input_ids=batch, use_cache=False)  # as the monitor's forward: no key-value cache built
    seconds = time.perf_counter() - start
    model.train()
    return seconds


def thread_times(model, optimizer, data: torch.Tensor, steps: int, folder: str) -> dict:
    """Medians in seconds over the monitored steps (default probes, ``schedule=1``, ``budget=None``), split by
    whether the step wrote heatmaps (``" images"`` suffix) or not (``" plain"``):

    - ``step``: the plain step; ``extra``: each monitored step minus the plain step before it;
    - ``own``: host time inside the monitor's step methods; ``measures``: of it, the probes' forwards (hooks
      included) and ``update`` calls; ``beyond``: own minus measures, per step (the scaffolding);
    - ``forwards``: the probe batches' bare forwards alone (default attention, no hooks); ``close``: ``close()``.
    """
    monitor = Monitor(model, optimizer=optimizer, schedule=1, budget=None, log_dir=folder, console=False)
    own = OwnTime(monitor)
    measures = MeasureTime(own, model, monitor.probes)
    step(model, optimizer, data)  # warm-up
    forwards = statistics.median(probe_forwards(model, monitor) for _ in range(5))  # alone: no writer draining
    rows: dict[str, list[float]] = {}
    for n in range(1, steps + 1):  # interleaved, plain then monitored, so drift cancels
        start = time.perf_counter()
        step(model, optimizer, data)
        middle = time.perf_counter()
        own.seconds = measures.seconds = 0.0
        with monitor.step(n, data):
            step(model, optimizer, data)
        end = time.perf_counter()
        if n > 1:  # the first evaluation sets the probes up
            kind = "images" if monitor.config.image_schedule(n) else "plain"
            for name, value in (("step", middle - start), ("extra", (end - middle) - (middle - start)),
                                ("own", own.seconds), ("measures", measures.seconds),
                                ("beyond", own.seconds - measures.seconds)):  # fmt: skip
                rows.setdefault(f"{name} {kind}", []).append(value)
    started = time.perf_counter()
    monitor.close()
    closing = time.perf_counter() - started
    console = console_update(monitor.latest)
    out = {name: statistics.median(values) for name, values in rows.items()}
    out["step"] = statistics.median(rows["step plain"] + rows.get("step images", []))
    return {**out, "images": len(rows.get("step images", [])), "plain": len(rows["step plain"]),
            "forwards": forwards, "console": console, "close": closing}  # fmt: skip


def console_update(scalars: dict[str, float], calls: int = 50) -> float:
    """Median seconds of one ``ConsoleView.update`` (what a scheduled step adds on the writing rank's training
    thread with the live panel on): an 80 x 24 terminal, the step's ``scalars``; Rich draws it in its own thread.
    """
    console = Console(file=io.StringIO(), force_terminal=True, width=80, height=24)
    view = ConsoleView(live=True, console=console, headlines=sorted(scalars)[:2])
    times = []
    for step in range(1, calls + 1):
        start = time.perf_counter()
        view.update(step, scalars)
        times.append(time.perf_counter() - start)
    view.stop()
    return statistics.median(times)


COLUMNS = (  # (label, key of thread_times), in ms
    ("plain step", "step"),
    ("bare probe forwards", "forwards"),
    ("the measures (forwards with hooks, updates)", "measures plain"),
    ("monitor's own time, no heatmaps", "own plain"),
    ("monitor's own time, heatmap step", "own images"),
    ("beyond the measures, no heatmaps", "beyond plain"),
    ("beyond the measures, heatmap step", "beyond images"),
    ("step minus plain step, no heatmaps", "extra plain"),
    ("step minus plain step, heatmap step", "extra images"),
    ("the live console panel's update (80 x 24)", "console"),
)


SHARE = "share of wall time at every(50), heatmaps every 5th evaluation (from the step-minus-plain columns)"


def share_at_defaults(times: dict) -> float:
    """The monitor's share of wall time at ``every(50)`` with heatmaps every 5th evaluation (paired extras)."""
    return (4 * times["extra plain"] + times.get("extra images", times["extra plain"])) / 5 / (50 * times["step"])


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
        print(f"GPT-2 {args.layers} x {args.width}, batch {args.rows} x {args.ctx}, {args.steps} monitored steps "
              f"({times['plain']} without heatmaps, {times['images']} with), medians in ms")  # fmt: skip
        for label, key in COLUMNS:
            print(f"  {label:<46} {times.get(key, float('nan')) * 1e3:8.2f}")
        print(f"  {'share at every(50), heatmaps every 5th':<46} {share_at_defaults(times):8.2%}")
        print(f"  {'close() (drains the writer)':<46} {times['close'] * 1e3:8.1f}")
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
