"""Watch induction heads form while a small GPT-2 learns the Python standard library's source.

Trains an HF GPT-2 (built from a config, nothing downloaded) on the bytes of the running interpreter's stdlib
(or ``--text PATH``) with Lightning, with MechMonitor attached. Natural text alone does not form induction heads
within minutes on a CPU (on 2 cores, none formed in 10 minutes of text alone), so by default half of the sequences
are forward-copy snippets: a random
block of 10-64 byte tokens repeated to fill the context (the forward-copy half of the Bi-Induct rewrite,
"Induction Signatures Are Not Enough"). ``--copy-frac 0`` trains on text only.

    python examples/stdlib_induction.py                 # defaults: about 8-9 minutes on 2 CPU cores
    python examples/stdlib_induction.py --text ~/books --copy-frac 0 --max-steps 500
"""

from __future__ import annotations

import argparse
import logging
import sysconfig
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, IterableDataset
from transformers import GPT2Config, GPT2LMHeadModel

from mechmon import (
    AttentionEntropyProbe,
    AttentionLogitProbe,
    AttentionSinkProbe,
    CollapseProbe,
    InductionProbe,
    LogitsProbe,
    MassiveActivationProbe,
    MechMonitor,
    PrefixMatchingProbe,
    RankProbe,
)
from mechmon.cli import print_summary

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def read_corpus(path: Path | None, max_bytes: int) -> torch.Tensor:
    """Byte tokens of a text file or of every file under a folder (default: the stdlib's ``.py`` sources)."""
    root = path or Path(sysconfig.get_paths()["stdlib"])
    files = [root] if root.is_file() else sorted(root.rglob("*" if path else "*.py"))
    chunks, total = [], 0
    for file in files:
        if not file.is_file() or SKIP_DIRS & set(file.relative_to(root).parts if file != root else ()):
            continue
        data = file.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    if total < 10_000:
        raise SystemExit(f"found only {total} bytes of text under {root}")
    return torch.frombuffer(bytearray(b"".join(chunks)[:max_bytes]), dtype=torch.uint8).long()


def text_windows(corpus: torch.Tensor, rows: int, ctx: int, seed: int) -> torch.Tensor:
    """``[rows, ctx]`` random windows of the corpus (seeded)."""
    starts = torch.randint(len(corpus) - ctx, (rows, 1), generator=torch.Generator().manual_seed(seed))
    return corpus[starts + torch.arange(ctx)]


class Batches(IterableDataset):
    """Endless batches ``[B, T]``: random text windows, a fraction replaced by forward-copy snippets."""

    def __init__(self, corpus: torch.Tensor, batch: int, ctx: int, copy_frac: float, seed: int) -> None:
        self.corpus, self.batch, self.ctx, self.copy_frac, self.seed = corpus, batch, ctx, copy_frac, seed

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        pos = torch.arange(self.ctx)
        while True:
            starts = torch.randint(len(self.corpus) - self.ctx, (self.batch, 1), generator=gen)
            text = self.corpus[starts + pos]
            period = torch.randint(10, 65, (self.batch, 1), generator=gen)
            block = torch.randint(1, 256, (self.batch, 64), generator=gen)
            copies = block.gather(1, pos.expand(self.batch, -1) % period)
            use_copy = torch.rand(self.batch, 1, generator=gen) < self.copy_frac
            yield torch.where(use_copy, copies, text)


class ByteGPT(pl.LightningModule):
    """A 2-layer GPT-2 over bytes; ``training_step`` returns only the loss."""

    def __init__(self, layers: int, width: int, heads: int, ctx: int, lr: float) -> None:
        super().__init__()
        cfg = GPT2Config(
            vocab_size=256,
            n_positions=ctx,
            n_embd=width,
            n_layer=layers,
            n_head=heads,
            bos_token_id=0,
            eos_token_id=0,
        )  # no pad_token_id: nothing is padded here (transformers would warn about possible padding)
        self.model, self.lr = GPT2LMHeadModel(cfg), lr
        self.model.loss_type = "ForCausalLM"  # named, so transformers does not note that it picked the default

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:  # noqa: D102
        loss = self.model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch).loss  # no padding
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class StopAfterEmergence(pl.Callback):
    """Ends the fit ``extra`` optimizer steps after the induction-emergence alert (the curve is shown by then)."""

    def __init__(self, extra: int) -> None:
        self.extra, self.fired_step = extra, None

    def on_alert(self, alert) -> None:  # noqa: D102
        if alert.rule == "induction_emergence" and self.fired_step is None:
            self.fired_step = alert.step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: D102
        if self.extra and self.fired_step is not None and trainer.global_step >= self.fired_step + self.extra:
            trainer.should_stop = True


