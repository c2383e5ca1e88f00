"""The loss plateau of the moving-window-sum task, after "What Happens During the Loss Plateau?" (Gopalani & Hu, 2025).

Task (n = 16, p = 17): x_1..x_16 uniform in 1..16, a separator, then y_1 = x_1 and y_i = (x_{i-1} + x_i) mod 17.
Model: the paper's one-layer, one-head transformer with *linear* attention (scores masked, not softmaxed), width
256, Adam lr 1e-4, batches of 256 fresh samples, loss on every next token. MechMonitor watches it with the plateau
probes on one fixed batch of 64 task samples: CollapseProbe (output positions without the first), RepetitionProbe
(greedy continuation of the 16 outputs), AttentionProgressProbe (Ω: each output position attends to the two summands
of the next output) and RankProbe.

    python examples/loss_plateau.py            # 300 steps, about 2 minutes on 2 CPU cores

Prints the step where ``plateau_start`` fired, the step where ``plateau_exit`` fired and the loss-drop step, defined
as the first evaluation at which the output-token loss (``mechmon/repr_collapse/loss_nats``) is below half of
ln 17 (a uniform guess over the residues); writes ``<out>/loss_plateau.png`` and TensorBoard logs.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from mechmon import AttentionProgressProbe, CollapseProbe, MechMonitor, ModuleAdapter, RankProbe, RepetitionProbe
from mechmon.cli import read_run, runnable

N, P = 16, 17
SEP, T = P, 2 * N + 1  # separator id 17 (vocabulary 18), sequences of 33 tokens


def mws_batch(size: int, gen: torch.Generator) -> torch.Tensor:
    """``[size, 33]`` moving-window-sum sequences: x, separator, y."""
    x = torch.randint(1, N + 1, (size, N), generator=gen)
    y = x.clone()
    y[:, 1:] = (x[:, :-1] + x[:, 1:]) % P
    return torch.cat([x, torch.full((size, 1), SEP), y], dim=1)


def target_map() -> torch.Tensor:
    """Ω ``[33, 33]``: the separator (position 16) attends to x_1; output position 16 + i to x_i and x_{i+1}."""
    omega = torch.zeros(T, T)
    omega[N, 0] = 1
    for i in range(1, N):
        omega[N + i, i - 1 : i + 1] = 1
    return omega


class Stream(IterableDataset):
    """Fresh samples for every step, as in the paper."""

    def __init__(self, batch: int, seed: int) -> None:
        self.batch, self.seed = batch, seed

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            yield mws_batch(self.batch, gen)


class LinearAttention(nn.Module):
    """One head of causal *linear* attention: scores q·k/√d masked to the past, no softmax; returns (out, scores)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.proj = (nn.Linear(d, d) for _ in range(4))
        self.register_buffer("causal", torch.tril(torch.ones(T, T, dtype=torch.bool)), persistent=False)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        t = h.shape[1]
        scores = (self.q(h) @ self.k(h).transpose(1, 2)) / math.sqrt(h.shape[-1])
        scores = scores.masked_fill(~self.causal[:t, :t], 0.0)
        return self.proj(scores @ self.v(h)), scores.unsqueeze(1)


