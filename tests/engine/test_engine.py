"""The engine itself: panel layout known at setup, alert steps, the step record, inputs read from the model."""

import math

import numpy as np
import pytest
import torch

from mechmon import InductionProbe, LogitsProbe, Monitor, Threshold, at, every
from mechmon.engine import StepRecord, model_inputs, to_host
from tests.helpers import plain_run, read_events, tiny_gpt2


def test_a_probe_first_due_later_has_its_panel(tmp_path):
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probes = [InductionProbe(period=10, batch_size=2, schedule=at([2])), LogitsProbe()]
    plain_run(
        Monitor(model, optimizer=optimizer, probes=probes, schedule=every(1), log_dir=tmp_path), model, optimizer, 3
    )
    acc = read_events(tmp_path)
    [layout] = acc.Tensors("custom_scalars__config__")  # written once, at the first publish (step 1)
    text = layout.tensor_proto.string_val[0].decode("latin-1")
    assert "induction: score_max" in text and "prev_token: score_max" in text and "logits: norm_mean" in text
    assert [e.step for e in acc.Scalars("mechmon/induction/score_max")] == [2]


def test_a_probe_failing_at_its_first_evaluation_is_stamped_with_that_step():
    def broken(batch):
        raise KeyError("no labels here")

    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe(targets=broken)], schedule=every(3), log_dir=None)
    with pytest.warns(UserWarning, match="probe 'logits' raised KeyError"):
        plain_run(monitor, model, optimizer, 2)
    assert [(a.rule, a.step) for a in monitor.alerts] == [("probe_failed", 1)]


def test_an_on_alert_callable_that_raises_is_warned_about_and_training_goes_on():
    def pager(alert):
        raise TimeoutError("webhook timed out")

    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    marker = Threshold("mechmon/logits/norm_mean", level=0.0, name="marker")
    probes, rules = [LogitsProbe()], [marker]
    monitor = Monitor(model, optimizer=optimizer, probes=probes, rules=rules, on_alert=[pager], log_dir=None)
    with pytest.warns(UserWarning, match="on_alert callable .* raised TimeoutError"):
        plain_run(monitor, model, optimizer, 2)
    assert [a.rule for a in monitor.alerts] == ["marker"]


