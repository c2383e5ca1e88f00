"""torch.compile: hooks cannot see a compiled training forward, so the probes that read it are refused at setup,
said so; the snapshot and gradient probes run on the original module and equal an uncompiled run."""

import pytest
import torch

from mechmon import CollapseProbe, LogitsProbe, MechMonitor, Monitor, WeightsProbe, every
from tests.conftest import TinyLM, hook_count, make_trainer, plain_run, tiny_gpt2, token_loader


def probes():
    return [LogitsProbe(), CollapseProbe(), WeightsProbe()]


def fit(tmp_path, compile_as: str | None, backend: str = "eager"):
    torch._dynamo.reset()
    module = TinyLM()
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
def test_a_compiled_lightning_fit_refuses_the_streaming_probe_and_keeps_the_others_exact(
    tmp_path, uncompiled, compile_as
):
    with pytest.warns(UserWarning, match=r"probe 'logits' reads the training forward's activations.*torch.compile"):
        values, monitor, module = fit(tmp_path, compile_as)
    assert monitor.engine.disabled == {"logits"} and [a.rule for a in monitor.alerts] == ["probe_failed"]
    assert not any(k.startswith("mechmon/logits/") for k in values)  # nothing logged, never a 0 or a NaN panel
    others = {k: v for k, v in uncompiled.items() if not k.startswith("mechmon/logits/")}
    assert others and values == pytest.approx(others, rel=1e-5)  # same keys (no "_orig_mod."), same numbers
    assert hook_count(module) == 0


def test_an_inductor_compiled_fit_is_not_broken_by_the_monitor(tmp_path):
    # with capture hooks present at its first compilation, inductor's backward failed ("invalid shape dimension")
    with pytest.warns(UserWarning, match="torch.compile"):
        values, monitor, _ = fit(tmp_path, "model", backend="inductor")
    assert "mechmon/repr_collapse/mean_cos" in values and monitor.engine.disabled == {"logits"}


def test_a_plain_loop_over_module_compile_is_detected_and_probed_uncompiled():
    def run(compiled: bool) -> dict[str, float]:
        torch._dynamo.reset()
        model = tiny_gpt2()
        if compiled:
            model.compile(backend="eager")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = Monitor(model, optimizer=optimizer, probes=probes(), schedule=1, log_dir=None)
        plain_run(monitor, model, optimizer, 2)
        assert hook_count(model) == 0 and monitor.disabled == ({"logits"} if compiled else set())
        return {k: v for k, v in monitor.latest.items() if not k.startswith("mechmon/logits/")}

    reference = run(False)
    with pytest.warns(UserWarning, match="probe 'logits'"):
        assert run(True) == pytest.approx(reference, rel=1e-5)
