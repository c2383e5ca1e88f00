"""Induction scores with mechmon against the way a user computes them with TransformerLens, and the time of each.

    python benchmarks/tl_induction.py                    # the three shapes of benchmarks/scale.py
    python benchmarks/tl_induction.py --shapes demo 6x384

Needs the ``transformer-lens`` extra (4.x: a ``TransformerBridge`` booted from a config, nothing downloaded). For
each shape, a randomly initialised model of that size reads the same 10 repeated random sequences (P-rep: 50 ids
twice, docs/metrics.md D1) three ways:

* mechmon: ``evaluate(InductionProbe(), adapter)``, one batched forward, patterns reduced inside the hooks;
* by hand from TransformerLens' cache: ``run_with_cache`` on the batch, then D1 on each layer's pattern;
* ``detect_head(model, sequences, "induction_head")``: TransformerLens' head detector, one sequence per forward.

The first two give the same numbers (printed: their largest difference). ``detect_head``'s "mul" score is another
quantity (attention on the induction stripe over all attention, about n/(2n+1) = 0.495 for a perfect head,
docs/metrics.md D1), so only its time and its max are printed. Times are medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mechmon import InductionProbe, evaluate
from mechmon.adapters import resolve_adapter
from mechmon.functional.induction import induction_scores

SHAPES = {  # name -> (layers, width, heads, vocab), as in benchmarks/scale.py
    "demo": (2, 128, 4, 256),
    "6x384": (6, 384, 6, 8192),
    "gpt2-124M": (12, 768, 12, 50257),
}


def bridge(layers: int, width: int, heads: int, vocab: int):
    """A randomly initialised TransformerLens 4.x model with a word-level tokenizer over ids ``t0 .. t{V-1}``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerFast

    cfg = TransformerBridgeConfig(
        n_layers=layers, d_model=width, n_ctx=128, d_head=width // heads, n_heads=heads, d_vocab=vocab, seed=0
    )
    model = TransformerBridge.boot_native(cfg)
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model.tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0", pad_token="t0")
    return model.eval()


def median_ms(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, out


def by_hand(model, batch: torch.Tensor, period: int) -> torch.Tensor:
    """D1 ``[L, H]`` from TransformerLens' own cache of the batch (what a user writes with ``run_with_cache``)."""
    with torch.no_grad():
        _, cache = model.run_with_cache(batch)
    return torch.stack([induction_scores(cache["pattern", layer], period) for layer in range(model.cfg.n_layers)])


def measure(name: str, repeats: int) -> None:
    from transformer_lens.head_detector import detect_head

    model = bridge(*SHAPES[name])
    adapter, probe = resolve_adapter(model), InductionProbe(batch_size=10)  # found once, as the monitor does
    mechmon_ms, out = median_ms(lambda: evaluate(probe, adapter), repeats)
    ours = out["mechmon/induction/head_scores"]
    batch = probe.probe_batch
    hand_ms, hand = median_ms(lambda: by_hand(model, batch, probe.period), repeats)
    texts = [" ".join(f"t{i}" for i in row.tolist()) for row in batch]
    detect_ms, mul = median_ms(lambda: detect_head(model, texts, "induction_head"), repeats)
    layers, width, _, vocab = SHAPES[name]
    print(f"\n{name}: {layers} layers x {width}, vocab {vocab}, P-rep {tuple(batch.shape)}")
    print(f"{'way':<44} {'ms':>8} {'score_max':>10}")
    print(f"{'mechmon InductionProbe (one forward)':<44} {mechmon_ms:>8.0f} {ours.max().item():>10.4f}")
    print(f"{'D1 by hand from run_with_cache':<44} {hand_ms:>8.0f} {hand.max().item():>10.4f}")
    print(f"{'detect_head, one sequence per forward (mul)':<44} {detect_ms:>8.0f} {mul.max().item():>10.4f}")
    print(f"largest |mechmon - by hand| over the [L, H] scores: {(ours - hand).abs().max().item():.2e}")


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    for name in args.shapes:
        measure(name, args.repeats)


if __name__ == "__main__":
    main()
