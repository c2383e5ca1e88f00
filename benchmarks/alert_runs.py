"""The runs of ``benchmarks/alerts.py``: the probe set, one Lightning fit with a loss trace, and the pathologies.

Each pathology returns its per-step training loss, mechmon's alerts and a ground-truth onset that this file measures
itself, from something other than mechmon (a twin run's loss, a held-out evaluation, a gradient norm, the loss).
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from examples_module import load_example
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, Qwen2MoeConfig

from mechmon import (
    AttentionEntropyProbe,
    AttentionLogitProbe,
    AttentionSinkProbe,
    CollapseProbe,
    InductionProbe,
    LogitsProbe,
    MassiveActivationProbe,
    MechMonitor,
    ModuleAdapter,
    NLMProbe,
    PrefixMatchingProbe,
    RankProbe,
    RoutingProbe,
    WeightsProbe,
    every,
)

CTX, WIDTH, LAYERS, HEADS = 128, 128, 2, 4
DEMO = load_example("stdlib_induction")
ATTN = load_example("attention_instability")
GROK = load_example("grokking_collapse")
PLATEAU = load_example("loss_plateau")


def every_probe(text: torch.Tensor, moe: bool = False) -> list:
    """Every probe that applies to a decoder: the defaults, the representation and attention probes on ``text``."""
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
    return found + ([RoutingProbe()] if moe else [])


def moe_config(experts: int = 4, top_k: int = 2) -> Qwen2MoeConfig:
    """A byte-level Qwen2-MoE of the benchmark's shape (no load-balancing loss: ``output_router_logits`` is off)."""
    return Qwen2MoeConfig(
        vocab_size=256,
        hidden_size=WIDTH,
        intermediate_size=4 * WIDTH,
        moe_intermediate_size=2 * WIDTH,
        shared_expert_intermediate_size=2 * WIDTH,
        num_experts=experts,
        num_experts_per_tok=top_k,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=CTX,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )


class CausalLM(pl.LightningModule):
    """An HF causal LM under Lightning: optimizer from ``optimizer(model)``, forward under ``autocast`` if given."""

    def __init__(self, model, optimizer: Callable, autocast: torch.dtype | None = None) -> None:
        super().__init__()
        self.model, self.optimizer, self.autocast = model, optimizer, autocast

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:  # noqa: D102
        with torch.autocast("cpu", dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            return self.model(input_ids=batch, labels=batch).loss.float()

    def configure_optimizers(self):  # noqa: D102
        return self.optimizer(self.model)


class Trace(pl.Callback):
    """Per-step training loss; every ``period`` steps ``measure(module)`` (the ground truth), after the step.

    Ends the fit ``after`` steps past the first non-finite loss (nothing more to see, and NaN steps are slow).
    Listed after the monitor, so its held-out forwards run once mechmon is done with the step.
    """

    def __init__(self, measure: Callable | None = None, period: int = 1, after: int = 10) -> None:
        self.measure, self.period, self.after = measure, period, after
        self.losses: list[float] = []
        self.truth: dict[int, float] = {}
        self.first_bad: int | None = None  # 1-based step of the first non-finite loss

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: D102
        self.losses.append(float(outputs["loss"]))  # benchmark-side sync: the loss-based detectors read it
        step = trainer.global_step
        if self.measure is not None and (step == 1 or step % self.period == 0):
            with torch.no_grad():
                self.truth[step] = float(self.measure(module))
        if self.first_bad is None and not math.isfinite(self.losses[-1]):
            self.first_bad = len(self.losses)
        if self.first_bad is not None and len(self.losses) - self.first_bad >= self.after:
            trainer.should_stop = True


def fit(
    module: pl.LightningModule,
    data,
    monitor: MechMonitor | None,
    steps: int,
    trace: Trace,
    folder: str | None = None,
    batch_size: int | None = None,
) -> float:
    """``steps`` optimizer steps of ``module`` on ``data`` on the CPU; returns the wall time in seconds.

    ``folder``: the trainer's root, where mechmon writes its events (default: a temporary one, removed after);
    ``batch_size``: rows per batch when ``data`` yields single rows (``None``: it yields batches).
    """
    temporary = tempfile.TemporaryDirectory() if folder is None else None
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        default_root_dir=folder or temporary.name,
        callbacks=[c for c in (monitor, trace) if c is not None],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(data, batch_size=batch_size))
    seconds = time.perf_counter() - start
    if temporary is not None:
        temporary.cleanup()
    return seconds


@dataclass
class Outcome:
    """One pathology run: its loss, mechmon's alerts, the ground-truth onset (``None``: never) and how it was read."""

    losses: list[float]
    alerts: list
    onset: int | None
    truth: str
    seconds: float
    measured: dict[int, float] = field(default_factory=dict)  # the ground-truth measure by step, where there is one


def outcome(trace: Trace, monitor: MechMonitor, onset: int | None, truth: str, seconds: float) -> Outcome:
    """The run's :class:`Outcome` from its trace and monitor."""
    return Outcome(trace.losses, monitor.alerts, onset, truth, seconds, trace.truth)


