"""torch.compile: hooks cannot see a compiled training forward. The logits probe measures its rows through a shadow
forward (eager, before the optimizer step), said so; the snapshot and gradient probes run on the original module and
equal an uncompiled run."""

import math

import pytest
import torch

from mechmon import CollapseProbe, LogitsProbe, MechMonitor, Monitor, WeightsProbe, every
from tests.helpers import TinyLM, hook_count, make_trainer, plain_run, tiny_gpt2, token_loader


def probes():
    return [LogitsProbe(), CollapseProbe(), WeightsProbe()]


def fit(tmp_path, compile_as: str | None, backend: str = "eager", dropout: bool = True):
    torch._dynamo.reset()
    module = TinyLM()
    for layer in module.modules():  # inductor draws dropout masks from its own generator: no equal run with them
        if isinstance(layer, torch.nn.Dropout) and not dropout:
            layer.p = 0.0
    if compile_as == "model":  # self.model = torch.compile(model) inside the LightningModule
        module.model = torch.compile(module.model, backend=backend)
    elif compile_as == "module":  # trainer.fit(torch.compile(module))
        module = torch.compile(module, backend=backend)
    monitor = MechMonitor(probes=probes(), schedule=every(2))
    trainer = make_trainer(tmp_path, [monitor], max_steps=4, logger=False)
    trainer.fit(module, token_loader())
    values = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("mechmon/")}
    return values, monitor, module


@pytest.fixture(scope="module")
def uncompiled(tmp_path_factory):
    return fit(tmp_path_factory.mktemp("plain"), None)[0]


@pytest.mark.parametrize("compile_as", ["model", "module"])
def test_a_compiled_lightning_fit_shadows_the_logits_probe_and_keeps_the_others_exact(tmp_path, uncompiled, compile_as):
    with pytest.warns(
        UserWarning, match=r"the training forward is compiled .*probe 'logits' measures the first 8 rows"
    ):
        values, monitor, module = fit(tmp_path, compile_as)
    assert not monitor.engine.disabled and [a.rule for a in monitor.alerts] == []
    logits = {k: v for k, v in values.items() if k.startswith("mechmon/logits/")}
    assert len(logits) > 10 and all(math.isfinite(v) for v in logits.values())  # eval mode: no dropout, so its own
    others = {k: v for k, v in uncompiled.items() if not k.startswith("mechmon/logits/")}
    rest = {k: v for k, v in values.items() if not k.startswith("mechmon/logits/")}
    assert others and rest == pytest.approx(others, rel=1e-5)  # same keys (no "_orig_mod."), same numbers
    assert hook_count(module) == 0


def test_an_inductor_compiled_fit_is_not_broken_by_the_monitor_and_measures_what_an_uncompiled_one_does(tmp_path):
    # with capture hooks present at its first compilation, inductor's backward failed ("invalid shape dimension")
    with pytest.warns(UserWarning, match="the training forward is compiled"):
        values, monitor, _ = fit(tmp_path / "inductor", "model", backend="inductor", dropout=False)
    assert not monitor.engine.disabled
    reference = fit(tmp_path / "plain", None, dropout=False)[0]
    assert values.keys() == reference.keys() and len(values) > 15
    # measured: inductor's kernels move the values by at most 2e-6 relative after 4 steps (weights/norm_growth)
    assert values == pytest.approx(reference, rel=2e-5, abs=0)


