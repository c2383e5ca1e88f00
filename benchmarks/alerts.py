"""Alert quality: false alarms on healthy runs, and how early mechmon flags real pathologies.

    python benchmarks/alerts.py                                   # both parts (about 25 minutes on 2 cores)
    python benchmarks/alerts.py --parts pathologies               # the seven pathologies (about 8 minutes)
    python benchmarks/alerts.py --parts controls --archs llama --loops lightning --seeds 0 --steps 300

Part "controls", healthy runs: byte-level models built from HF configs (nothing downloaded), 2 layers, width 128,
4 heads, context 128, on windows of the Python standard library's own source (read from the running interpreter):
GPT-2 (learned positions), Llama (RoPE, SwiGLU) and Qwen2-MoE (4 experts, top-2), AdamW lr 1e-3, batch 16, through
Lightning (``MechMonitor``) and through the HF ``Trainer`` with gradient accumulation 4 and bf16
(``MechMonitorCallback``; ``hf-checkpointing`` adds gradient checkpointing), every probe that applies scheduled
every 25 steps (``--every``). On a healthy run every warning or critical alert is a false alarm; info alerts are
listed with their rule (an emergence may be real).

Part "pathologies" (``benchmarks/alert_runs.py``), each with a ground-truth onset the benchmark measures itself,
probes every 10 steps (``--every-pathology``; the plateau every 5 and the grokking task every 50, as in their
examples): attention-logit growth (Llama without qk-norm at lr 3e-2 against its
qk-norm twin), softmax collapse (the grokking task, float32 loss, no weight decay), the loss plateau of the
moving-window-sum task (its exit), induction emergence (the demo's curriculum), MoE routing collapse (top-1 of 8
experts, router at 100x the learning rate, no balancing loss), output-logit divergence (qk-norm model, learning
rate warmed up to 1.0, no z-loss) and an fp16 overflow (float16 autocast). The lead is the onset's step minus the
step of mechmon's first alert on the rules that name the pathology.

Both parts run three loss-based detectors, written here on the same per-step training loss: Lightning's
``SpikeDetection`` rule (running mean of 10, ``rtol`` 2), OLMo-core's (mean + 6 sigma of the last 128 losses) and
Megatron's rerun threshold (10 x the largest loss of the first 100 steps); a non-finite loss is an alarm for each.
Each part prints its table and writes it to ``docs/`` (``alert_benchmark.md``, ``alert_pathologies.md``).
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
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

ROOT = Path(__file__).resolve().parents[1]

from alert_runs import (  # noqa: E402
    CTX,
    DEMO,
    HEADS,
    LAYERS,
    PATHOLOGIES,
    WIDTH,
    CausalLM,
    Outcome,
    Trace,
    every_probe,
    fit,
    moe_config,
)

from mechmon import MechMonitor, every  # noqa: E402
from mechmon.events import load_run  # noqa: E402
from mechmon.hf import MechMonitorCallback  # noqa: E402

BATCH, LR, EVERY = 16, 1e-3, 25


def config(arch: str):
    """A byte-level HF config of ``arch``: ``gpt2``, ``llama`` (the demo's) or ``qwen2_moe`` (4 experts, top-2)."""
    return moe_config() if arch == "qwen2_moe" else DEMO.byte_config(arch, LAYERS, WIDTH, HEADS, CTX)


def probes(arch: str, text: torch.Tensor) -> list:
    """Every probe that applies, the text probes on 8 windows; routing for the MoE."""
    return every_probe(text, moe=arch == "qwen2_moe")


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


def run_lightning(arch: str, seed: int, steps: int, corpus: torch.Tensor, folder: str, gap: int):
    pl.seed_everything(seed, verbose=False)
    monitor = MechMonitor(probes=probes(arch, DEMO.text_windows(corpus, 8, CTX, 10_000 + seed)), schedule=every(gap))
    trace = Trace()
    model = AutoModelForCausalLM.from_config(config(arch))
    module = CausalLM(model, lambda m: torch.optim.AdamW(m.parameters(), lr=LR))  # torch's defaults otherwise
    fit(module, Windows(corpus, seed, as_dict=False), monitor, steps, trace, folder=folder, batch_size=BATCH)
    return monitor.alerts, trace.losses, load_run(Path(folder) / "mechmon").scalars


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
    detectors = alarms(losses)
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


def alarms(losses: list[float]) -> dict[str, list[int]]:
    """Each detector's alarm steps; a non-finite loss is an alarm for all (Lightning's ``finite_only`` default)."""
    bad = {i + 1 for i, loss in enumerate(losses) if not math.isfinite(loss)}
    return {name: sorted(set(fn(losses)) | bad) for name, fn in DETECTORS.items()}


def pathology_row(name: str, rules: tuple[str, ...], run: Outcome) -> dict:
    """One pathology: ground-truth onset, mechmon's first alert on its rules, each detector's first alarm, leads."""
    hit = next((a for a in run.alerts if a.rule in rules), None)
    loud = next((a for a in run.alerts if a.severity != "info"), None)
    firsts = {det: (steps[0] if steps else None) for det, steps in alarms(run.losses).items()}
    caught = [s for s in firsts.values() if s is not None]
    others = {}
    for a in run.alerts:
        if a.rule not in rules and a.severity != "info":
            others.setdefault(a.rule, f"{a.rule}@{a.step} ({a.severity})")
    return {
        "pathology": name,
        "onset (ground truth)": f"{run.onset if run.onset is not None else 'none'}: {run.truth}",
        "first mechmon alert": f"{hit.rule}@{hit.step} ({hit.severity})" if hit else "none",
        "lead over onset": _lead(hit, run.onset),
        "first warning or critical (lead)": f"{loud.rule}@{loud.step} ({_lead(loud, run.onset)})" if loud else "none",
        **{det: str(step) if step is not None else "none" for det, step in firsts.items()},
        "lead over first loss alarm": _lead(hit, min(caught)) if caught else "no loss alarm",
        "other warning/critical": ", ".join(others.values()) or "none",
        "steps": len(run.losses),
        "time": f"{run.seconds:.0f} s",
    }


def _lead(alert, step: int | None) -> str:
    """``step - alert.step``, signed (positive: mechmon first), or ``-`` when either is missing."""
    return "-" if alert is None or step is None else f"{step - alert.step:+d}"


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


def controls(args, corpus: torch.Tensor) -> str:
    """The healthy runs' table, and mechmon's warning or critical alerts on them counted per rule."""
    rows, false = [], Counter()
    for loop in args.loops:
        for arch in args.archs:
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as folder:
                    start = time.perf_counter()
                    alerts, losses, series = LOOPS[loop](arch, seed, args.steps, corpus, folder, args.every)
                    rows.append(row(loop, arch, seed, alerts, losses, series, time.perf_counter() - start))
                false.update(a.rule for a in alerts if a.severity in ("warning", "critical"))
                print(" | ".join(str(v) for v in rows[-1].values()), flush=True)
    per_rule = ", ".join(f"{rule}: {n}" for rule, n in false.most_common()) or "none from any rule"
    return f"{table(rows)}\n\nFalse alarms (warning or critical) over these runs, per rule: {per_rule}."


def pathologies(args, corpus: torch.Tensor) -> str:
    """The pathology runs' table."""
    rows, lists = [], []
    for name in args.pathologies:
        run, rules = PATHOLOGIES[name]
        outcome = run(corpus, args.seeds[0], args.every_pathology)
        rows.append(pathology_row(name, rules, outcome))
        print(" | ".join(str(v) for v in rows[-1].values()), flush=True)
        lists.append(f"- {name}: " + (", ".join(f"{a.rule}@{a.step} ({a.severity})" for a in outcome.alerts) or "none"))
    return table(rows) + "\n\nEvery alert of each run, in order:\n\n" + "\n".join(lists)


PARTS = {
    "controls": (controls, "alert_benchmark.md", "healthy controls", "Counts are critical/warning/info; the "
                 "loss-based columns count the steps each detector flags on the same per-step training loss; "
                 '"keys measured" counts the mechmon series whose last value is finite.'),
    "pathologies": (pathologies, "alert_pathologies.md", "pathologies", "Onsets are measured by the benchmark, "
                    "not by mechmon; a lead is the onset's (or the loss alarm's) step minus mechmon's first alert's "
                    "step on the rules that name the pathology: positive means mechmon came first."),
}  # fmt: skip


def main() -> None:  # noqa: D103
    global LR  # the runs read it: a setting of the whole benchmark
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    p.add_argument("--archs", nargs="+", default=["gpt2", "llama", "qwen2_moe"])
    p.add_argument("--loops", nargs="+", choices=list(LOOPS), default=["lightning", "hf"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="controls' seeds; pathologies take the first")
    p.add_argument("--steps", type=int, default=600, help="controls' optimizer steps (600)")
    p.add_argument("--every", type=int, default=EVERY, help="controls: evaluate every N steps (25)")
    p.add_argument("--every-pathology", type=int, default=10, help="pathologies: evaluate every N steps (10)")
    p.add_argument("--pathologies", nargs="+", choices=list(PATHOLOGIES), default=list(PATHOLOGIES))
    p.add_argument("--lr", type=float, default=LR, help="controls' AdamW learning rate (1e-3)")
    p.add_argument("--docs", type=Path, default=ROOT / "docs", help="folder the tables are written to")
    args = p.parse_args()
    LR = args.lr
    warnings.filterwarnings("ignore")
    corpus = DEMO.read_corpus(None, 4_000_000)
    for part in args.parts:
        make, name, title, legend = PARTS[part]
        start = time.perf_counter()
        text = make(args, corpus)
        print(f"\n{text}\n\n{part}: {time.perf_counter() - start:.0f} s")
        out = args.docs / name
        command = f"python benchmarks/alerts.py {' '.join(sys.argv[1:])}".strip()
        out.write_text(f"# Alert benchmark: {title}\n\n`{command}`. {legend}\n\n{text}\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
