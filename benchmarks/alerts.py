"""Alert quality: false alarms on healthy runs, mechmon's and the loss-based detectors' (part "controls").

    python benchmarks/alerts.py                                   # every control: 3 architectures, 2 loops
    python benchmarks/alerts.py --archs llama --loops lightning --seeds 0 --steps 300

Healthy controls: byte-level models built from HF configs (nothing downloaded), 2 layers, width 128, 4 heads,
context 128, on windows of the Python standard library's own source (read from the running interpreter): GPT-2
(learned positions), Llama (RoPE, SwiGLU) and Qwen2-MoE (4 experts, top-2), AdamW lr 1e-3, batch 16, through
Lightning (``MechMonitor``) and through the HF ``Trainer`` with gradient accumulation 4 and bf16
(``MechMonitorCallback``; ``hf-checkpointing`` adds gradient checkpointing), every probe that applies scheduled
every 25 steps (``--every``).

Printed (and written to ``--out``, default ``docs/alert_benchmark.md``): per run, the alerts mechmon raised by
severity, and the alarms of three loss-based detectors written here on the same per-step training loss:
Lightning's ``SpikeDetection`` rule (running mean of 10, ``rtol`` 2), OLMo-core's (mean + 6 sigma of the last 128
losses) and Megatron's rerun threshold (10 x the largest loss of the first 100 steps). On a healthy run every
warning or critical alert is a false alarm; info alerts are listed with their rule (an emergence may be real).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import torch
from transformers import AutoModelForCausalLM, Qwen2MoeConfig, Trainer, TrainingArguments

ROOT = Path(__file__).resolve().parents[1]

from examples_module import load_example  # noqa: E402

from mechmon import (  # noqa: E402
    AttentionEntropyProbe,
    AttentionLogitProbe,
    AttentionSinkProbe,
    CollapseProbe,
    InductionProbe,
    LogitsProbe,
    MassiveActivationProbe,
    MechMonitor,
    NLMProbe,
    PrefixMatchingProbe,
    RankProbe,
    RoutingProbe,
    WeightsProbe,
    every,
)
from mechmon.events import load_run  # noqa: E402
from mechmon.hf import MechMonitorCallback  # noqa: E402

CTX, WIDTH, LAYERS, HEADS, BATCH, LR, EVERY = 128, 128, 2, 4, 16, 1e-3, 25


DEMO = load_example("stdlib_induction")


def config(arch: str):
    """A byte-level HF config of ``arch``: ``gpt2``, ``llama`` (the demo's) or ``qwen2_moe``."""
    if arch != "qwen2_moe":
        return DEMO.byte_config(arch, LAYERS, WIDTH, HEADS, CTX)
    return Qwen2MoeConfig(
        vocab_size=256,
        hidden_size=WIDTH,
        intermediate_size=4 * WIDTH,
        moe_intermediate_size=2 * WIDTH,
        shared_expert_intermediate_size=2 * WIDTH,
        num_experts=4,
        num_experts_per_tok=2,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=CTX,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )


def probes(arch: str, text: torch.Tensor) -> list:
    """Every probe that applies: the defaults, the plateau and attention-side ones on 8 text windows, routing."""
    found = [
        InductionProbe(),
        PrefixMatchingProbe(),
        LogitsProbe(),
        WeightsProbe(),
        NLMProbe(),
        CollapseProbe(text),
        RankProbe(text),
        AttentionLogitProbe(text),
        AttentionEntropyProbe(text),
        AttentionSinkProbe(text),
        MassiveActivationProbe(text),
    ]
    return found + ([RoutingProbe()] if arch == "qwen2_moe" else [])


class Windows(torch.utils.data.IterableDataset):
    """Endless random text windows ``[CTX]`` of the corpus (seeded); dicts for the HF ``Trainer``."""

    def __init__(self, corpus: torch.Tensor, seed: int, as_dict: bool) -> None:
        self.corpus, self.seed, self.as_dict = corpus, seed, as_dict

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            start = int(torch.randint(len(self.corpus) - CTX, (1,), generator=gen))
            row = self.corpus[start : start + CTX]
            yield {"input_ids": row, "labels": row} if self.as_dict else row


class LM(pl.LightningModule):
    """The HF model under Lightning; logs its training loss per step."""

    def __init__(self, arch: str, losses: list[float]) -> None:
        super().__init__()
        self.model, self.losses = AutoModelForCausalLM.from_config(config(arch)), losses

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:  # noqa: D102
        loss = self.model(input_ids=batch, labels=batch).loss
        self.losses.append(loss.item())  # benchmark-side: the loss-based detectors read it
        return loss

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.AdamW(self.parameters(), lr=LR)


def run_lightning(arch: str, seed: int, steps: int, corpus: torch.Tensor, folder: str, gap: int):
    pl.seed_everything(seed, verbose=False)
    losses: list[float] = []
    monitor = MechMonitor(probes=probes(arch, DEMO.text_windows(corpus, 8, CTX, 10_000 + seed)), schedule=every(gap))
    loader = torch.utils.data.DataLoader(Windows(corpus, seed, as_dict=False), batch_size=BATCH)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    trainer.fit(LM(arch, losses), loader)
    return monitor.alerts, losses, load_run(Path(folder) / "mechmon").scalars


def run_hf(arch: str, seed: int, steps: int, corpus: torch.Tensor, folder: str, gap: int, checkpointing=False):
    from transformers import PrinterCallback, TrainerCallback

    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config(arch))
    callback = MechMonitorCallback(
        probes=probes(arch, DEMO.text_windows(corpus, 8, CTX, 10_000 + seed)), schedule=every(gap)
    )
    args = TrainingArguments(
        output_dir=folder,
        max_steps=steps,
        per_device_train_batch_size=BATCH // 4,
        gradient_accumulation_steps=4,
        learning_rate=LR,
        lr_scheduler_type="constant",
        bf16=True,
        gradient_checkpointing=checkpointing,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Windows(corpus, seed, as_dict=True), callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # one dict per step on stdout otherwise
    trainer.add_callback(Losses())
    trainer.train()
    return callback.alerts, losses, load_run(Path(folder) / "mechmon").scalars


# -- loss-based detectors (baselines, written here on purpose: not part of mechmon) ------------------------------
def lightning_spike(losses: list[float], window: int = 10, rtol: float = 2.0) -> list[int]:
    """Steps where the loss exceeds the running mean of the previous ``window`` by ``rtol`` x that mean."""
    out = []
    for i in range(1, len(losses)):
        mean = statistics.fmean(losses[max(0, i - window) : i])
        if losses[i] - mean >= rtol * mean:
            out.append(i + 1)
    return out


def olmo_spike(losses: list[float], window: int = 128, sigmas: float = 6.0) -> list[int]:
    """Steps where the loss exceeds the mean + ``sigmas`` standard deviations of the previous ``window``."""
    out = []
    for i in range(window, len(losses)):
        recent = losses[i - window : i]
        if losses[i] > statistics.fmean(recent) + sigmas * statistics.pstdev(recent):
            out.append(i + 1)
    return out


def megatron_spike(losses: list[float], first: int = 100, factor: float = 10.0) -> list[int]:
    """Steps after the first ``first`` where the loss exceeds ``factor`` x the largest of those first losses."""
    if len(losses) <= first:
        return []
    level = factor * max(losses[:first])
    return [i + 1 for i in range(first, len(losses)) if losses[i] > level]


def row(loop: str, arch: str, seed: int, alerts, losses: list[float], series: dict, seconds: float) -> dict:
    by = Counter(a.severity for a in alerts)
    false = [f"{a.rule}@{a.step}" for a in alerts if a.severity in ("warning", "critical")]
    info = sorted({a.rule for a in alerts if a.severity == "info"})
    detectors = {name: fn(losses) for name, fn in DETECTORS.items()}
    return {
        "run": f"{arch} / {loop} / seed {seed}",
        "steps": len(losses),
        "final loss": f"{statistics.fmean(losses[-20:]):.3f}" if losses else "-",
        "keys measured": sum(1 for values in series.values() if math.isfinite(values[-1][1])),
        "RankMe: first, trough, last": _path(series.get("mechmon/repr_rank/rankme", [])),
        "mechmon false alarms": ", ".join(false) or "none",
        "info": ", ".join(info) or "-",
        "counts": f"{by['critical']}/{by['warning']}/{by['info']}",
        **{name: (f"{len(hits)} (first {hits[0]})" if hits else "0") for name, hits in detectors.items()},
        "time": f"{seconds:.0f} s",
    }


def _path(values: list[tuple[int, float]]) -> str:
    """``first -> lowest@step -> last`` of a series."""
    if not values:
        return "-"
    low = min(values, key=lambda sv: sv[1])
    return f"{values[0][1]:.1f} → {low[1]:.1f}@{low[0]} → {values[-1][1]:.1f}"


DETECTORS = {"Lightning spike": lightning_spike, "OLMo 6σ": olmo_spike, "Megatron 10×": megatron_spike}
LOOPS = {
    "lightning": run_lightning,
    "hf": run_hf,
    "hf-checkpointing": lambda *args: run_hf(*args, checkpointing=True),
}


def table(rows: list[dict]) -> str:
    heads = list(rows[0])
    lines = ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    lines += ["| " + " | ".join(str(r[h]) for h in heads) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:  # noqa: D103
    global LR  # the runs read it: a setting of the whole benchmark
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["gpt2", "llama", "qwen2_moe"])
    p.add_argument("--loops", nargs="+", choices=list(LOOPS), default=["lightning", "hf"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=EVERY, help="evaluate every N steps (25)")
    p.add_argument("--lr", type=float, default=LR, help="AdamW learning rate (1e-3)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "alert_benchmark.md")
    args = p.parse_args()
    LR = args.lr
    warnings.filterwarnings("ignore")
    corpus = DEMO.read_corpus(None, 4_000_000)
    rows = []
    for loop in args.loops:
        for arch in args.archs:
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as folder:
                    start = time.perf_counter()
                    alerts, losses, series = LOOPS[loop](arch, seed, args.steps, corpus, folder, args.every)
                    rows.append(row(loop, arch, seed, alerts, losses, series, time.perf_counter() - start))
                print(" | ".join(str(v) for v in rows[-1].values()), flush=True)
    text = table(rows)
    print("\n" + text)
    args.out.write_text(
        "# Alert benchmark: healthy controls\n\n"
        f"`python benchmarks/alerts.py {' '.join(sys.argv[1:])}`. Counts are critical/warning/info; the loss-based "
        'columns count the steps each detector flags on the same per-step training loss; "keys measured" counts '
        f"the mechmon series whose last value is finite.\n\n{text}\n"
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
