"""Host time of one ``LogitsProbe.update`` (the exact, paper-parity row statistics) on LM-shaped logits.

    python benchmarks/logits_update.py [--fp64]

For float32 logits ``[4, 256, V]`` with V = 8,192 and 50,257 (the 6 x 384 and GPT-2 124M shapes of
``benchmarks/scale.py``), on 2 threads: the median of 7 updates after one warm-up. ``--fp64`` adds the float64
collapse test (``LogitsProbe(fp64=True)``).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mechmon import LogitsProbe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp64", action="store_true", help="also the float64 collapse test")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for vocab in (8192, 50257):
        logits = torch.randn(4, 256, vocab, generator=torch.Generator().manual_seed(0)) * 4
        ids = torch.randint(0, vocab, (4, 256), generator=torch.Generator().manual_seed(1))
        probe = LogitsProbe(fp64=args.fp64 or None)
        times = []
        for _ in range(8):
            start = time.perf_counter()
            probe.update({"logits": logits}, ids)
            times.append(time.perf_counter() - start)
        print(f"[4, 256, {vocab}] float32 logits: {statistics.median(times[1:]) * 1000:.1f} ms per update")


if __name__ == "__main__":
    main()
