"""Cost of one evaluation of each snapshot probe, on the two example models, exactly as the monitor runs it.

    python benchmarks/probe_cost.py --repeats 20

Also printed, for scale: one training step of the demo's model (batch 32 x 128, forward, backward, AdamW) and one
``LogitsProbe.update`` on that step's logits (a streaming probe's cost rides on the training step). The ICL probe
needs 500-token contexts: it runs on the same model with a 512-token context, 16 text rows. Last, the probes that
share one forward in the monitor (same rows, same attention mode), evaluated together as the monitor runs them.

One evaluation = the probe's forward(s) under its hooks (eager attention), ``update``, ``compute``, the one
device-to-host transfer and any host-side ``finish`` (RankMe's eigenvalues). Models: the moving-window-sum model
of examples/loss_plateau.py (1 layer, width 256, probe batch 64 x 33) and the stdlib demo's Llama-style model (2
layers, width 128, probe batch 8 x 128 text bytes). Prints the median and the minimum over ``repeats`` in milliseconds.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from examples_module import load_example

from mechmon import (
    AttentionEntropyProbe,
    AttentionLogitProbe,
    AttentionProgressProbe,
    AttentionSinkProbe,
    CollapseProbe,
    ICLProbe,
    InductionProbe,
    LogitsProbe,
    MassiveActivationProbe,
    PrefixMatchingProbe,
    RankProbe,
    RepetitionProbe,
)
from mechmon.adapters import resolve_adapter
from mechmon.capture import resolve_names
from mechmon.engine import snapshot_forward, to_host
from mechmon.engine.forward import forward_groups, run_group

ROOT = Path(__file__).resolve().parents[1]


load = load_example


def one_evaluation(probe, adapter, names, forward=True) -> None:
    if forward:
        snapshot_forward(probe, adapter, names)
    tensors = [v for v in probe.compute().values() if v.ndim == 0]
    inputs = probe.host_inputs()
    host = to_host(tensors + list(inputs.values()))  # the monitor's one transfer
    probe.finish(dict(zip(inputs, host[len(tensors) :], strict=True)), 0)
    probe.reset()


def time_probe(probe, model, adapter, repeats: int) -> tuple[float, float]:
    probe.attach(model, adapter, torch.device("cpu"))
    names = resolve_names(adapter, probe.requires)
    return timed(lambda: one_evaluation(probe, adapter, names), repeats)


def time_shared(probes, model, adapter, repeats: int) -> tuple[float, float, int]:
    """Milliseconds of the probes evaluated together (their shared forwards), and how many forwards that is."""
    names = {}
    for probe in probes:
        probe.attach(model, adapter, torch.device("cpu"))
        names[probe.name] = resolve_names(adapter, probe.requires)
    groups = forward_groups(probes, names)

    def together():
        with torch.no_grad():
            for group in groups:
                run_group(group, adapter, names, lambda probe, fn, *args: fn(*args))
            for probe in probes:
                one_evaluation(probe, adapter, names[probe.name], forward=False)

    return (*timed(together, repeats), len(groups))


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median and minimum milliseconds of ``fn()`` over ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), min(times)


def training_step_and_logits_update(gpt, corpus, text_windows, repeats: int) -> None:
    """One training step of the demo model, and LogitsProbe.update on its logits."""
    batch = text_windows(corpus, 32, 128, 2)
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=1e-3)

    def step():
        loss = gpt.model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    probe = LogitsProbe()
    with torch.no_grad():
        logits = gpt.model(input_ids=batch).logits
    for label, fn in (
        ("training step 32x128", step),
        ("LogitsProbe.update", lambda: probe.update({"logits": logits}, batch)),
    ):
        median, best = timed(fn, repeats)
        print(f"{'demo 2L d128':<15} {label:<24} {median:>10.1f} {best:>8.1f}")


def describe(probe) -> str:
    """The probe's class, and its ablation setting for the induction probe (one more forward, or k + 1 more)."""
    if isinstance(probe, InductionProbe):
        return f"InductionProbe k={probe.ablate_k}{' each' if probe.ablate_each else ''}"
    return type(probe).__name__


def main() -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    torch.manual_seed(0)
    mws = load("loss_plateau")
    mws_model = mws.MWSModel()
    batch = mws.mws_batch(64, torch.Generator().manual_seed(1))
    outputs = list(range(mws.N + 1, 2 * mws.N))
    demo = load("stdlib_induction")
    gpt = demo.ByteLM(2, 128, 4, 128, 1e-3)
    corpus = demo.read_corpus(None, 2_000_000)
    text = demo.text_windows(corpus, 8, 128, 1)
    long_gpt = demo.ByteLM(2, 128, 4, 512, 1e-3)
    cases = [
        ("MWS 1L d256", mws_model, mws.adapter(mws_model), CollapseProbe(batch, positions=outputs, max_rows=64)),
        ("MWS 1L d256", mws_model, mws.adapter(mws_model), RankProbe(batch, positions=outputs, max_rows=64)),
        ("MWS 1L d256", mws_model, mws.adapter(mws_model), RepetitionProbe(batch, gen_len=16, max_rows=64)),
        (
            "MWS 1L d256",
            mws_model,
            mws.adapter(mws_model),
            AttentionProgressProbe(mws.target_map(), batch, max_rows=64),
        ),
        ("demo 2L d128", gpt, resolve_adapter(gpt), CollapseProbe(text)),
        ("demo 2L d128", gpt, resolve_adapter(gpt), RankProbe(text)),
        ("demo 2L d128", gpt, resolve_adapter(gpt), RepetitionProbe(text)),
        ("demo 2L d128", gpt, resolve_adapter(gpt), InductionProbe()),
        ("demo 2L d128", gpt, resolve_adapter(gpt), InductionProbe(ablate_k=0)),
        ("demo 2L d128", gpt, resolve_adapter(gpt), InductionProbe(ablate_each=True)),
        ("demo 2L d128", gpt, resolve_adapter(gpt), PrefixMatchingProbe()),
        ("demo 2L d128", gpt, resolve_adapter(gpt), AttentionLogitProbe(text)),
        ("demo 2L d128", gpt, resolve_adapter(gpt), AttentionEntropyProbe(text)),
        ("demo 2L d128", gpt, resolve_adapter(gpt), AttentionSinkProbe(text)),
        ("demo 2L d128", gpt, resolve_adapter(gpt), MassiveActivationProbe(text)),
        ("demo ctx 512", long_gpt, resolve_adapter(long_gpt), ICLProbe(demo.text_windows(corpus, 16, 512, 3))),
    ]
    print(f"{'model':<15} {'probe':<24} {'median ms':>10} {'min ms':>8}")
    training_step_and_logits_update(gpt, corpus, demo.text_windows, args.repeats)
    for label, model, adapter, probe in cases:
        median, best = time_probe(probe, model, adapter, args.repeats)
        print(f"{label:<15} {describe(probe):<24} {median:>10.1f} {best:>8.1f}")
    for probes in (
        [CollapseProbe(text), RankProbe(text), MassiveActivationProbe(text)],
        [AttentionLogitProbe(text), AttentionEntropyProbe(text), AttentionSinkProbe(text)],
    ):
        median, best, forwards = time_shared(probes, gpt, resolve_adapter(gpt), args.repeats)
        label = "+".join(type(p).__name__.removesuffix("Probe") for p in probes)
        print(f"{'demo 2L d128':<15} {label:<24} {median:>10.1f} {best:>8.1f}  ({forwards} forward)")


if __name__ == "__main__":
    main()
