"""Do the emerged induction heads carry the copying? The ablation gap over the demo's run, and its validation.

    python benchmarks/load_bearing.py                     # the demo's model and data, 700 steps, every 50
    python benchmarks/load_bearing.py --steps 300 --every 100

Trains the stdlib demo's model (``examples/stdlib_induction.py``: Llama 2 x 128, 4 heads, byte vocabulary, the copy
curriculum, AdamW 1e-3, batch 32 x 128, seed 0) in a plain loop. At step 0 and every ``--every`` steps it runs the
demo's ``InductionProbe(period=50, batch_size=10)`` with ``ablate_each=True`` and prints the best induction score,
the rise of the copy-2 loss in nats when the 3 best heads are mean-ablated together (``ablation_gap_nats``, what the
``induction_load_bearing`` alert reads) and when each is ablated alone. Then, at initialisation and at the end, it
ablates every head alone (``mechmon.ablation.mean_ablation``) beside its induction and previous-token scores.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from examples_module import demo_training

from mechmon import InductionProbe, evaluate, resolve_adapter
from mechmon.ablation import mean_ablation
from mechmon.functional.induction import repeated_sequence_losses

KEY = "mechmon/induction/"


def probe_values(model) -> tuple[dict[str, float], torch.Tensor, InductionProbe]:
    """The demo's probe with every ablation on: its scalars, its ``[L, H]`` scores, the probe (its batch)."""
    model.eval()
    probe = InductionProbe(period=50, batch_size=10, ablate_each=True)
    out = evaluate(probe, model)
    model.train()
    return {k: float(v) for k, v in out.items() if v.ndim == 0}, out[KEY + "head_scores"], probe


def single_head_gap(model, probe: InductionProbe, layer: int, head: int) -> float:
    """Copy-2 loss with head (layer, head) mean-ablated, minus without, in nats."""
    adapter = resolve_adapter(model)
    model.eval()
    with torch.no_grad():
        clean = repeated_sequence_losses(adapter.logits(probe.probe_batch), probe.probe_batch, probe.period)[1]
        mask = torch.zeros(adapter.n_layers, adapter.n_heads, dtype=torch.bool)
        mask[layer, head] = True
        with mean_ablation(adapter, mask):
            ablated = repeated_sequence_losses(adapter.logits(probe.probe_batch), probe.probe_batch, probe.period)[1]
    model.train()
    return float(ablated - clean)


def heads_report(model, when: str) -> None:
    """Every head ablated alone: its induction and previous-token scores, the rise of the copy-2 loss."""
    _, scores, probe = probe_values(model)
    model.eval()
    previous = evaluate(InductionProbe(period=50, batch_size=10, ablate_k=0), model)["mechmon/prev_token/head_scores"]
    model.train()
    print(f"{when}: every head mean-ablated alone")
    print(f"{'head':>6} {'induction':>9} {'prev-token':>10} {'gap nats':>8}")
    for layer in range(scores.shape[0]):
        for head in range(scores.shape[1]):
            gap = single_head_gap(model, probe, layer, head)
            print(f"{f'L{layer} H{head}':>6} {float(scores[layer, head]):>9.3f} {float(previous[layer, head]):>10.3f}"
                  f" {gap:>+8.3f}")  # fmt: skip


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--every", type=int, default=50)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    lm, optimizer, batches = demo_training()
    heads_report(lm.model, "init")
    print(f"{'step':>5} {'score_max':>9} {'gap top3':>8} {'top1':>7} {'top2':>7} {'top3':>7}")
    for step in range(args.steps + 1):
        if step % args.every == 0:
            v, _, _ = probe_values(lm.model)
            alone = "".join(f" {v[f'{KEY}ablation_gap_nats/top{i}']:>+7.3f}" for i in (1, 2, 3))
            print(f"{step:>5} {v[KEY + 'score_max']:>9.3f} {v[KEY + 'ablation_gap_nats']:>+8.3f}{alone}", flush=True)
        if step < args.steps:
            lm.training_step(next(batches), step).backward()
            optimizer.step()
            optimizer.zero_grad()
    heads_report(lm.model, "end")


if __name__ == "__main__":
    main()