def test_a_plain_loop_over_module_compile_is_detected_and_probed_uncompiled():
    def run(compiled: bool) -> dict[str, float]:
        torch._dynamo.reset()
        model = tiny_gpt2()
        if compiled:
            model.compile(backend="eager")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = Monitor(model, optimizer=optimizer, probes=probes(), schedule=1, log_dir=None)
        plain_run(monitor, model, optimizer, 2)
        assert hook_count(model) == 0 and not monitor.disabled
        return {k: v for k, v in monitor.latest.items() if not k.startswith("mechmon/logits/")}  # dropout: its own

    reference = run(False)
    with pytest.warns(UserWarning, match="probe 'logits' measures"):
        assert run(True) == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_a_compiled_plain_loop_measures_the_logits_through_a_shadow_forward_equal_to_an_uncompiled_run(backend):
    """nanoGPT's shape (``model = torch.compile(model)``, ``model(X, Y)``), the batch handed to the monitor: the
    logits probe measures its rows through an eager forward before the optimizer step, equal to an uncompiled run."""
    from tests.helpers.nanogpt import gpt

    data = torch.randint(0, 64, (3, 4, 49), generator=torch.Generator().manual_seed(0))

    def run(compiled: bool) -> dict[str, float]:
        torch._dynamo.reset()
        model = gpt()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trained = torch.compile(model, backend=backend) if compiled else model
        monitor = Monitor(trained, optimizer=optimizer, probes=[LogitsProbe(shadow_rows=8)], schedule=1, log_dir=None)
        for step, rows in enumerate(data, start=1):
            X, Y = rows[:, :-1], rows[:, 1:].contiguous()
            with monitor.step(step, (X, Y)):
                trained(X, Y)[1].backward()
                optimizer.step()
                optimizer.zero_grad()
        monitor.close()
        assert not monitor.disabled and hook_count(model) == 0
        return {k: v for k, v in monitor.latest.items() if k.startswith("mechmon/logits/")}

    reference = run(False)
    with pytest.warns(
        UserWarning, match="the training forward is compiled .* probe 'logits' measures the first 8 rows"
    ):
        shadowed = run(True)
    assert len(reference) > 10 and shadowed == pytest.approx(reference, rel=1e-5, abs=1e-6)


def test_a_compiled_fabric_loop_reads_its_batch_at_the_compile_wrapper_and_equals_an_uncompiled_run():
    """Fabric hands the monitor no batch: the inputs are read by a pre-hook on ``torch.compile``'s wrapper (which runs
    eagerly), so the shadow forward has rows to measure, equal to an uncompiled Fabric loop."""
    import lightning as L

    from tests.helpers.nanogpt import gpt

    data = torch.randint(0, 64, (4, 4, 49), generator=torch.Generator().manual_seed(1))

    def run(compiled: bool) -> dict[str, float]:
        torch._dynamo.reset()
        monitor = MechMonitor(probes=[LogitsProbe(shadow_rows=8)], schedule=every(2), log_dir=None)
        fabric = L.Fabric(accelerator="cpu", devices=1, callbacks=[monitor], loggers=[])
        model = gpt()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trained, optimizer = fabric.setup(torch.compile(model, backend="eager") if compiled else model, optimizer)
        for rows in data:
            _, loss = trained(rows[:, :-1], rows[:, 1:].contiguous())
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        monitor.close()
        assert not monitor.engine.disabled and hook_count(model) == 0
        return {k: v for k, v in monitor.engine.latest.items() if k.startswith("mechmon/logits/")}

    reference = run(False)
    with pytest.warns(UserWarning, match="probe 'logits' measures the first 8 rows"):
        shadowed = run(True)
    assert len(reference) > 10 and shadowed == pytest.approx(reference, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("how", ["wrapper", "in_place"])
def test_a_compiled_model_without_a_batch_reads_its_first_batch_at_the_wrapper_or_says_why_it_cannot(how):
    """No batch handed over: ``torch.compile(model)``'s wrapper gives the first training batch eagerly (the snapshot
    probe then equals an uncompiled run); ``model.compile()`` has no eager place, so that probe is disabled, said so."""

    def run(compile_as: str | None) -> Monitor:
        torch._dynamo.reset()
        model = tiny_gpt2()
        trained = model
        if compile_as == "wrapper":
            trained = torch.compile(model, backend="eager")
        elif compile_as == "in_place":
            model.compile(backend="eager")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = Monitor(trained, optimizer=optimizer, probes=[CollapseProbe()], schedule=1, log_dir=None)
        data = torch.randint(1, 64, (2, 2, 16), generator=torch.Generator().manual_seed(0))
        for step, batch in enumerate(data, start=1):
            with monitor.step(step):
                trained(input_ids=batch, labels=batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        monitor.close()
        assert hook_count(model) == 0
        return monitor

    reference = run(None).latest
    if how == "wrapper":
        assert run(how).latest == pytest.approx(reference, rel=1e-5) and "mechmon/repr_collapse/mean_cos" in reference
    else:
        with pytest.warns(UserWarning, match="probe 'repr_collapse' takes its probe batch .* hand the batch over"):
            monitor = run(how)
        assert "repr_collapse" in monitor.disabled