def adamw(lr: float, betas=(0.9, 0.95), warmup: int = 0, groups: Callable | None = None) -> Callable:
    """An optimizer factory: AdamW without weight decay, optional linear warm-up, optional parameter groups."""

    def make(model):
        opt = torch.optim.AdamW(groups(model) if groups else model.parameters(), lr=lr, betas=betas, weight_decay=0.0)
        if not warmup:
            return opt
        ramp = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": ramp, "interval": "step"}}

    return make


def text_monitor(corpus: torch.Tensor, seed: int, gap: int, moe: bool = False) -> MechMonitor:
    """The monitor with every probe that applies, its text probes on 8 fixed windows."""
    rows = DEMO.text_windows(corpus, 8, CTX, 10_000 + seed)
    return MechMonitor(probes=every_probe(rows, moe), schedule=every(gap))


def first(steps: dict[int, float], test: Callable[[float], bool]) -> int | None:
    """The first step of ``steps`` (sorted) whose value passes ``test``."""
    return next((s for s in sorted(steps) if test(steps[s])), None)


def means(losses: list[float], width: int) -> dict[int, float]:
    """Mean of each ``width`` steps of a per-step loss, keyed by the block's last step (1-based)."""
    return {i + width: sum(losses[i : i + width]) / width for i in range(0, len(losses) - width + 1, width)}


# -- the pathologies -------------------------------------------------------------------------------------------
def attention_logits(corpus: torch.Tensor, seed: int, gap: int) -> Outcome:
    """Llama without qk-norm at lr 3e-2; onset: its 10-step mean loss stays 0.1 nats behind its qk-norm twin's."""
    steps, batch = 200, 32
    runs = {}
    for kind in ("llama", "qwen3"):
        pl.seed_everything(seed, verbose=False)
        trace = Trace()
        monitor = text_monitor(corpus, seed, gap) if kind == "llama" else None
        module = CausalLM(ATTN.build(kind, CTX), adamw(3e-2))
        seconds = fit(module, ATTN.Windows(corpus, batch, CTX, seed), monitor, steps, trace)
        runs[kind] = (trace, monitor, seconds)
    (trace, monitor, seconds), twin = runs["llama"], runs["qwen3"][0]
    onset = ATTN.falls_behind(means(trace.losses, 10), means(twin.losses, 10), margin=0.1)
    return outcome(trace, monitor, onset, "10-step loss 0.1 nats behind the qk-norm twin's", seconds)


def fp16_overflow(corpus: torch.Tensor, seed: int, gap: int) -> Outcome:
    """The same Llama under float16 autocast (batch 8); onset: the first non-finite training loss."""
    pl.seed_everything(seed, verbose=False)
    trace, monitor = Trace(), text_monitor(corpus, seed, gap)
    module = CausalLM(ATTN.build("llama", CTX), adamw(3e-2), autocast=torch.float16)
    seconds = fit(module, ATTN.Windows(corpus, 8, CTX, seed), monitor, 200, trace)
    onset = trace.first_bad
    return outcome(trace, monitor, onset, "first non-finite training loss", seconds)


def logit_divergence(corpus: torch.Tensor, seed: int, gap: int) -> Outcome:
    """Qwen3 (qk-norm), no z-loss, lr warmed up to 1.0 over 400 steps; onset: the loss 5 nats above its lowest."""
    pl.seed_everything(seed, verbose=False)
    trace, monitor = Trace(), text_monitor(corpus, seed, gap)
    module = CausalLM(ATTN.build("qwen3", CTX), adamw(1.0, warmup=400))
    seconds = fit(module, ATTN.Windows(corpus, 16, CTX, seed), monitor, 400, trace)
    low, onset = math.inf, None
    for i, loss in enumerate(trace.losses):
        if not math.isfinite(loss) or loss > low + 5:
            onset = i + 1
            break
        low = min(low, loss)
    return outcome(trace, monitor, onset, "training loss 5 nats above its lowest so far", seconds)


def routing_collapse(corpus: torch.Tensor, seed: int, gap: int) -> Outcome:
    """Qwen2-MoE, 8 experts, top-1, router at lr 0.1 (100x the rest), no balancing loss.

    Onset: on 8 held-out windows, one expert takes 90 % of a layer's tokens.
    """
    pl.seed_everything(seed, verbose=False)
    held = DEMO.text_windows(corpus, 8, CTX, 20_000 + seed)

    def top_share(module) -> float:
        logits = module.model(input_ids=held, output_router_logits=True).router_logits
        return max(float(torch.bincount(r.argmax(-1)).max() / r.shape[0]) for r in logits)

    def groups(model):
        router = [p for n, p in model.named_parameters() if n.endswith("mlp.gate.weight")]
        rest = [p for n, p in model.named_parameters() if not n.endswith("mlp.gate.weight")]
        return [{"params": rest}, {"params": router, "lr": 0.1}]

    trace, monitor = Trace(top_share, period=2), text_monitor(corpus, seed, gap, moe=True)
    module = CausalLM(AutoModelForCausalLM.from_config(moe_config(8, 1)), adamw(1e-3, groups=groups))
    seconds = fit(module, ATTN.Windows(corpus, 16, CTX, seed), monitor, 150, trace)
    onset = first(trace.truth, lambda share: share >= 0.9)
    return outcome(trace, monitor, onset, "one expert takes 90 % of a layer's held-out tokens", seconds)


