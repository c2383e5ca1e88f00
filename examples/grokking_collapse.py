"""Softmax collapse vs grokking on (a + b) mod 113, after "Grokking at the Edge of Numerical Stability".

Three full-batch runs of an embedding + 2-layer ReLU MLP (width 512) on modular addition, train fraction 0.4,
AdamW lr 3e-3, each with MechMonitor (LogitsProbe, WeightsProbe, NLMProbe) attached:

    (a) float32 loss, no weight decay   -> logits grow (NLM), softmax collapse passes 0.5, test accuracy stays low
    (b) float32 loss, weight decay 1.0  -> grokking (test accuracy > 0.95), no collapse alert
    (c) float64 loss, no weight decay   -> collapse later than (a), or not within the budget

    python examples/grokking_collapse.py                       # all three, about 7 minutes on 2 CPU cores
    python examples/grokking_collapse.py --runs a --max-steps 1000

Prints, per run: the step each alert fired, the step test accuracy passed 0.9, the final collapse fraction; writes
``<out>/grokking_collapse.png`` (collapse fraction and test accuracy against step) and TensorBoard logs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from mechmon import LogitsProbe, MechMonitor, ModuleAdapter, NLMProbe, WeightsProbe
from mechmon.cli import runnable

P = 113
RUNS = {
    "a": dict(label="(a) fp32 loss, wd 0", loss_dtype=torch.float32, weight_decay=0.0),
    "b": dict(label="(b) fp32 loss, wd 1.0", loss_dtype=torch.float32, weight_decay=1.0),
    "c": dict(label="(c) fp64 loss, wd 0", loss_dtype=torch.float64, weight_decay=0.0),
}


def split(train_frac: float, seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """All (a, b) pairs with label (a + b) mod P, shuffled and split."""
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    x, y = torch.stack([a.flatten(), b.flatten()], dim=1), (a + b).flatten() % P
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(train_frac * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


class FullBatch(IterableDataset):
    """The whole training split as one batch, forever (full-batch training)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        while True:
            yield self.x, self.y


class ModAddMLP(pl.LightningModule):
    """Embedding of a and b, concatenated, then Linear-ReLU-Linear; the loss runs in ``loss_dtype``."""

    def __init__(self, test, loss_dtype: torch.dtype, weight_decay: float, lr: float, eval_every: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(P, 128)
        self.mlp = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, P))
        self.test, self.loss_dtype, self.weight_decay, self.lr, self.eval_every = (
            test,
            loss_dtype,
            weight_decay,
            lr,
            eval_every,
        )
        self.history: list[tuple[int, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.mlp(self.embed(x).flatten(1))

    def training_step(self, batch, batch_idx):  # noqa: D102
        x, y = batch
        return F.cross_entropy(self(x).to(self.loss_dtype), y)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:  # noqa: D102
        step = self.trainer.global_step
        if step % self.eval_every == 0 or step == 1:
            with torch.no_grad():
                acc = (self(self.test[0]).argmax(-1) == self.test[1]).float().mean().item()
            self.history.append((step, acc))
            self.log("test_acc", acc)

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay, betas=(0.9, 0.98))


def run(key: str, args: argparse.Namespace) -> dict:
    """Train one configuration; returns its alerts, accuracy history and collapse history."""
    cfg = RUNS[key]
    pl.seed_everything(args.seed, verbose=False)
    train, test = split(args.train_frac, args.seed)
    model = ModAddMLP(test, cfg["loss_dtype"], cfg["weight_decay"], args.lr, args.every)
    collapse: list[tuple[int, float]] = []
    monitor = MechMonitor(
        probes=[LogitsProbe(loss_dtype=cfg["loss_dtype"]), WeightsProbe(), NLMProbe()],
        schedule=args.every,
        adapter=lambda m: ModuleAdapter(m, {"logits": "mlp.2"}, n_layers=0, n_heads=0, vocab_size=P),
    )

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, *a) -> None:
            value = trainer.callback_metrics.get("mechmon/logits/softmax_collapse_frac")
            if monitor.engine.last_step == trainer.global_step and value is not None:
                collapse.append((trainer.global_step, float(value)))

    logger = TensorBoardLogger(args.out, name=f"run_{key}")
    trainer = pl.Trainer(
        max_steps=args.max_steps,
        max_time={"minutes": args.max_minutes},
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[monitor, Record()],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=args.every,
    )
    trainer.fit(model, DataLoader(FullBatch(*train), batch_size=None))
    passed = next((s for s, acc in model.history if acc > 0.9), None)
    return dict(
        label=cfg["label"],
        alerts=monitor.alerts,
        passed=passed,
        history=model.history,
        collapse=collapse,
        steps=trainer.global_step,
        final_collapse=collapse[-1][1] if collapse else float("nan"),
    )


def report(results: dict[str, dict], out: Path) -> None:
    """Rich table and PNG plot."""
    rules = ["nlm_regime", "logit_scale_precursor", "softmax_collapse_warning", "softmax_collapse"]
    table = Table(title="softmax collapse vs grokking, (a + b) mod 113 (first step each alert fired)")
    for column in ["run", "steps", *rules, "test acc > 0.9", "final collapse frac"]:
        table.add_column(column.replace("_", " "), justify="right")
    for res in results.values():
        first = {}
        for alert in res["alerts"]:
            first.setdefault(alert.rule, alert.step)
        fired = [str(first.get(rule, "-")) for rule in rules]
        acc = str(res["passed"] or "never")
        table.add_row(res["label"], str(res["steps"]), *fired, acc, f"{res['final_collapse']:.3f}")
    Console(width=160).print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for res in results.values():
        ax1.plot(*zip(*res["collapse"], strict=True), label=res["label"])
        ax2.plot(*zip(*res["history"], strict=True), label=res["label"])
    ax1.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax1.set(xlabel="step", ylabel="softmax collapse fraction", title="mechmon/logits/softmax_collapse_frac")
    ax2.set(xlabel="step", ylabel="test accuracy", title="test accuracy")
    ax1.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "grokking_collapse.png", dpi=110)
    print(f"plot: {out / 'grokking_collapse.png'}; TensorBoard: {runnable('tensorboard')} --logdir {out}")


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="abc", help="which configurations (default abc)")
    p.add_argument("--train-frac", type=float, default=0.4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--max-minutes", type=float, default=4.5, help="wall-clock cap per run (default 4.5)")
    p.add_argument("--every", type=int, default=50, help="probe and test every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/grokking_collapse"))
    args = p.parse_args()
    report({key: run(key, args) for key in args.runs}, args.out)


if __name__ == "__main__":
    main()
