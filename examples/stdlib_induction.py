"""Watch induction heads form while a small Llama-style model learns the Python standard library's source.

Trains an HF causal LM built from a config (2 layers, width 128, 4 heads, rotary positions, byte vocabulary;
nothing downloaded) on the bytes of the running interpreter's stdlib (or ``--text PATH``) with Lightning, with
MechMonitor attached. Natural text alone does not form induction heads within minutes on a CPU, so part of the
sequences are forward-copy snippets: a random block of 10-64 byte tokens repeated to fill the context (the
forward-copy half of the Bi-Induct rewrite, "Induction Signatures Are Not Enough"). A curriculum sets the share:
every sequence is a snippet at step 1, and the share falls linearly to half by step 400, where it stays; the other
half is real text. The run stops 150 steps after the emergence alert (``--stop-after``), or at ``--max-steps``.

    python examples/stdlib_induction.py                              # the emergence alert at step 450
    python examples/stdlib_induction.py --copy-start 0.5 --copy-steps 0   # the constant half-and-half mix
    python examples/stdlib_induction.py --text ~/books --copy-frac 0 --copy-start 0 --max-steps 500
"""

from __future__ import annotations

import argparse
import logging
import os
import sysconfig
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from torch.utils.data import DataLoader, IterableDataset
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

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
from mechmon.cli import runnable

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
    """Endless batches ``[B, T]``: random text windows, a fraction replaced by forward-copy snippets.

    The fraction starts at ``copy_start`` and falls linearly to ``copy_frac`` over the first ``copy_steps`` batches
    (a curriculum: copying is learned first, then the text share grows).
    """

    def __init__(
        self,
        corpus: torch.Tensor,
        batch: int,
        ctx: int,
        copy_frac: float,
        seed: int,
        copy_start: float | None = None,
        copy_steps: int = 0,
    ) -> None:
        self.corpus, self.batch, self.ctx, self.copy_frac, self.seed = corpus, batch, ctx, copy_frac, seed
        self.copy_start, self.copy_steps = copy_frac if copy_start is None else copy_start, copy_steps

    def share(self, i: int) -> float:
        """The share of copy sequences in batch ``i``."""
        done = min(i / self.copy_steps, 1.0) if self.copy_steps else 1.0
        return self.copy_start + (self.copy_frac - self.copy_start) * done

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        pos = torch.arange(self.ctx)
        i = 0
        while True:
            i += 1
            starts = torch.randint(len(self.corpus) - self.ctx, (self.batch, 1), generator=gen)
            text = self.corpus[starts + pos]
            period = torch.randint(10, 65, (self.batch, 1), generator=gen)
            block = torch.randint(1, 256, (self.batch, 64), generator=gen)
            copies = block.gather(1, pos.expand(self.batch, -1) % period)
            use_copy = torch.rand(self.batch, 1, generator=gen) < self.share(i)
            yield torch.where(use_copy, copies, text)


def byte_config(arch: str, layers: int, width: int, heads: int, ctx: int):
    """An HF config for a byte-level model: ``"llama"`` (rotary positions, SwiGLU) or ``"gpt2"`` (learned positions).

    No pad token: nothing is padded here (transformers would warn about possible padding).
    """
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=256, n_positions=ctx, n_embd=width, n_layer=layers, n_head=heads, bos_token_id=0, eos_token_id=0
        )
    return LlamaConfig(
        vocab_size=256,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=ctx,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )


