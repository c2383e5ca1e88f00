"""How precise the induction score is with fewer probe rows: its standard error over rows, on the demo's run.

    python benchmarks/induction_rows.py                   # the demo's model and data, 40 single-row probes

Trains the stdlib demo's model (``examples/stdlib_induction.py``: Llama 2 x 128, byte vocabulary, the copy
curriculum, AdamW 1e-3, batch 32 x 128, seed 0) in a plain loop, and at the steps given (``--at``: initialisation,
before, at and after the emergence) scores ``--rows`` one-row P-rep batches (seeds 0..rows-1) with ``InductionProbe``.
For the head that scores best over all of them it prints the mean, the standard deviation over rows, and the
standard error of a ``batch_size``-row score (std / sqrt(n)) for n = 10 (the old default), 8, 6 and 4, beside the
0.3 emergence level.
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings

import torch
from examples_module import demo_training

from mechmon import InductionProbe, evaluate


def per_row(model, rows: int) -> torch.Tensor:
    """``[rows, L, H]``: each one-row probe's head scores."""
    model.eval()
    key = "mechmon/induction/head_scores"
    scores = [evaluate(InductionProbe(batch_size=1, seed=s), model)[key] for s in range(rows)]
    model.train()
    return torch.stack(scores)


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--at", type=int, nargs="+", default=[0, 350, 450, 600])
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    lm, optimizer, batches = demo_training()
    print(f"{'step':>5} {'best head':>9} {'mean':>6} {'std':>6}  " + "  ".join(f"SE n={n:<2}" for n in (10, 8, 6, 4)))
    for step in range(max(args.at) + 1):
        if step in args.at:
            scores = per_row(lm.model, args.rows)
            layer, head = divmod(int(scores.mean(0).argmax()), scores.shape[2])
            values = scores[:, layer, head].tolist()
            std = statistics.stdev(values)
            errors = "  ".join(f"{std / math.sqrt(n):>7.4f}" for n in (10, 8, 6, 4))
            print(f"{step:>5} {f'L{layer} H{head}':>9} {statistics.fmean(values):>6.3f} {std:>6.3f}  {errors}")
        if step < max(args.at):
            lm.training_step(next(batches), step).backward()
            optimizer.step()
            optimizer.zero_grad()


if __name__ == "__main__":
    main()
