"""``scan``: the monitor's probes over saved checkpoints, in step order, as a live run would have logged them.

Each checkpoint's weights are loaded into one model and the monitor evaluates at the checkpoint's step: the same
probe code, keys, event files and alert rules as a live run (Tigges et al. 2024, "LLM Circuit Analyses Are
Consistent Across Training and Scale", measure every saved checkpoint this way). Probes that read the training
forward or its gradients cannot be replayed; snapshot probes and the weight norms can.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from mechmon.alerts import Alert, Rule
from mechmon.probe import Probe
from mechmon.replay.checkpoints import Checkpoint, find_checkpoints, load_weights, probe_batch_of
from mechmon.statefile import load_state, one_line, save_state

__all__ = ["scan", "ScanResult", "load_factory", "probes_from_names", "DEFAULT_PROBES"]

DEFAULT_PROBES = ("induction", "weights")
STATE_FILE = "mechmon_scan.pt"  # in the run folder: checkpoints done and the monitor's state, for resuming


@dataclass
class ScanResult:
    """What a scan did: steps evaluated now, checkpoints skipped as already done, and those that failed."""

    evaluated: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    latest: dict[str, float] = field(default_factory=dict)


def probes_from_names(names: Sequence[str]) -> list[Probe]:
    """Build registered probes by name with their defaults.

    Raises:
        KeyError: for an unknown name (the message lists the registered ones).
    """
    from mechmon.registry import get_probe

    return [get_probe(name)() for name in names]


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """``"module:fn"`` -> ``fn``, importing ``module`` with the working folder on the path.

    Raises:
        ValueError: if ``spec`` has no ``:``; ImportError / AttributeError if the module or function is missing.
    """
    if ":" not in spec:
        raise ValueError(f"--model-factory must be 'module:function' (e.g. 'train:build_model'), got {spec!r}")
    module, name = spec.split(":", 1)
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    return getattr(importlib.import_module(module), name)


def _replayable(probes: Sequence[Probe]) -> None:
    for probe in probes:
        if not probe.replayable:
            raise ValueError(
                f"scan(probes=...): probe {probe.name!r} reads the training forward or its gradients, which a "
                "checkpoint does not hold; pass snapshot probes (e.g. 'induction', 'repr_rank') or 'weights'"
            )


def _first_model(
    ckpts: list[Checkpoint], factory: Callable[[], nn.Module] | None, result: ScanResult, console: Console
) -> nn.Module:
    """The factory's model, else the first HF folder's that builds (the others before it are reported as failed)."""
    if factory is not None:
        return factory()
    hf = [c for c in ckpts if c.format == "hf"]
    if not hf:
        raise ValueError(
            "scan(model_factory=...) is needed for Lightning and state-dict checkpoints: a function that builds the "
            "module they belong to (CLI: --model-factory module:function)"
        )
    from transformers import AutoModelForCausalLM

    for ckpt in hf:
        try:
            return AutoModelForCausalLM.from_pretrained(ckpt.path)
        except Exception as err:  # caveat: one damaged folder (a cut config.json) must not stop the scan
            _failed(ckpt, err, result, console)
    raise ValueError(f"scan(checkpoints=...): no HF folder builds a model ({len(hf)} tried, each reported above)")


def _failed(ckpt: Checkpoint, err: Exception, result: ScanResult, console: Console) -> None:
    reason = one_line(err)
    console.print(f"[red]mechmon scan: cannot load {ckpt.path}: {reason}[/]", highlight=False)
    result.failed.append((ckpt.path, reason))


def scan(
    checkpoints: Iterable[str | Path],
    out: str | Path,
    *,
    probes: Sequence[Probe] | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
    batch: Any = None,
    rules: Sequence[Rule] = (),
    device: str | torch.device | None = None,
    prefix: str | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> ScanResult:
    """Run probes over saved checkpoints in step order and write them to ``out`` as a live run would.

    Args:
        checkpoints: checkpoint files or folders, and folders holding them (one level deep).
        out: run folder: TensorBoard event files and ``mechmon_scan.pt`` (checkpoints done, monitor state). Running
            again over the same folder skips the checkpoints already done and goes on with the rule states.
        probes: snapshot probes (and ``WeightsProbe``); default ``InductionProbe()`` and ``WeightsProbe()``.
        model_factory: ``fn() -> nn.Module`` building the model the weights belong to (a LightningModule or the bare
            model inside it: keys with one extra leading prefix such as ``model.`` are matched). Default: the first
            HF checkpoint's ``from_pretrained``.
        batch: probe batch for probes that take theirs from training; default the one a live run kept in its
            Lightning checkpoints (so values equal the live run's), else those probes log nothing.
        rules: extra alert rules, as for :class:`~mechmon.engine.Monitor`.
        device: where the model runs (default: where the factory put it).
        prefix: the key prefix the model's weights sit under in each checkpoint (``"ema"``, ``"model"``); needed
            when a checkpoint holds the model under several prefixes (an EMA or teacher copy beside it).
        progress: show a progress bar.
        console: where progress and one-line errors go (default stderr).

    Returns:
        A :class:`ScanResult`. A checkpoint that cannot be loaded is reported in one line and skipped.

    Raises:
        ValueError: if no checkpoint is found, a probe cannot be replayed, or no model can be built.

    A checkpoint that holds the model under several prefixes is refused (reported as failed, naming them) unless
    ``prefix`` is given: mechmon never picks one copy silently.
    """
    from mechmon.engine import Monitor

    console = console or Console(stderr=True)
    out = Path(out)
    probes = list(probes) if probes is not None else probes_from_names(DEFAULT_PROBES)
    _replayable(probes)
    ckpts, refused = find_checkpoints(checkpoints)
    result = ScanResult(failed=list(refused))
    for path, reason in refused:
        console.print(f"[red]mechmon scan: skipped {path}: {reason}[/]", highlight=False)
    if not ckpts:
        raise ValueError(f"scan(checkpoints=...): no checkpoint found in {list(map(str, checkpoints))}")
    model = _first_model(ckpts, model_factory, result, console)
    if device is not None:
        model.to(device)
    batch = batch if batch is not None else probe_batch_of(ckpts)
    monitor = Monitor(probes=probes, schedule=lambda step: True, rules=rules, log_dir=out, image_schedule=1)
    done, last = _resume(monitor, out)
    if last is None:  # a new scan: its state file marks the folder as a scan's before any event is written
        out.mkdir(parents=True, exist_ok=True)
        save_state({"done": [], "monitor": {"last_step": -1}}, out / STATE_FILE)
        last = -1
    # a scan killed after writing a step's events but before recording it: those events are hidden, then rewritten
    monitor.attach(model, log_dir=out, purge_step=last + 1)
    try:
        with _bar(progress, console) as bar:
            task = bar.add_task("scan", total=len(ckpts))
            for ckpt in ckpts:
                bar.update(task, description=f"step {ckpt.step}")
                if str(ckpt.path.resolve()) in done or ckpt.step <= monitor.last_step:
                    result.skipped.append(ckpt.step)
                else:
                    _one(monitor, model, ckpt, batch, prefix, result, console)
                    done.add(str(ckpt.path.resolve()))
                    monitor.flush()  # the events are on disk before the state says the step is done
                    save_state({"done": sorted(done), "monitor": monitor.state_dict()}, out / STATE_FILE)
                bar.advance(task)
    finally:
        monitor.close()
    result.alerts, result.latest = list(monitor.alerts), dict(monitor.latest)
    return result


def _one(monitor: Any, model: nn.Module, ckpt: Checkpoint, batch: Any, prefix: str | None, result: ScanResult,
         console: Console) -> None:  # fmt: skip
    if any(path == ckpt.path for path, _ in result.failed):  # its model could not be built: reported once
        return
    try:
        load_weights(model, ckpt, prefix)
    except Exception as err:  # caveat: one unreadable checkpoint must not stop the scan
        _failed(ckpt, err, result, console)
        return
    monitor.begin_batch(ckpt.step, batch)
    monitor.after_optimizer_step(ckpt.step)
    result.evaluated.append(ckpt.step)


def _resume(monitor: Any, out: Path) -> tuple[set[str], int | None]:
    """Checkpoints a previous scan of ``out`` finished and its last step; the state waits for ``attach``.

    A state file that cannot be read (cut, garbage, not mechmon's) is one warning: the scan starts afresh.
    """
    path = out / STATE_FILE
    state = load_state(path, "the scan", ("done", "monitor")) if path.is_file() else None
    if state is None:  # a refused file was ours: hide its run's events, they are written again
        return set(), (-1 if path.is_file() else None)
    monitor.load_state_dict(state["monitor"])
    return set(state["done"]), int(state["monitor"].get("last_step", -1))


def _bar(enabled: bool, console: Console) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console, disable=not enabled, transient=False)