class ByteLM(pl.LightningModule):
    """A small HF causal LM over bytes; ``training_step`` returns only the loss."""

    def __init__(self, layers: int, width: int, heads: int, ctx: int, lr: float, arch: str = "llama") -> None:
        super().__init__()
        self.model = AutoModelForCausalLM.from_config(byte_config(arch, layers, width, heads, ctx))
        self.model.loss_type = "ForCausalLM"  # named, so transformers does not note that it picked the default
        self.lr = lr

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:  # noqa: D102
        loss = self.model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch).loss  # no padding
        self.log("train_loss", loss, prog_bar=True)
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
    p.add_argument("--copy-frac", type=float, default=0.5, help="share of copy sequences after the curriculum (0.5)")
    p.add_argument("--copy-start", type=float, default=1.0, help="share at step 1, falling to --copy-frac (1.0)")
    p.add_argument("--copy-steps", type=int, default=400, help="steps over which the share falls (400; 0: constant)")
    p.add_argument("--max-steps", type=int, default=2000, help="optimizer steps at most (default 2000)")
    p.add_argument("--max-minutes", type=float, default=None, help="optional wall-clock cap in minutes (none)")
    p.add_argument("--every", type=int, default=50, help="probe every N optimizer steps (default 50)")
    p.add_argument("--stop-after", type=int, default=150, help="steps to go on after the emergence alert (0: no stop)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--arch", choices=["llama", "gpt2"], default="llama", help="model family (default llama: RoPE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: the cores other jobs leave free, at least 1)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="TensorBoard root (default ./runs)")
    p.add_argument("--no-monitor", action="store_true", help="train without MechMonitor (overhead baseline)")
    p.add_argument("--panel", action="store_true", help="mechmon's live panel instead of Lightning's progress bar")
    return p.parse_args()


def quiet_third_party_notes() -> None:
    """Silence the two notes this example cannot fix at their cause.

    Lightning's litlogger tip, and a deprecation inside Lightning's own pytree helper (the run uses neither).
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def free_cores(window: float = 0.5) -> int:
    """Cores not busy with other jobs right now (sampled over ``window`` seconds), at least 1.

    Two jobs that each use every core slow each other down far more than sharing them (their threads wait).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def times() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]

    try:
        first = times()
        time.sleep(window)
        delta = [b - a for a, b in zip(first, times(), strict=True)]
    except OSError:  # not Linux: the 1-minute load average
        return max(1, round(cores - os.getloadavg()[0]))
    busy = 1 - (delta[3] + delta[4]) / max(sum(delta), 1)  # idle and iowait
    return max(1, round(cores * (1 - busy)))


def main() -> None:  # noqa: D103
    quiet_third_party_notes()
    args = parse_args()
    torch.set_num_threads(args.threads or free_cores())
    pl.seed_everything(args.seed, verbose=False)
    corpus = read_corpus(args.text, max_bytes=16_000_000)
    batches = Batches(corpus, args.batch, args.ctx, args.copy_frac, args.seed, args.copy_start, args.copy_steps)
    data = DataLoader(batches, batch_size=None)
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
        console=True if args.panel else None,  # None: inside the progress bar in a terminal, alert lines when piped
        on_alert=[lambda a: fired_at.setdefault(f"{a.rule}@{a.step}", time.perf_counter() - start), stopper.on_alert],
    )
    logger = TensorBoardLogger(args.out, name="stdlib_induction")
    trainer = pl.Trainer(
        max_steps=args.max_steps,
        max_time=None if args.max_minutes is None else {"minutes": args.max_minutes},
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[] if args.no_monitor else [monitor, stopper],
        enable_progress_bar=not args.panel,
        enable_checkpointing=False,
        log_every_n_steps=args.every,
        enable_model_summary=False,
    )
    share = f"{args.copy_start:g} -> {args.copy_frac:g} over {args.copy_steps} steps"
    print(
        f"corpus: {len(corpus):,} bytes; copy share {share}; {torch.get_num_threads()} threads; logs: {logger.log_dir}"
    )
    trainer.fit(ByteLM(2, 128, 4, args.ctx, args.lr, args.arch), data)
    wall = time.perf_counter() - start
    print(f"trained {trainer.global_step} steps in {wall:.1f} s ({trainer.global_step / wall:.2f} steps/s)")
    for name, seconds in fired_at.items():
        print(f"alert {name} fired after {seconds:.1f} s of wall time")
    if not args.no_monitor:  # what matters last on screen: the alerts, then where to see more
        print(f"alerts ({len(monitor.alerts)}):" if monitor.alerts else "no alert fired")
        console = Console(highlight=False)  # one line per alert, cut to the terminal's width
        for alert in monitor.alerts:
            line = f"  step {alert.step:>5}  {alert.rule}: {alert.reason.splitlines()[0]}"
            console.print(line, markup=False, no_wrap=True, overflow="ellipsis")
    print(f"every latest value: {runnable('mechmon')} summary {logger.log_dir}")
    print(f"TensorBoard, Custom Scalars tab: {runnable('tensorboard')} --logdir {logger.log_dir}")


if __name__ == "__main__":
    main()
