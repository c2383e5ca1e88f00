"""Attention-logit growth at a high learning rate, and qk-layernorm removing it (Wortsman et al., 2023).

Reproduces, at small scale on a CPU, the first instability of *Small-scale proxies for large-scale Transformer
training instabilities* (Wortsman et al., 2023): without qk-layernorm, attention logits grow by orders of magnitude
at a high learning rate until attention is one-hot (entropy collapse) and the loss falls behind; the same model
with qk-norm, or the same model at a 10x lower learning rate, stays stable. mechmon watches all three runs with
``AttentionLogitProbe`` (max attention logit, alert ``attention_logit_growth`` at QK-Clip's τ = 100),
``AttentionEntropyProbe`` (alert ``attention_entropy_collapse`` when most heads are near one-hot) and
``LogitsProbe`` (output log-partition drift).

Settings (one run per configuration, Lightning, real text: the bytes of the Python standard library's source):
    models       HF Llama (no qk-norm) and HF Qwen3 (per-head RMSNorm on q and k, otherwise the same), built from
                 configs: 2 layers, width 128, 4 heads (head width 32), byte vocabulary (256), context 128
    optimiser    AdamW, betas (0.9, 0.95), no warm-up, no weight decay, constant learning rate
    batches      32 windows x 128 bytes, seeded; 400 optimizer steps
    probes       every 25 steps (and step 1) on a fixed batch of 8 text windows (max logit and entropy from the
                 SDPA calls' q and k); LogitsProbe on the training batch
    runs         llama lr 3e-2, qwen3 lr 3e-2, llama lr 3e-3

    python examples/attention_instability.py              # the three runs, a table and runs/attention_instability.png
    python examples/attention_instability.py --steps 200 --runs llama@3e-2 qwen3@3e-2
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stdlib_induction import read_corpus, text_windows  # noqa: E402

from mechmon import AttentionEntropyProbe, AttentionLogitProbe, LogitsProbe, MechMonitor  # noqa: E402
from mechmon.cli import runnable  # noqa: E402

ALERTS = ("attention_logit_growth", "attention_entropy_collapse", "log_z_drift")


def build(kind: str, ctx: int) -> torch.nn.Module:
    """An HF Llama (no qk-norm) or Qwen3 (qk-norm) of the experiment's shape, from a config."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    shape = dict(
        vocab_size=256, hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=32, max_position_embeddings=ctx, bos_token_id=0, eos_token_id=0,
        pad_token_id=0, tie_word_embeddings=False,
    )  # fmt: skip
    config = LlamaConfig(**shape) if kind == "llama" else Qwen3Config(**shape)
    return AutoModelForCausalLM.from_config(config)


class Windows(IterableDataset):
    """Endless seeded batches of random text windows ``[B, T]``."""

    def __init__(self, corpus: torch.Tensor, batch: int, ctx: int, seed: int) -> None:
        self.corpus, self.batch, self.ctx, self.seed = corpus, batch, ctx, seed

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            starts = torch.randint(len(self.corpus) - self.ctx, (self.batch, 1), generator=gen)
            yield self.corpus[starts + torch.arange(self.ctx)]


class ByteLM(pl.LightningModule):
    """The model over bytes; records the training loss every ``every`` steps for the table."""

    def __init__(self, model: torch.nn.Module, lr: float, every: int) -> None:
        super().__init__()
        self.model, self.lr, self.every = model, lr, every
        self.losses: dict[int, float] = {}

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:  # noqa: D102
        loss = self.model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch).loss
        step = self.trainer.global_step + 1
        if step == 1 or step % self.every == 0:
            self.losses[step] = loss.item()  # the example's own bookkeeping, not mechmon's
        return loss

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.AdamW(self.parameters(), lr=self.lr, betas=(0.9, 0.95), weight_decay=0.0)


