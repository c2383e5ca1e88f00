"""Cost of one PathwayProbe evaluation, on the training thread and on its worker, for N = 64, 256 and 1024 samples.

    python benchmarks/pathway_cost.py --repeats 5

Model: the OLMoE of examples/stdlib_moe_pathways.py (4 layers, width 128, 8 experts, top-2), probe windows of 128
stdlib bytes in 4 package groups, memorization criterion on. Training thread = what the monitor does at a scheduled
step: the probe forward under the router hooks, ``update`` (routing weights, per-sample losses, consistency),
``compute``, the one device-to-host transfer and ``finish`` (memorization criterion, hand-off to the worker).
Worker = pathways and mean pairwise edit distances per group, overall, per layer and on a memorized subset (22.5 %).
Prints the median and minimum in milliseconds.
"""

import argparse
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
from probe_cost import ROOT, load, one_evaluation

from mechmon import PathwayProbe
from mechmon.adapters import resolve_adapter
from mechmon.capture import resolve_names
from mechmon.engine import snapshot_forward

PACKAGES = ["asyncio", "email", "unittest", "xml"]


def timed(fn, repeats: int, drain: PathwayProbe | None = None) -> tuple[float, float]:
    """Median and min ms of ``fn``; with ``drain``, the first run is a warm-up and the worker is emptied untimed."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
        if drain is not None:
            drain.late_results(wait=True)  # so that no round is skipped in the next call
    times = times[1:] if drain is not None else times
    return statistics.median(times), min(times)


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sizes", default="64,256,1024")
    args = p.parse_args()
    torch.manual_seed(0)
    sys.path.insert(0, str(ROOT / "examples"))  # the example imports a helper from its sibling
    ex = load("stdlib_moe_pathways")
    cfg = SimpleNamespace(width=128, layers=4, experts=8, top_k=2, ctx=128, lr=1e-3)
    model = ex.ByteMoE(cfg, PACKAGES).model.eval()
    adapter = resolve_adapter(model)
    print(f"{'N':>5} {'pairs':>7} {'training thread ms':>19} {'(min)':>7} {'worker ms':>10} {'(min)':>7}")
    for n in map(int, args.sizes.split(",")):
        per = n // len(PACKAGES)
        ids = torch.cat([ex.package_windows(g, per, 128, i) for i, g in enumerate(PACKAGES)])
        probe = PathwayProbe(ids, groups=[g for g in PACKAGES for _ in range(per)], epsilon=10.0)
        probe.attach(model, adapter, torch.device("cpu"))
        names = resolve_names(adapter, probe.requires)

        def on_thread(probe=probe, names=names):
            one_evaluation(probe, adapter, names)

        thread = timed(on_thread, args.repeats + 1, drain=probe)
        snapshot_forward(probe, adapter, names)  # one_evaluation resets the states: take a live copy
        weights = probe.host_inputs()["weights"].numpy().copy()
        memorized = np.random.default_rng(0).random(n) < 0.225  # the paper's memorized share
        worker = timed(lambda probe=probe, w=weights, m=memorized: probe._distances(w, m), args.repeats)
        probe.close()
        pairs = len(PACKAGES) * min(per * (per - 1) // 2, probe.max_pairs)
        print(f"{n:>5} {pairs:>7} {thread[0]:>19.1f} {thread[1]:>7.1f} {worker[0]:>10.1f} {worker[1]:>7.1f}")


if __name__ == "__main__":
    main()