def induction(corpus: torch.Tensor, seed: int, gap: int) -> Outcome:
    """The demo (Llama, copy curriculum); onset: the repeated half of random sequences at half the first's loss."""
    pl.seed_everything(seed, verbose=False)
    block = torch.randint(1, 256, (16, 32), generator=torch.Generator().manual_seed(30_000 + seed))
    repeated = torch.cat([block, block], dim=1)

    def ratio(module) -> float:
        logits = module.model(input_ids=repeated).logits[:, :-1]
        loss = F.cross_entropy(logits.transpose(1, 2), repeated[:, 1:], reduction="none").mean(0)
        return float(loss[32:].mean() / loss[:31].mean())

    trace, monitor = Trace(ratio, period=gap), text_monitor(corpus, seed, gap)
    module = DEMO.ByteLM(LAYERS, WIDTH, HEADS, CTX, 1e-3, "llama")
    data = DEMO.Batches(corpus, 32, CTX, 0.5, seed, copy_start=1.0, copy_steps=400)
    seconds = fit(module, data, monitor, 600, trace)
    onset = first(trace.truth, lambda r: r < 0.5)
    return outcome(trace, monitor, onset, "repeated-half loss under half the first half's", seconds)


def loss_plateau(corpus: torch.Tensor, seed: int, gap: int) -> Outcome:
    """The moving-window-sum task's plateau; onset (its exit): held-out output loss under ln(17)/2."""
    pl.seed_everything(seed, verbose=False)
    held = PLATEAU.mws_batch(256, torch.Generator().manual_seed(40_000 + seed))
    outputs = slice(PLATEAU.N, 2 * PLATEAU.N)  # logits predicting y_1..y_16

    def output_loss(module) -> float:
        logits = module(held[:, :-1])[:, outputs]
        return float(F.cross_entropy(logits.flatten(0, 1), held[:, PLATEAU.N + 1 :].flatten()))

    trace = Trace(output_loss, period=5)
    monitor = MechMonitor(probes=PLATEAU.probes(seed), schedule=every(5), adapter=PLATEAU.adapter)
    seconds = fit(PLATEAU.MWSModel(lr=1e-4), PLATEAU.Stream(256, seed), monitor, 300, trace)
    onset = first(trace.truth, lambda loss: loss < math.log(17) / 2)
    return outcome(trace, monitor, onset, "held-out output loss under ln(17)/2", seconds)


def softmax_collapse(corpus: torch.Tensor, seed: int, gap: int) -> Outcome:
    """Grokking task, float32 loss, no weight decay; onset: half the training rows have lost their gradient.

    A row whose float32 cross-entropy (``F.cross_entropy``, measured every 10 steps on the whole training set) is
    exactly 0 gives no gradient: softmax collapse as its consequence. Probes every 50 steps, as the example.
    """
    pl.seed_everything(seed, verbose=False)
    train, test = GROK.split(0.4, seed)
    module = GROK.ModAddMLP(test, torch.float32, 0.0, 3e-3, 50)

    def zero_loss(module) -> float:
        return float((F.cross_entropy(module(train[0]).float(), train[1], reduction="none") == 0).float().mean())

    trace = Trace(zero_loss, period=10)
    monitor = MechMonitor(
        probes=[LogitsProbe(loss_dtype=torch.float32), WeightsProbe(), NLMProbe()],
        schedule=every(50),
        adapter=lambda m: ModuleAdapter(m, {"logits": "mlp.2"}, n_layers=0, n_heads=0, vocab_size=GROK.P),
    )
    seconds = fit(module, GROK.FullBatch(*train), monitor, 3000, trace)
    onset = first(trace.truth, lambda frac: frac >= 0.5)
    return outcome(trace, monitor, onset, "half the training rows at exactly zero float32 loss", seconds)


#: name -> (run, the mechmon rules that name the pathology)
PATHOLOGIES: dict[str, tuple[Callable[..., Outcome], tuple[str, ...]]] = {
    "attention logit growth": (attention_logits, ("attention_logit_growth", "attention_entropy_collapse")),
    "softmax collapse": (
        softmax_collapse,
        ("softmax_collapse_warning", "softmax_collapse", "nlm_regime", "logit_scale_precursor"),
    ),
    "loss plateau (exit)": (loss_plateau, ("plateau_exit",)),
    "induction emergence": (induction, ("induction_emergence", "prefix_match_emergence")),
    "routing collapse": (routing_collapse, ("routing_collapse",)),
    "output-logit divergence": (logit_divergence, ("log_z_drift",)),
    "fp16 overflow": (fp16_overflow, ("non_finite", "attention_logit_growth")),
}