class Block(nn.Module):
    """Pre-norm block: linear attention and a GELU MLP."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(d), LinearAttention(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = h + self.attn(self.ln1(h))[0]
        return h + self.mlp(self.ln2(h))


class MWSModel(pl.LightningModule):
    """Embeddings, one block, final LayerNorm, bias-free head (minGPT initialisation, std 0.02)."""

    def __init__(self, d: int = 256, lr: float = 1e-4) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(P + 1, d), nn.Embedding(T, d)
        self.block, self.ln_f, self.head = Block(d), nn.LayerNorm(d), nn.Linear(d, P + 1, bias=False)
        self.lr = lr
        for name, param in self.named_parameters():
            if param.ndim == 2:
                std = 0.02 / math.sqrt(2) if name.endswith("proj.weight") or name.endswith("mlp.2.weight") else 0.02
                nn.init.normal_(param, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(param)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        return self.head(self.ln_f(self.block(h)))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:  # noqa: D102
        logits = self(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def adapter(model: MWSModel) -> ModuleAdapter:
    """Canonical capture names for MWSModel (the attention scores are the module's second output)."""
    points = {
        "blocks.0.attn.hook_pattern": ("block.attn", lambda out: out[1]),
        "blocks.0.hook_resid_post": "block",
        "ln_final.hook_normalized": "ln_f",
        "logits": "head",
    }
    return ModuleAdapter(model, points, n_layers=1, n_heads=1, vocab_size=P + 1)


def probes(seed: int) -> list:
    """The plateau probes, on one fixed batch of 64 task samples (seeded)."""
    probe_batch = mws_batch(64, torch.Generator().manual_seed(seed + 1))
    outputs = list(range(N + 1, 2 * N))  # output-predicting positions 17..31 (p_0 = 16 excluded, as the paper)
    return [
        CollapseProbe(probe_batch, positions=outputs, max_rows=64),
        RepetitionProbe(probe_batch, gen_len=N, max_rows=64),
        AttentionProgressProbe(target_map(), probe_batch, max_rows=64),
        RankProbe(probe_batch, positions=outputs, max_rows=64),
    ]


def train(args: argparse.Namespace) -> tuple[dict, list, Path]:
    """Fit with the monitor attached; returns the scalars read back from TensorBoard, the alerts and the run folder.

    Each run gets its own folder (``mws/version_<n>``), so a rerun never mixes its events with an earlier run's.
    """
    pl.seed_everything(args.seed, verbose=False)
    monitor = MechMonitor(probes=probes(args.seed), schedule=args.every, adapter=adapter, console=args.live)
    logger = TensorBoardLogger(args.out, name="mws")
    trainer = pl.Trainer(
        max_steps=args.max_steps,
        max_time={"minutes": args.max_minutes},
        accelerator="cpu",
        logger=logger,
        callbacks=[monitor],
        enable_progress_bar=not args.live,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=args.every,
    )
    trainer.fit(MWSModel(lr=args.lr), DataLoader(Stream(256, args.seed), batch_size=None))
    if trainer.global_step < args.max_steps:  # say it: a '-' below may only mean the run was cut short
        print(f"cut short: stopped at step {trainer.global_step} of {args.max_steps} by --max-minutes "
              f"{args.max_minutes:g}; events past it were never reached")  # fmt: skip
    scalars, _ = read_run(Path(logger.log_dir))
    return scalars, monitor.alerts, Path(logger.log_dir)


def report(scalars: dict, alerts: list, run: Path, out: Path) -> None:
    """Table of the three steps and a PNG of loss, mean cosine, repetition and APM against step."""
    first = {}
    for alert in alerts:
        first.setdefault(alert.rule, alert.step)
    loss = scalars["mechmon/repr_collapse/loss_nats"]
    drop = next((s for s, v in loss if v < 0.5 * math.log(P)), None)
    table = Table(title="moving-window sum (n = 16, p = 17): loss plateau")
    table.add_column("event")
    table.add_column("step", justify="right")
    table.add_row("plateau_start alert", str(first.get("plateau_start", "-")))
    table.add_row("plateau_exit alert", str(first.get("plateau_exit", "-")))
    table.add_row("loss drop (output loss < ln(17)/2)", str(drop or "-"))
    for rule in sorted(set(first) - {"plateau_start", "plateau_exit"}):
        table.add_row(f"{rule} alert", str(first[rule]))
    Console().print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(*zip(*loss, strict=True), color="black", label="output-token loss (nats)")
    ax.set(xlabel="step", ylabel="loss (nats)", title="moving-window sum: loss plateau and representation collapse")
    right = ax.twinx()
    for key, label in [
        ("repr_collapse/mean_cos", "mean cosine"),
        ("repetition/model_frac", "repetition frequency"),
        ("apm/score", "attention progress"),
    ]:
        right.plot(*zip(*scalars[f"mechmon/{key}"], strict=True), label=label)
    right.plot(*zip(*scalars["mechmon/repetition/data_frac"], strict=True), ls=":", label="repetition in the data")
    right.set(ylabel="cosine / fraction", ylim=(-0.05, 1.05))
    for rule, colour in [("plateau_start", "tab:red"), ("plateau_exit", "tab:green")]:
        if rule in first:
            ax.axvline(first[rule], color=colour, ls="--", label=f"{rule} alert")
    if drop is not None:
        ax.axvline(drop, color="grey", ls=":", label="loss drop")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center right", fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "loss_plateau.png", dpi=110)
    print(f"plot: {out / 'loss_plateau.png'}; TensorBoard: {runnable('tensorboard')} --logdir {run}")


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--max-minutes", type=float, default=4.5, help="wall-clock cap (default 4.5)")
    p.add_argument("--every", type=int, default=5, help="probe every N steps")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--live", action="store_true", help="live console table instead of the progress bar")
    p.add_argument("--out", type=Path, default=Path("runs/loss_plateau"))
    args = p.parse_args()
    report(*train(args), args.out)


if __name__ == "__main__":
    main()
