"""The benchmarks' one way to reuse an example's pieces (its model config, corpus reader, batches) by file path."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` as a module (its ``main`` does not run)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_training() -> tuple:
    """The stdlib demo's model, optimizer and batch iterator as the demo builds them (Llama 2 x 128, 4 heads, AdamW
    1e-3, batch 32 x 128, the copy curriculum, seed 0): ``(lightning_module, optimizer, batches)``."""
    import torch

    d = load_example("stdlib_induction")
    torch.manual_seed(0)
    lm = d.ByteLM(2, 128, 4, 128, 1e-3, "llama")
    batches = iter(d.Batches(d.read_corpus(None, 16_000_000), 32, 128, 0.5, 0, copy_start=1.0, copy_steps=400))
    return lm, lm.configure_optimizers(), batches
