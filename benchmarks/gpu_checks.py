"""GPU checks in one command: no sync on unscheduled steps, at most one per scheduled step, then the cost table.

    python benchmarks/gpu_checks.py                      # on a machine with a CUDA device
    python benchmarks/gpu_checks.py --shape 6x384 --table-shapes demo 6x384 gpt2-124M

1. The training step alone runs under ``torch.cuda.set_sync_debug_mode("error")`` (so that what follows measures
   mechmon, not the model). Then, with a ``Monitor`` (the default probes plus the three streaming probes, every 3rd
   step), each unscheduled step runs under ``"error"`` and each scheduled step under ``"warn"``, counting the
   synchronizing calls it makes. A sync inside mechmon's guarded code would disable a probe instead of raising, so
   the check also fails when any probe was disabled. Exit status 1 when a check fails.
2. ``benchmarks/scale.py``'s table on the device (memory from the CUDA allocator's peak).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scale import SHAPES, measure, train_step  # noqa: E402

from mechmon import InductionProbe, LogitsProbe, Monitor, NLMProbe, WeightsProbe, every  # noqa: E402


def syncs(mode: str, fn) -> int:
    """Synchronizing CUDA calls ``fn`` makes (``"warn"``); under ``"error"`` the first one raises."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(mode)
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in seen)


def no_sync_check(shape: str, steps: int) -> bool:
    from transformers import AutoModelForCausalLM

    config, rows, ctx = SHAPES[shape]
    model = AutoModelForCausalLM.from_config(config).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(1, config.vocab_size, (rows, ctx), device="cuda")
    train_step(model, optimizer, batch)  # warm-up: lazy state, first kernels
    syncs("error", lambda: train_step(model, optimizer, batch))
    print(f"{shape}: the training step alone makes no sync")
    probes = [InductionProbe(), LogitsProbe(), WeightsProbe(), NLMProbe()]
    monitor = Monitor(model, optimizer=optimizer, probes=probes, schedule=every(3), log_dir=None, console=False)
    ok = True
    for step in range(1, steps + 1):
        scheduled = monitor.config.schedule(step)

        def monitored(step=step):
            with monitor.step(step, batch):
                train_step(model, optimizer, batch)

        try:
            count = syncs("warn" if scheduled else "error", monitored)
        except RuntimeError as error:
            print(f"step {step} (unscheduled): a sync: {error}")
            ok = False
            continue
        if scheduled:
            print(f"step {step} (scheduled): {count} synchronizing call(s)")
            ok &= count <= 1
    torch.cuda.synchronize()
    if monitor.disabled:
        print(f"probes disabled (a failure inside mechmon, perhaps a sync): {sorted(monitor.disabled)}")
        ok = False
    print(f"logged {len(monitor.latest)} keys; no-sync check {'passed' if ok else 'FAILED'}")
    monitor.close()
    return ok


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=list(SHAPES), default="6x384", help="model of the no-sync check")
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--table-shapes", nargs="*", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--table-steps", type=int, default=5)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: these checks run on a GPU machine")
    ok = no_sync_check(args.shape, args.steps)
    for name in args.table_shapes:
        measure(name, args.table_steps, None, "cuda")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
