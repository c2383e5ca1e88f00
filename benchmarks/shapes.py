"""The model shapes the cost benchmarks share: name -> (HF config, batch rows, context)."""

from __future__ import annotations

from examples_module import load_example
from transformers import GPT2Config


def demo_config():
    """The stdlib demo's model config (examples/stdlib_induction.py)."""
    return load_example("stdlib_induction").byte_config("llama", 2, 128, 4, 128)


SHAPES = {
    "demo": (demo_config(), 32, 128),
    "6x384": (
        GPT2Config(vocab_size=8192, n_positions=256, n_embd=384, n_layer=6, n_head=6, bos_token_id=0, eos_token_id=0),
        4,
        256,
    ),
    "gpt2-124M": (GPT2Config(vocab_size=50257, n_positions=256, n_embd=768, n_layer=12, n_head=12), 4, 256),
}