def run(kind: str, lr: float, corpus: torch.Tensor, args: argparse.Namespace) -> dict:
    """One training run with the monitor; returns the curves, the alerts and the wall time."""
    pl.seed_everything(args.seed, verbose=False)
    probe_rows = text_windows(corpus, 8, args.ctx, args.seed + 1)
    folder = args.out / f"{kind}_lr{lr:g}" / time.strftime("%Y%m%d-%H%M%S")  # a new folder per run: no mixed events
    monitor = MechMonitor(
        probes=[AttentionLogitProbe(probe_rows), AttentionEntropyProbe(probe_rows), LogitsProbe()],
        schedule=args.every,
        log_dir=folder,
    )
    module = ByteLM(build(kind, args.ctx), lr, args.every)
    trainer = pl.Trainer(
        max_steps=args.steps, accelerator="cpu", devices=1, logger=False, callbacks=[monitor],
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*treespec.*")  # a Lightning deprecation note we cannot fix
        trainer.fit(module, DataLoader(Windows(corpus, args.batch, args.ctx, args.seed), batch_size=None))
    seconds = time.perf_counter() - start
    alerts = {}
    for alert in monitor.alerts:
        alerts.setdefault(alert.rule, alert.step)
    return {"curves": read_curves(folder), "losses": module.losses, "alerts": alerts, "seconds": seconds}


def read_curves(folder: Path) -> dict[str, dict[int, float]]:
    """The max logit and entropy series, read back from the run's TensorBoard event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    tags = {"max": "mechmon/attn_logits/max", "min_head": "mechmon/attn_entropy/min_head"}
    return {name: {e.step: e.value for e in events.Scalars(tag)} for name, tag in tags.items()}


def falls_behind(unstable: dict[int, float], stable: dict[int, float], margin: float) -> int | None:
    """First step from which the unstable run's loss stays non-finite or ``margin`` nats above the stable run's."""
    steps = sorted(set(unstable) & set(stable))
    behind = [not math.isfinite(unstable[s]) or unstable[s] > stable[s] + margin for s in steps]
    for i, step in enumerate(steps):
        if step > 1 and all(behind[i:]):
            return step
    return None


def plot(results: dict[str, dict], path: Path) -> None:
    """Max attention logit, lowest head entropy and training loss over steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, result in results.items():
        series_3 = (result["curves"]["max"], result["curves"]["min_head"], result["losses"])
        for ax, series in zip(axes, series_3, strict=True):
            steps = sorted(series)
            ax.plot(steps, [series[s] for s in steps], marker="o", markersize=3, label=name)
    axes[0].axhline(100, color="grey", linestyle="--", linewidth=1, label="QK-Clip τ = 100 (alert)")
    axes[0].set_yscale("log")
    axes[1].axhline(0.1, color="grey", linestyle="--", linewidth=1, label="collapsed head < 0.1")
    titles = ("max attention logit", "lowest head's normalised entropy", "training loss (nats)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=8)
    fig.suptitle("Attention-logit growth without qk-norm at lr 3e-2 (Wortsman et al., 2023), watched by mechmon")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args() -> argparse.Namespace:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["llama@3e-2", "qwen3@3e-2", "llama@3e-3"], help="model@lr")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per run (default 400)")
    p.add_argument("--every", type=int, default=25, help="probe every N steps (default 25)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin", type=float, default=0.1, help="nats behind the qk-norm run that count (default 0.1)")
    p.add_argument("--out", type=Path, default=Path("runs/attention_instability"), help="output folder")
    return p.parse_args()


def main() -> None:  # noqa: D103
    args = parse_args()
    corpus = read_corpus(None, max_bytes=16_000_000)
    results = {}
    for spec in args.runs:
        kind, lr = spec.split("@")
        results[spec] = run(kind, float(lr), corpus, args)
        print(f"{spec}: {results[spec]['seconds']:.0f} s")
    print()
    print(f"| run | {' | '.join(ALERTS)} | max logit | min head entropy | loss | falls behind qk-norm at |")
    print("| --- |" + " --- |" * (len(ALERTS) + 4))
    for spec, result in results.items():
        curves, losses, last = result["curves"], result["losses"], max(result["losses"])
        fired = [str(result["alerts"].get(rule, "—")) for rule in ALERTS]
        behind = "—"
        kind, lr = spec.split("@")
        partner = f"qwen3@{lr}"
        if kind == "llama" and partner in results:
            step = falls_behind(losses, results[partner]["losses"], args.margin)
            behind = "never" if step is None else str(step)
        final = (curves["max"][max(curves["max"])], curves["min_head"][max(curves["min_head"])])
        print(f"| {spec} | {' | '.join(fired)} | {final[0]:,.1f} | {final[1]:.3f} | {losses[last]:.2f} | {behind} |")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "attention_instability.png")
    tensorboard = f"{runnable('tensorboard')} --logdir {args.out}"
    print(f"\nplot: {args.out / 'attention_instability.png'}; TensorBoard: {tensorboard}")


if __name__ == "__main__":
    main()
