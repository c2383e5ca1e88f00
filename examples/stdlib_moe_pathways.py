"""Watch MoE pathways while a small OLMoE-style model memorizes the standard library, one group per package.

Trains an HF OLMoE (built from a config, nothing downloaded: 4 layers, width 128, 8 experts, top-2) with Lightning
on byte windows of the running interpreter's stdlib source. Each window's group is the top-level package of the
file it comes from (default ``asyncio``, ``email``, ``unittest``, ``xml``). The training set is a fixed set of
windows seen for many epochs, so samples get memorized; ``PathwayProbe`` follows 64 of them per group (the pathway
edit distance and consistency of "Where to find Grokking in LLM Pretraining?", Li, Fan & Zhou) together with the
online memorization criterion, ``RoutingProbe`` the routing health, and a held-out set of each package's windows
gives the generalization the paper's metrics are meant to predict without a test set.

    python examples/stdlib_moe_pathways.py              # at most 9 minutes of training on 2 CPU cores
    python examples/stdlib_moe_pathways.py --max-steps 300 --every 20 --epsilon-at 100

Prints the measures over time per group and writes TensorBoard logs (panel group ``mechmon/moe_pathway``) and a plot.
"""

from __future__ import annotations

import argparse
import sysconfig
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from rich.table import Table
from stdlib_induction import SKIP_DIRS
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModelForCausalLM, OlmoeConfig

from mechmon import MechMonitor, PathwayProbe, RoutingProbe
from mechmon.cli import read_run, runnable


