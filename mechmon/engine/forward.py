"""Probe forwards: one ``no_grad`` eval-mode forward of a snapshot probe's batch, and the public "evaluate once".

A snapshot forward runs the model on the probe's own batch with hooks only inside :func:`~mechmon.capture.capture`.
Attention runs eager (probabilities materialised) and SDPA calls are tapped only when the probe reads attention
patterns. Under FSDP2 a ``no_grad`` forward leaves the root's parameters gathered (no backward follows to reshard
them); they are resharded here so that memory and the weight probes see the model as training left it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters import Adapter, resolve_adapter
from mechmon.capture import attention_tap, capture, resolve_names
from mechmon.params import reshard
from mechmon.probe import Probe, SnapshotProbe

__all__ = [
    "uncompiled",
    "snapshot_forward",
    "shared_forward",
    "forward_groups",
    "run_group",
    "run_groups",
    "evaluate",
    "reads_patterns",
]


def reads_patterns(names: Sequence[str]) -> bool:
    """Whether any capture name is an attention pattern."""
    return any(n.endswith("attn.hook_pattern") for n in names)


def reads_logits(names: Sequence[str]) -> bool:
    """Whether any capture name is an attention row statistic (read from q and k of SDPA calls)."""
    return any(n.endswith("attn.hook_row_stats") for n in names)


def _attention_mode(adapter: Adapter, names: Sequence[str]) -> contextlib.AbstractContextManager:
    """Eager attention for patterns (probabilities materialised), SDPA for logit statistics, else as it is."""
    if reads_patterns(names):
        return adapter.eager_attention()
    return adapter.sdpa_attention() if reads_logits(names) else contextlib.nullcontext()


_ACTIVE: dict[int, str] = {}  # id(adapter) -> the probe mode it is in (one scheduled step's forwards share it)


@contextlib.contextmanager
def _probe_mode(adapter: Adapter, names: Sequence[str]):
    """Eval mode, ``no_grad``, the attention mode and tap the captures need; mode and sharding restored after.

    Inside the same mode already (:func:`run_groups`), only ``no_grad``: the switch costs about 0.6 ms each way on
    a 6-layer model (every module's ``train()``, the attention setting, the compiled modules and FSDP walks).
    """
    mode = _mode(names)
    if _ACTIVE.get(id(adapter)) == mode:
        with torch.no_grad():
            yield
        return
    model = adapter.model
    was_training, outer = model.training, _ACTIVE.get(id(adapter))
    model.eval()
    tap = attention_tap() if mode != "plain" else contextlib.nullcontext()
    _ACTIVE[id(adapter)] = mode
    try:
        with torch.no_grad(), _attention_mode(adapter, names), tap, uncompiled(model):
            yield
    finally:
        if outer is None:
            del _ACTIVE[id(adapter)]
        else:
            _ACTIVE[id(adapter)] = outer
        model.train(was_training)
        reshard(model)


def snapshot_forward(probe: Probe, adapter: Adapter, names: Sequence[str] | None = None) -> None:
    """Run ``probe``'s forward(s) under its hooks and feed it the captures; restores mode and sharding.

    Args:
        probe: a set-up snapshot probe (``probe.attach(...)`` called, its batch known).
        adapter: the model's adapter.
        names: the probe's resolved capture names; resolved from ``probe.requires`` when ``None``.

    Raises:
        RuntimeError: if a capture is missing or the attention gives no probabilities.
    """
    names = list(resolve_names(adapter, probe.requires) if names is None else names)
    with _probe_mode(adapter, names), capture(adapter, names, probe.reduce_capture) as caps:
        caps.update(probe.snapshot(adapter))
        if adapter.feeds_probes():
            probe.update(caps, None)


def _mode(names: Sequence[str]) -> str:
    return "patterns" if reads_patterns(names) else "logits" if reads_logits(names) else "plain"


def forward_groups(probes: Sequence[Probe], names: dict[str, list[str]]) -> list[list[Probe]]:
    """Snapshot probes that can share one forward, in order; the others are groups of one.

    Sharing needs the same batch (``batch_key``) and the default single forward. Probes that read attention patterns
    (eager attention) and probes that read attention-logit statistics (SDPA calls tapped) need different forwards;
    the other probes of the batch join the SDPA forward when there is one (the model's own attention, so their
    values are unchanged), else the eager one.
    """
    groups: dict[Any, list[Probe]] = {}
    for probe in probes:
        key = probe.batch_key
        single = key is None or type(probe).snapshot is not SnapshotProbe.snapshot
        groups.setdefault(id(probe) if single else (key, _mode(names[probe.name])), []).append(probe)
    for key in [k for k in groups if isinstance(k, tuple) and k[1] == "plain"]:
        host = next(((key[0], m) for m in ("logits", "patterns") if (key[0], m) in groups), None)
        if host is not None:
            groups[host] += groups.pop(key)
    return list(groups.values())


def shared_forward(group: Sequence[Probe], adapter: Adapter, names: dict[str, list[str]]) -> dict[str, dict]:
    """One forward of the group's common batch under every capture its probes read.

    Each hook reduces its tensor once per probe that reads it (``reduce_capture``), so no probe sees another's
    reduction. Returns probe name -> its captures (with the forward's logits), for the caller to pass to
    ``probe.update``; a forward that raises updates nobody.
    """
    wanted = _group_names(group, names)
    readers = {n: [p for p in group if n in names[p.name]] for n in wanted}

    def reduce(name: str, tensor: Tensor) -> list[Tensor]:
        return [p.reduce_capture(name, tensor) for p in readers[name]]

    with _probe_mode(adapter, wanted), capture(adapter, wanted, reduce) as caps:
        output = group[0].snapshot(adapter)
    out = {}
    for probe in group:
        own = {n: caps[n][readers[n].index(probe)] for n in names[probe.name] if n in caps}
        out[probe.name] = {**own, **output}
    return out


def run_group(
    group: Sequence[Probe], adapter: Adapter, names: dict[str, list[str]], guarded: Callable[..., Any]
) -> None:
    """Feed a group from :func:`forward_groups` with one shared forward, else each probe with its own.

    Each probe runs alone when the group has one probe or the shared forward raised, so a failure is charged to the
    probe that caused it.

    ``guarded(probe, fn, *args)`` runs ``fn`` for ``probe`` and disables the probe if it raises (the monitor's).
    """
    if len(group) > 1:
        try:
            captures = shared_forward(group, adapter, names)
        except Exception:  # caveat: find the failing probe by running each alone
            captures = None
        if captures is not None:
            for probe in group if adapter.feeds_probes() else ():
                guarded(probe, probe.update, captures[probe.name], None)
            return
    for probe in group:
        guarded(probe, snapshot_forward, probe, adapter, names[probe.name])


def run_groups(
    probes: Sequence[Probe], adapter: Adapter, names: dict[str, list[str]], guarded: Callable[..., Any]
) -> None:
    """Every snapshot probe's forwards (:func:`forward_groups`, :func:`run_group`), each probe mode entered once.

    The groups that read attention patterns run together under eager attention, those reading attention-logit
    statistics under SDPA, and so on: the model is switched once per mode, not once per forward.
    """
    by_mode: dict[str, list[list[Probe]]] = {}
    for group in forward_groups(probes, names):
        by_mode.setdefault(_mode(_group_names(group, names)), []).append(group)
    for groups in by_mode.values():
        with _probe_mode(adapter, _group_names([p for g in groups for p in g], names)):
            for group in groups:
                run_group(group, adapter, names, guarded)


def _group_names(group: Sequence[Probe], names: dict[str, list[str]]) -> list[str]:
    return list(dict.fromkeys(n for p in group for n in names[p.name]))


@contextlib.contextmanager
def uncompiled(model: nn.Module):
    """Run ``module.compile()``'d modules through their original forward (their hooks fire; no recompilation)."""
    compiled = [(m, m._compiled_call_impl) for m in model.modules() if getattr(m, "_compiled_call_impl", None)]
    for module, _ in compiled:
        module._compiled_call_impl = None
    try:
        yield
    finally:
        for module, impl in compiled:
            module._compiled_call_impl = impl


def evaluate(
    probes: Probe | Sequence[Probe],
    model: nn.Module | Adapter,
    *,
    batch: Any = None,
    forwards: int = 1,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Set up snapshot probes on ``model``, run their forwards, and return what they would log.

    The monitor's own path for one scheduled step, without schedule, reduction or writer: ``setup``, the probe
    batch (``batch`` stands for the first training batch of probes that take one), ``forwards`` snapshot forwards,
    ``compute``, and ``finish`` on the host copies of ``host_inputs``. States are not reset afterwards.

    Args:
        probes: one snapshot probe or several.
        model: a model (its adapter is found as the monitor finds it) or an :class:`Adapter`.
        batch: a training batch for probes that take their probe batch from training (``needs_batch``).
        forwards: number of snapshot forwards (>= 1).
        device: device of the probe states; the model's parameters' device by default.

    Returns:
        Metric key -> tensor: ``compute()``'s results (0-d scalars, 1-d/2-d matrices) plus ``finish()``'s floats as
        0-d float64 tensors.

    Raises:
        TypeError: if a probe is not a snapshot probe.
        RuntimeError: as :func:`resolve_adapter` and :func:`snapshot_forward`.
    """
    probes = [probes] if isinstance(probes, Probe) else list(probes)
    if any(p.kind != "snapshot" for p in probes):
        raise TypeError("evaluate() runs snapshot probes; streaming probes read the training forward")
    adapter = model if isinstance(model, Adapter) else resolve_adapter(model)
    params = list(adapter.model.parameters())
    device = torch.device(device) if device is not None else (params[0].device if params else torch.device("cpu"))
    out: dict[str, Tensor] = {}
    for probe in probes:
        probe.attach(adapter.model, adapter, device)
        if probe.needs_batch and batch is not None:
            probe.take_batch(batch)
        names = resolve_names(adapter, probe.requires)
        for _ in range(forwards):
            snapshot_forward(probe, adapter, names)
        with torch.no_grad():
            out.update(probe.compute())
            host = {k: v.detach().cpu().numpy() for k, v in probe.host_inputs().items()}
            finished = probe.finish(host, 0)
        out.update({k: torch.tensor(v, dtype=torch.float64) for k, v in finished.items()})
    return out
