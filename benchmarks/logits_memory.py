"""Extra peak memory of one ``LogitsProbe.update`` (the streaming probe that reads the training logits).

    python benchmarks/logits_memory.py

Counted by a dispatch mode that adds up the storages operators allocate while they are alive (CPU has no allocator
statistics; ``tests/helpers/memory.py``), for logits of the issue's shape ``[1, 4096, 32000]`` in float32 and bf16 and a
smaller one. The bound the probe keeps is 64 MiB plus 10 % of the logits' bytes.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mechmon import LogitsProbe  # noqa: E402
from tests.helpers.memory import LiveBytes  # noqa: E402

MIB = 2**20


def peak(shape: tuple[int, int, int], dtype: torch.dtype) -> tuple[float, float, float]:
    """(logits MiB, extra peak MiB, bound MiB) for one update."""
    logits = torch.randn(*shape).to(dtype)
    tokens = torch.randint(0, shape[-1], shape[:2])
    probe = LogitsProbe()
    probe.update({"logits": logits[:, :16]}, tokens[:, :16])  # the absorption gap is measured once, then cached
    with LiveBytes([logits, tokens, *(t for t, _ in probe.states().values())]) as mode:
        probe.update({"logits": logits}, tokens)
    size = logits.numel() * logits.element_size()
    return size / MIB, mode.peak / MIB, (64 * MIB + size // 10) / MIB


def main() -> None:  # noqa: D103
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(f"{'logits':<24} {'dtype':<9} {'logits MiB':>10} {'extra peak MiB':>15} {'bound MiB':>10}")
    for shape in [(1, 4096, 32000), (4, 1024, 8192)]:
        for dtype in (torch.float32, torch.bfloat16):
            size, extra, bound = peak(shape, dtype)
            print(f"{str(list(shape)):<24} {str(dtype)[6:]:<9} {size:>10.0f} {extra:>15.1f} {bound:>10.1f}")


if __name__ == "__main__":
    main()