def test_the_record_packs_one_transfer_and_unpacks_by_probe():
    record = StepRecord(step=3, due=[], with_images=True)
    record.metrics = {"a": {"k1": torch.tensor(1.5), "k2": torch.arange(6.0).view(2, 3)}, "b": {"k3": torch.tensor(2)}}
    record.host_inputs = {"b": {"gram": torch.eye(2)}}
    record.reduced = {"failures": torch.tensor([0.0, 2.0]), "budget": torch.tensor([0.5, 2.0])}
    metrics, inputs, reduced = record.unpack(to_host(record.tensors()))
    assert metrics["a"]["k1"] == 1.5 and metrics["b"]["k3"] == 2.0
    np.testing.assert_array_equal(metrics["a"]["k2"], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(inputs["b"]["gram"], np.eye(2))
    np.testing.assert_array_equal(reduced["failures"], [0.0, 2.0])
    np.testing.assert_array_equal(reduced["budget"], [0.5, 2.0])


@pytest.mark.parametrize(
    "args,kwargs,want",
    [
        ((1,), {}, 1),
        ((), {"input_ids": 1, "labels": 2}, {"input_ids": 1, "labels": 2}),
        ((1, 2), {}, (1, 2)),
        ((1,), {"targets": 2}, (1, 2)),
        ((1,), {"labels": 2}, {"input_ids": 1, "labels": 2}),
    ],
)
def test_model_inputs_as_a_batch(args, kwargs, want):
    assert model_inputs(args, kwargs) == want


def _eval_forwards(model):
    """Count the model's eval-mode forwards of real rows (probe forwards, not the 2-token shape reads)."""
    seen = {"n": 0}

    def count(module, args, kwargs):
        inputs = model_inputs(args, kwargs)
        ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs
        seen["n"] += not module.training and ids.shape[-1] > 2

    model.register_forward_pre_hook(count, with_kwargs=True)
    return seen


def test_probes_on_the_same_batch_share_one_forward_and_log_what_they_log_alone(tmp_path):
    from mechmon import AttentionEntropyProbe, CollapseProbe, MassiveActivationProbe, RankProbe

    text = torch.randint(1, 64, (4, 32), generator=torch.Generator().manual_seed(1))

    def run(probes, taken):
        model = tiny_gpt2()  # with dropout: no probe may draw from the run's random stream
        forwards = _eval_forwards(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = Monitor(model, optimizer=optimizer, probes=probes(taken), schedule=every(2), log_dir=None)
        plain_run(monitor, model, optimizer, 2)
        return monitor.latest, forwards["n"]

    def together(taken):
        batch = None if taken else text
        return [CollapseProbe(batch), RankProbe(batch), MassiveActivationProbe(batch), AttentionEntropyProbe(batch)]

    for taken in (False, True):  # given the same rows, or all taking them from the first training batch
        shared, forwards = run(together, taken)
        assert forwards == 2 * 1  # steps 1 and 2, one forward each for the four probes (the plain three join SDPA's)
        alone = {}
        for i in range(4):
            values, forwards = run(lambda t, i=i: [together(t)[i]], taken)
            assert forwards == 2
            alone.update(values)
        assert shared.keys() == alone.keys()
        for key, value in alone.items():
            assert shared[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key  # a NaN on both sides fails


def test_plain_readers_join_the_sdpa_forward_of_their_batch_and_other_batches_run_alone():
    from mechmon import AttentionLogitProbe, CollapseProbe, InductionProbe
    from mechmon.capture import resolve_names
    from mechmon.engine.forward import forward_groups

    text = torch.randint(1, 64, (4, 32), generator=torch.Generator().manual_seed(1))
    model = tiny_gpt2()
    monitor = Monitor(model, probes=[CollapseProbe(text), AttentionLogitProbe(text), InductionProbe(period=10)])
    probes = monitor.probes
    names = {p.name: resolve_names(monitor.adapter, p.requires) for p in probes}
    assert [[p.name for p in g] for g in forward_groups(probes, names)] == [
        ["attn_logits", "repr_collapse"],
        ["induction"],
    ]
    monitor.close()


def test_a_step_switches_the_model_into_each_probe_mode_once_and_logs_what_each_probe_logs_alone():
    from mechmon import AttentionLogitProbe, CollapseProbe, PrefixMatchingProbe

    text = torch.randint(1, 64, (4, 32), generator=torch.Generator().manual_seed(1))

    def run(probes):
        model = tiny_gpt2()
        implementation = model.config._attn_implementation
        switches = []
        train = model.train
        model.train = lambda mode=True: (switches.append(mode), train(mode))[1]  # eval() is train(False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = Monitor(model, optimizer=optimizer, probes=probes, schedule=every(1), log_dir=None)
        switches.clear()
        plain_run(monitor, model, optimizer, 1)
        assert model.training and model.config._attn_implementation == implementation
        return monitor.latest, switches.count(False)

    def every_mode():  # two pattern readers on two batches, an SDPA reader and a plain one on a third
        patterns = [InductionProbe(period=10), PrefixMatchingProbe(period=6)]
        return [*patterns, AttentionLogitProbe(text), CollapseProbe(text)]

    together, switches = run(every_mode())
    assert switches == 2  # eager attention for both pattern batches, SDPA for the text batch
    alone = {}
    for i in range(4):
        alone.update(run([every_mode()[i]])[0])
    assert together.keys() == alone.keys()
    for key, value in alone.items():
        assert together[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_a_probe_failing_in_a_shared_forward_is_the_only_one_disabled():
    from mechmon import CollapseProbe, RankProbe

    class Broken(RankProbe):
        name = "broken_rank"

        def reduce_capture(self, name, tensor):
            raise RuntimeError("a bug in this probe")

    text = torch.randint(1, 64, (4, 32), generator=torch.Generator().manual_seed(1))
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer=optimizer, probes=[CollapseProbe(text), Broken(text)], log_dir=None)
    with pytest.warns(UserWarning, match="probe 'broken_rank' raised RuntimeError"):
        plain_run(monitor, model, optimizer, 1)
    assert monitor.disabled == {"broken_rank"}
    assert math.isfinite(monitor.latest["mechmon/repr_collapse/mean_cos"])


def test_the_non_finite_guard_reads_keys_of_any_depth_and_skips_optional_stats():
    from mechmon.engine.publish import Publisher

    publisher = Publisher("mechmon", [])
    publisher.optional = {"nlm/cos_update"}
    values = {"mechmon/nlm/cos_grad": 0.1, "mechmon/nlm/cos_update": math.nan, "mechmon/flat": math.nan}
    with pytest.warns(UserWarning, match="could not be measured"):
        assert publisher.check(1, values) == []  # optional, and a two-segment key whose family has no finite value
    fired = publisher.check(2, {"mechmon/nlm/cos_grad": math.nan, "mechmon/nlm/cos_update": 0.2})
    assert [a.key for a in fired] == ["mechmon/nlm/cos_grad"]  # measured before: its NaN fires


@pytest.mark.parametrize("own_optimizer", [False, True])
def test_a_loop_whose_optimizer_steps_other_tensors_is_told_once_that_nothing_is_evaluated(own_optimizer):
    """DeepSpeed's ``engine.step()`` steps its own fp32 copies: the monitor's step hooks never see the model move."""
    import warnings

    model = tiny_gpt2()
    tensors = list(model.parameters()) if own_optimizer else [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(tensors, lr=0.0)
    monitor = Monitor(model, probes=[LogitsProbe()], schedule=1, budget=None, log_dir=None)
    batch = torch.randint(1, 64, (2, 8))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for step in (1, 1, 2, 3):  # two micro-batches of step 1, then one a step
            with monitor.step(step, batch):
                model(input_ids=batch, labels=batch).loss.backward()
                optimizer.step()
    monitor.close()
    told = [str(w.message) for w in seen if "no optimizer step of the watched model" in str(w.message)]
    if own_optimizer:
        assert not told and "mechmon/logits/loss_nats" in monitor.latest
    else:
        assert len(told) == 1 and "reached step 2" in told[0] and "since step 1" in told[0] and not monitor.latest
