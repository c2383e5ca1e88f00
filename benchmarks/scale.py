"""The monitor's cost at three model shapes: one training step, and each probe's extra time and peak memory.

    python benchmarks/scale.py                          # demo, 6 x 384, GPT-2 124M (several minutes on 2 cores)
    python benchmarks/scale.py --shapes demo 6x384 --steps 3

For each shape a plain PyTorch loop (AdamW) trains on random tokens; each row is a fresh ``Monitor`` with one probe
(or the defaults, or every probe) scheduled on every step, so each measured step pays one evaluation. "extra ms"
is the median difference between a monitored step and the plain step just before it (interleaved, so drift
cancels; "share" divides it by the median plain step); "extra MiB" is the peak of the bytes
that operators allocate during one monitored step minus that of one plain step (``tests/memory.py``'s accounting,
which counts every storage, so it works on CPU). Text probes read 8 rows of the step's batch.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
from tests.memory import LiveBytes  # noqa: E402


def demo_config():
    """The stdlib demo's model config (examples/stdlib_induction.py)."""
    spec = importlib.util.spec_from_file_location("demo", ROOT / "examples" / "stdlib_induction.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo.byte_config("llama", 2, 128, 4, 128)


SHAPES = {  # name -> (config, batch, context)
    "demo": (demo_config(), 32, 128),
    "6x384": (
        GPT2Config(vocab_size=8192, n_positions=256, n_embd=384, n_layer=6, n_head=6, bos_token_id=0, eos_token_id=0),
        4,
        256,
    ),
    "gpt2-124M": (GPT2Config(vocab_size=50257, n_positions=256, n_embd=768, n_layer=12, n_head=12), 4, 256),
}


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


def paired_times(model, optimizer, batch, steps: int, monitor) -> tuple[list[float], list[float]]:
    """Plain and monitored step times, interleaved (plain, monitored, plain, ...) so that drift cancels."""
    plain, watched = [], []
    for step in range(1, steps + 2):  # the first pair warms up
        start = time.perf_counter()
        train_step(model, optimizer, batch)
        middle = time.perf_counter()
        with monitor.step(step, batch):
            train_step(model, optimizer, batch)
        end = time.perf_counter()
        if step > 1:
            plain.append(middle - start)
            watched.append(end - middle)
    return plain, watched


def peak_bytes(model, optimizer, batch, monitor=None, step: int = 10_000) -> int:
    known = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
    known += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    with LiveBytes(known) as live:
        if monitor is None:
            train_step(model, optimizer, batch)
        else:
            with monitor.step(step, batch):
                train_step(model, optimizer, batch)
    return live.peak


def measure(name: str, steps: int) -> None:
    config, rows, ctx = SHAPES[name]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(1, config.vocab_size, (rows, ctx), generator=torch.Generator().manual_seed(0))
    train_step(model, optimizer, batch)  # warm-up
    start = time.perf_counter()
    train_step(model, optimizer, batch)
    base = time.perf_counter() - start
    base_peak = peak_bytes(model, optimizer, batch)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"\n{name}: {params:.1f}M parameters, batch {rows} x {ctx}: training step {base * 1000:.0f} ms")
    print(f"{'probes':<32} {'step ms':>8} {'extra ms':>9} {'share':>7} {'extra MiB':>10}")
    for label, probes in probe_sets(batch).items():
        monitor = Monitor(model, optimizer=optimizer, probes=probes, schedule=1, log_dir=None, console=False)
        plain, watched = paired_times(model, optimizer, batch, steps, monitor)
        step = statistics.median(plain)
        extra = statistics.median(w - p for p, w in zip(plain, watched, strict=True))
        memory = (peak_bytes(model, optimizer, batch, monitor) - base_peak) / 2**20
        monitor.close()
        print(f"{label:<32} {step * 1000:>8.0f} {extra * 1000:>9.0f} {extra / step:>7.1%} {memory:>10.0f}")


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--steps", type=int, default=3, help="measured steps per row (after one warm-up)")
    args = p.parse_args()
    for name in args.shapes:
        measure(name, args.steps)


if __name__ == "__main__":
    main()