def package_windows(package: str, count: int, ctx: int, seed: int) -> torch.Tensor:
    """``[count, ctx]`` byte windows at seeded random offsets of one stdlib package's ``.py`` sources."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in (root / package).rglob("*.py") if not SKIP_DIRS & set(f.relative_to(root).parts))
    data = b"".join(f.read_bytes() for f in files)
    if len(data) < ctx * count:
        raise SystemExit(f"package {package!r} has {len(data):,} bytes; need {ctx * count:,} ({count} windows)")
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    starts = torch.randperm(len(tokens) // ctx, generator=torch.Generator().manual_seed(seed))[:count] * ctx
    return tokens[starts[:, None] + torch.arange(ctx)]


class ByteMoE(pl.LightningModule):
    """An OLMoE over bytes; validation logs each package's held-out loss as ``heldout_loss/<package>``."""

    def __init__(self, args: argparse.Namespace, packages: list[str]) -> None:
        super().__init__()
        cfg = OlmoeConfig(
            vocab_size=256,
            hidden_size=args.width,
            intermediate_size=2 * args.width,
            num_hidden_layers=args.layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            num_experts=args.experts,
            num_experts_per_tok=args.top_k,
            max_position_embeddings=args.ctx,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        self.model, self.lr, self.packages = AutoModelForCausalLM.from_config(cfg), args.lr, packages

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: D102
        loss = self.model(input_ids=batch[0], labels=batch[0]).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:  # noqa: D102
        ids, group = batch
        logits = self.model(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").mean(dim=1)
        for g, name in enumerate(self.packages):
            if (group == g).any():
                self.log(f"heldout_loss/{name}", loss[group == g].mean(), batch_size=int((group == g).sum()))

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def parse_args() -> argparse.Namespace:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packages", default="asyncio,email,unittest,xml", help="comma-separated stdlib packages")
    p.add_argument("--train-windows", type=int, default=512, help="training windows per package (default 512)")
    p.add_argument("--probe-windows", type=int, default=64, help="probe-set windows per package (default 64)")
    p.add_argument("--max-steps", type=int, default=1200, help="optimizer steps (default 1200)")
    p.add_argument("--max-minutes", type=float, default=9.0, help="wall-clock cap in minutes (default 9)")
    p.add_argument("--every", type=int, default=40, help="probe and validate every N steps (default 40)")
    p.add_argument("--epsilon-at", type=int, default=600, help="step at which each group's ε is frozen (default 600)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs"), help="TensorBoard root (default ./runs)")
    p.add_argument("--panel", action="store_true", help="mechmon's live panel instead of Lightning's progress bar")
    return p.parse_args()


def datasets(args: argparse.Namespace, packages: list[str]) -> tuple[TensorDataset, TensorDataset]:
    """Training windows and held-out windows, each with its package index."""
    train, heldout = [], []
    for g, package in enumerate(packages):
        windows = package_windows(package, args.train_windows + args.probe_windows, args.ctx, args.seed + g)
        train.append((windows[: args.train_windows], torch.full((args.train_windows,), g)))
        heldout.append((windows[args.train_windows :], torch.full((args.probe_windows,), g)))
    return tuple(TensorDataset(*map(torch.cat, zip(*parts, strict=True))) for parts in (train, heldout))


def report(scalars: dict, packages: list[str], out: Path, every: int) -> None:
    """One table per package (every few evaluations) and a plot of the four pathway curves."""
    ns = "mechmon/moe_pathway"
    cols = {
        "loss": f"{ns}/loss_nats/{{g}}",
        "held-out": "heldout_loss/{g}",
        "edit": f"{ns}/edit_dist/{{g}}",
        "mem": f"{ns}/memorized_frac/{{g}}",
        "edit mem": f"{ns}/edit_dist/{{g}}.mem",
        "smooth": f"{ns}/smoothness/{{g}}",
        "C paper": f"{ns}/consistency_paper/{{g}}",
    }
    console = Console()
    for g in packages:
        series = {name: dict(scalars.get(key.format(g=g), [])) for name, key in cols.items()}
        steps = sorted(series["edit"])
        table = Table(title=f"package {g}: pathway measures over time")
        table.add_column("step", justify="right")
        for name in cols:
            table.add_column(name, justify="right")
        for step in sorted(set(steps[:: max(1, len(steps) // 12)] + steps[-1:])):
            cells = [series[name].get(step, series[name].get(step - 1)) for name in cols]  # val logs at step - 1
            table.add_row(str(step), *("-" if v is None else f"{v:.3f}" for v in cells))
        console.print(table)
    plot(scalars, packages, cols, out)


def plot(scalars: dict, packages: list[str], cols: dict[str, str], out: Path) -> None:
    """Four panels, one line per package: losses, edit distance, memorized share, smoothness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    panels = [("held-out", "held-out loss (nats)"), ("edit", "pathway edit distance (characters)")]
    panels += [("mem", "memorized fraction"), ("smooth", "pathway smoothness")]
    for ax, (name, title) in zip(axes, panels, strict=True):
        for g in packages:
            points = scalars.get(cols[name].format(g=g), [])
            if points:
                ax.plot(*zip(*points, strict=True), label=g)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "moe_pathways.png", dpi=110)
    print(f"plot: {out / 'moe_pathways.png'}")


def main() -> None:  # noqa: D103
    args = parse_args()
    pl.seed_everything(args.seed, verbose=False)
    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    train, heldout = datasets(args, packages)
    rows = torch.cat([torch.arange(args.probe_windows) + g * args.train_windows for g in range(len(packages))])
    probe_ids, probe_groups = train.tensors[0][rows], [packages[g] for g in train.tensors[1][rows]]
    pathway = PathwayProbe(probe_ids, groups=probe_groups, epsilon_at=args.epsilon_at)
    start, fired = time.perf_counter(), []
    monitor = MechMonitor(
        probes=[pathway, RoutingProbe()],
        schedule=args.every,
        console=True if args.panel else None,
        on_alert=[lambda a: fired.append(f"{a.rule} at step {a.step} ({time.perf_counter() - start:.0f} s)")],
    )
    logger = TensorBoardLogger(args.out, name="stdlib_moe_pathways")
    trainer = pl.Trainer(
        max_steps=args.max_steps,
        max_time={"minutes": args.max_minutes},
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[monitor],
        val_check_interval=args.every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_progress_bar=not args.panel,
        enable_checkpointing=False,
        log_every_n_steps=args.every,
        enable_model_summary=False,
    )
    print(f"packages {packages}: {len(train)} training windows, {len(rows)} in the probe set; logs: {logger.log_dir}")
    trainer.fit(
        ByteMoE(args, packages),
        DataLoader(train, batch_size=args.batch, shuffle=True, drop_last=True),
        DataLoader(heldout, batch_size=256),
    )
    wall = time.perf_counter() - start
    print(
        f"trained {trainer.global_step} steps in {wall:.1f} s; pathway rounds skipped (worker busy): {pathway.skipped}"
    )
    print("\n".join(fired) or "no alerts")
    scalars = dict(read_run(Path(logger.log_dir))[0])
    scalars.update(read_run(Path(logger.log_dir), namespace="heldout_loss")[0])
    report(scalars, packages, Path(logger.log_dir), args.every)
    print(f"TensorBoard: {runnable('tensorboard')} --logdir {logger.log_dir}")


if __name__ == "__main__":
    main()
