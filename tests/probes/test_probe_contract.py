"""The probe contract: what a probe reads (``source``) decides when it is called; the base does the setup chores."""

import pytest
import torch

import mechmon
from mechmon import Monitor, StreamingProbe
from mechmon.probe import GRADIENTS, OWN_FORWARD, SOURCES, TRAINING_FORWARD, WEIGHTS, Probe
from tests.helpers import plain_run, tiny_gpt2


def test_every_registered_probe_names_its_source_and_kind_and_replayable_follow_from_it():
    sources = {name: mechmon.get_probe(name).source for name in mechmon.list_probes()}
    assert set(sources.values()) == set(SOURCES)
    assert (sources["induction"], sources["logits"], sources["nlm"], sources["weights"]) == (
        OWN_FORWARD,
        TRAINING_FORWARD,
        GRADIENTS,
        WEIGHTS,
    )
    for name, source in sources.items():
        cls = mechmon.get_probe(name)
        assert cls.kind == ("snapshot" if source == OWN_FORWARD else "streaming"), name
        assert cls.replayable == (source in (OWN_FORWARD, WEIGHTS)), name  # a checkpoint has weights, no training


def test_a_probe_written_before_source_existed_keeps_its_kind_and_a_wrong_source_fails_at_definition():
    class Old(Probe):
        kind = "streaming"

    assert (Old.source, Old.kind, Old.replayable) == (TRAINING_FORWARD, "streaming", False)
    with pytest.raises(ValueError, match="source must be one of"):

        class Wrong(Probe):
            source = "activations"


class Depth(Probe):
    """A state declared in ``__init__`` and one whose shape ``setup`` learns from the model."""

    name = "depth"

    def __init__(self):
        super().__init__()
        self.add_state("count", torch.zeros((), dtype=torch.int64), "sum")

    def setup(self, model, adapter, device):
        self.add_state("per_layer_L", torch.zeros(adapter.n_layers), "sum")


def test_attach_declares_the_setup_states_anew_for_each_model_and_moves_every_state_to_the_device():
    from mechmon.adapters import resolve_adapter

    probe = Depth()
    for layers in (2, 3):  # a second fit on another model: no "already declared", the new shape
        model = tiny_gpt2(layers=layers)
        probe.attach(model, resolve_adapter(model), torch.device("meta"))
        assert list(probe.states()) == ["count", "per_layer_L"]
        assert probe.per_layer_L.shape == (layers,)
        assert probe.count.device.type == probe.per_layer_L.device.type == "meta"
    with pytest.raises(ValueError, match="already declared"):  # outside attach a name is declared once
        probe.add_state("count", torch.zeros(()), "sum")


class GradientReader(StreamingProbe):
    """Reads gradients only: never given a training forward's captures (``update`` would raise)."""

    name = "gradient_reader"
    source = GRADIENTS

    def __init__(self):
        super().__init__()
        self.add_state("steps", torch.zeros(()), "sum")

    def before_optimizer_step(self, optimizer):
        self.steps += 1

    def compute(self):
        return {self.key("steps"): self.steps.clone()}


def test_a_gradient_probe_is_called_before_each_scheduled_optimizer_step_and_never_updated_from_a_forward():
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer=optimizer, probes=[GradientReader()], schedule=1, log_dir=None)
    plain_run(monitor, model, optimizer, 3)  # the base update raises NotImplementedError: it would be disabled
    assert not monitor.disabled and not monitor.alerts
    assert monitor.latest["mechmon/gradient_reader/steps"] == 1.0  # one call per scheduled step, reset after each


def test_compute_is_pure_a_weight_probe_computed_twice_logs_the_same_growth():
    from mechmon import WeightsProbe

    def run(times: int) -> list[float]:
        model = tiny_gpt2()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        probe = WeightsProbe()
        compute = probe.compute
        probe.compute = lambda: [compute() for _ in range(times)][-1]  # each evaluation computes `times` times
        growth = []
        monitor = Monitor(model, optimizer=optimizer, probes=[probe], schedule=1, log_dir=None)
        batch = torch.randint(1, 64, (2, 16), generator=torch.Generator().manual_seed(0))
        for step in (1, 2, 3):
            with monitor.step(step, batch):
                model(input_ids=batch, labels=batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            growth.append(monitor.latest.get("mechmon/weights/norm_growth"))
        monitor.close()
        return growth

    once = run(1)
    assert once[0] is None and all(g is not None and g != 0 for g in once[1:])  # no baseline at the first
    assert run(3) == once