def parse_args() -> argparse.Namespace:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, help="text file or folder (default: the stdlib's source)")
    p.add_argument("--copy-frac", type=float, default=0.5, help="share of forward-copy sequences (default 0.5)")
    p.add_argument("--max-steps", type=int, default=3000, help="optimizer steps (default 3000)")
    p.add_argument("--max-minutes", type=float, default=9.5, help="wall-clock cap in minutes (default 9.5)")
    p.add_argument("--every", type=int, default=50, help="probe every N optimizer steps (default 50)")
    p.add_argument("--stop-after", type=int, default=300, help="steps to go on after the emergence alert (0: no stop)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs"), help="TensorBoard root (default ./runs)")
    p.add_argument("--no-monitor", action="store_true", help="train without MechMonitor (overhead baseline)")
    p.add_argument("--no-live", action="store_true", help="no live console table")
    return p.parse_args()


def quiet_third_party_notes() -> None:
    """Silence the two notes this example cannot fix at their cause.

    Lightning's litlogger tip, and a deprecation inside Lightning's own pytree helper (the run uses neither).
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def main() -> None:  # noqa: D103
    quiet_third_party_notes()
    args = parse_args()
    pl.seed_everything(args.seed, verbose=False)
    corpus = read_corpus(args.text, max_bytes=16_000_000)
    data = DataLoader(Batches(corpus, args.batch, args.ctx, args.copy_frac, args.seed), batch_size=None)
    start = time.perf_counter()
    fired_at: dict[str, float] = {}
    stopper = StopAfterEmergence(args.stop_after)
    text_rows = text_windows(corpus, 8, args.ctx, args.seed + 1)  # representation probes read real text only
    monitor = MechMonitor(
        probes=[
            InductionProbe(period=50, batch_size=10),
            LogitsProbe(),
            CollapseProbe(text_rows),
            RankProbe(text_rows),
            PrefixMatchingProbe(period=25, batch_size=10),
            AttentionLogitProbe(text_rows),
            AttentionEntropyProbe(text_rows),
            AttentionSinkProbe(text_rows),
            MassiveActivationProbe(text_rows),
        ],
        schedule=args.every,
        console=not args.no_live,
        on_alert=[lambda a: fired_at.setdefault(f"{a.rule}@{a.step}", time.perf_counter() - start), stopper.on_alert],
    )
    logger = TensorBoardLogger(args.out, name="stdlib_induction")
    trainer = pl.Trainer(
        max_steps=args.max_steps,
        max_time={"minutes": args.max_minutes},
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[] if args.no_monitor else [monitor, stopper],
        enable_progress_bar=args.no_live and not args.no_monitor,
        enable_checkpointing=False,
        log_every_n_steps=args.every,
        enable_model_summary=False,
    )
    print(f"corpus: {len(corpus):,} bytes; copy fraction {args.copy_frac}; logs: {logger.log_dir}")
    trainer.fit(ByteGPT(2, 128, 4, args.ctx, args.lr), data)
    wall = time.perf_counter() - start
    print(f"trained {trainer.global_step} steps in {wall:.1f} s ({trainer.global_step / wall:.2f} steps/s)")
    for name, seconds in fired_at.items():
        print(f"alert {name} fired after {seconds:.1f} s of wall time")
    if not args.no_monitor:
        print_summary(Path(logger.log_dir))
    print(f"run folder: {logger.log_dir}\n  tensorboard --logdir {logger.log_dir}")


if __name__ == "__main__":
    main()
