"""Overhead of MechMonitor on the stdlib demo's model and data (examples/stdlib_induction.py).

    python benchmarks/overhead.py --steps 400 --every 50 --repeats 2
    python benchmarks/overhead.py --steps 200 --every 1 --repeats 1 --streaming-only   # streaming cost per step

Trains the same seeded run with and without the monitor (alternating, best of ``repeats``) and prints steps/s,
the wall-time ratio, and the time spent inside the monitor's hooks per scheduled and per unscheduled step.
"""

import argparse
import time
from tempfile import TemporaryDirectory

import lightning.pytorch as pl
from examples_module import load_example
from torch.utils.data import DataLoader

from mechmon import InductionProbe, LogitsProbe, MechMonitor, NLMProbe, WeightsProbe

demo = load_example("stdlib_induction")


class TimedMonitor(MechMonitor):
    """Accumulates the time spent in the per-step hooks, split by whether the step was scheduled.

    Excludes the forward hook that copies nothing but a reference to the logits (timed only by the wall ratio).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seconds = {True: 0.0, False: 0.0}
        self.count = {True: 0, False: 0}

    def on_train_batch_start(self, trainer, *args):
        t0 = time.perf_counter()
        super().on_train_batch_start(trainer, *args)
        self._t_start = time.perf_counter() - t0

    def on_before_optimizer_step(self, trainer, *args):
        t0 = time.perf_counter()
        super().on_before_optimizer_step(trainer, *args)
        self._t_start += time.perf_counter() - t0

    def on_train_batch_end(self, trainer, *args):
        t0 = time.perf_counter()
        super().on_train_batch_end(trainer, *args)
        scheduled = self.engine.last_step == trainer.global_step
        self.seconds[scheduled] += time.perf_counter() - t0 + self._t_start
        self.count[scheduled] += 1


def make_probes(streaming_only: bool) -> list:
    if streaming_only:  # the numerical-stability measures: no extra forward
        return [LogitsProbe(), WeightsProbe(), NLMProbe()]
    return [InductionProbe(), LogitsProbe()]


def fit(
    corpus, steps: int, every: int, monitor: bool, out: str, streaming_only: bool
) -> tuple[float, TimedMonitor | None]:
    pl.seed_everything(0, verbose=False)
    data = DataLoader(demo.Batches(corpus, 32, 128, 0.5, 0), batch_size=None)
    mon = TimedMonitor(probes=make_probes(streaming_only), schedule=every) if monitor else None
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.TensorBoardLogger(out),
        callbacks=[mon] if mon else [],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=every,
    )
    model = demo.ByteLM(2, 128, 4, 128, 1e-3)
    t0 = time.perf_counter()
    trainer.fit(model, data)
    return time.perf_counter() - t0, mon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--streaming-only", action="store_true", help="LogitsProbe, WeightsProbe, NLMProbe only")
    args = parser.parse_args()
    corpus = demo.read_corpus(None, max_bytes=16_000_000)
    base, timed, mon = [], [], None
    with TemporaryDirectory() as out:
        for _ in range(args.repeats):
            base.append(fit(corpus, args.steps, args.every, False, out, args.streaming_only)[0])
            seconds, mon = fit(corpus, args.steps, args.every, True, out, args.streaming_only)
            timed.append(seconds)
    b, t = min(base), min(timed)
    print(f"without MechMonitor: {b:.1f} s ({args.steps / b:.2f} steps/s)")
    print(f"with MechMonitor (every {args.every} steps): {t:.1f} s ({args.steps / t:.2f} steps/s)")
    print(f"overhead ratio (best of {args.repeats}): {t / b:.3f}")
    for scheduled in (True, False):
        n = max(mon.count[scheduled], 1)
        label = "scheduled" if scheduled else "unscheduled"
        print(f"monitor hooks per {label} step: {1e3 * mon.seconds[scheduled] / n:.3f} ms over {n} steps")


if __name__ == "__main__":
    main()
