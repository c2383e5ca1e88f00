import csv
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mechmon import InductionProbe, LogitsProbe, MechMonitor, Threshold, every
from mechmon.alerts import Collapse, Emergence, Trend
from mechmon.naming import KEY_RE
from tests.helpers import TinyLM, hook_count, make_trainer, read_events, scalar_steps, token_loader


def monitor(**kwargs):
    kwargs.setdefault("probes", [InductionProbe(period=20, batch_size=2), LogitsProbe()])
    kwargs.setdefault("schedule", every(2))
    return MechMonitor(**kwargs)


def test_fit_writes_keys_images_alerts_to_tensorboard_and_csv(tmp_path):
    marker = Threshold("mechmon/logits/norm_mean", level=0.0, name="test_marker")
    got = []
    mon = monitor(image_schedule=every(4), rules=[marker], on_alert=[got.append])
    loggers = [TensorBoardLogger(tmp_path, name="tb", version=0), CSVLogger(tmp_path, name="csv", version=0)]
    model = TinyLM()
    trainer = make_trainer(tmp_path, [mon], max_steps=6, logger=loggers)
    trainer.fit(model, token_loader())
    acc = read_events(tmp_path / "tb")
    tags = acc.Tags()["scalars"]
    mechmon_tags = [t for t in tags if t.startswith("mechmon/")]
    assert all(KEY_RE.match(t) for t in mechmon_tags)
    for key in [
        "induction/score_max",
        "induction/score_max/L01",
        "induction/loss_gap_nats",
        "prev_token/score_max",
        "logits/softmax_collapse_frac",
        "logits/zero_loss_frac",
        "logits/norm_mean",
        "logits/gap_mean_nats",
    ]:
        assert f"mechmon/{key}" in tags, key
        assert scalar_steps(acc, f"mechmon/{key}") == [1, 2, 4, 6]
    for key in ["induction/score_max", "prev_token/score_max", "logits/softmax_collapse_frac"]:
        assert all(0 <= e.value <= 1 for e in acc.Scalars(f"mechmon/{key}"))
    assert scalar_steps(acc, "mechmon/alerts/test_marker") == [1]
    assert [e.step for e in acc.Images("mechmon/induction/head_scores")] == [1, 4]
    assert acc.Images("mechmon/induction/head_scores")[0].width > 200  # a labelled figure, not 2 x 4 cells
    [values, _] = acc.Tensors("mechmon/induction/head_scores/values")  # what `mechmon report` draws
    assert [d.size for d in values.tensor_proto.tensor_shape.dim] == [2, 4]
    assert [e.step for e in acc.Tensors("mechmon/alerts/text_summary")] == [1]
    assert "custom_scalars__config__" in acc.Tags()["tensors"]  # the panel layout
    assert [a.rule for a in got] == ["test_marker"] and [a.rule for a in mon.alerts] == ["test_marker"]
    assert trainer.callback_metrics["mechmon/alerts/test_marker"].item() == 1.0
    assert "mechmon/induction/score_max" in trainer.callback_metrics
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    assert {r["step"] for r in rows if r.get("mechmon/logits/norm_mean")} == {"1", "2", "4", "6"}
    assert hook_count(model) == 0


def test_gradient_accumulation_runs_once_per_optimizer_step(tmp_path):
    mon = monitor(schedule=every(1))
    trainer = make_trainer(tmp_path, [mon], max_steps=4, accumulate_grad_batches=3)
    trainer.fit(TinyLM(), token_loader(n=64))
    acc = read_events(tmp_path / "tb")
    assert scalar_steps(acc, "mechmon/induction/score_max") == [1, 2, 3, 4]
    assert scalar_steps(acc, "mechmon/logits/norm_mean") == [1, 2, 3, 4]


def test_own_writer_without_tensorboard_logger(tmp_path):
    trainer = make_trainer(tmp_path, [monitor()], max_steps=2, logger=CSVLogger(tmp_path, name="csv", version=0))
    trainer.fit(TinyLM(), token_loader())
    acc = read_events(tmp_path / "mechmon")
    assert scalar_steps(acc, "mechmon/induction/score_max") == [1, 2]


def test_probe_that_raises_is_disabled_and_training_goes_on(tmp_path):
    def broken(batch):
        raise KeyError("no labels here")

    mon = monitor(probes=[InductionProbe(period=20, batch_size=2), LogitsProbe(targets=broken)], schedule=every(1))
    model = TinyLM()
    with pytest.warns(UserWarning, match="probe 'logits' raised KeyError"):
        make_trainer(tmp_path, [mon], max_steps=4).fit(model, token_loader())
    assert [a.rule for a in mon.alerts] == ["probe_failed"]
    acc = read_events(tmp_path / "tb")
    assert scalar_steps(acc, "mechmon/induction/score_max") == [1, 2, 3, 4]
    assert "mechmon/logits/norm_mean" not in acc.Tags()["scalars"]
    assert hook_count(model) == 0


def test_nan_logits_give_an_alert_and_the_fit_finishes(tmp_path):
    model = TinyLM()
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    handle = model.model.lm_head.register_forward_hook(poison)
    mon = monitor(probes=[LogitsProbe()], schedule=every(1))
    trainer = make_trainer(tmp_path, [mon], max_steps=5)
    trainer.fit(model, token_loader())
    handle.remove()
    assert trainer.global_step == 5
    nonfinite = [a for a in mon.alerts if a.rule == "non_finite"]
    assert nonfinite and {a.step for a in nonfinite} == {3} and math.isnan(nonfinite[0].value)
    assert hook_count(model) == 0


def test_hooks_removed_after_an_exception_inside_fit(tmp_path):
    class Crashing(TinyLM):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise RuntimeError("user bug")
            return super().training_step(batch, batch_idx)

    model = Crashing()
    with pytest.raises(RuntimeError, match="user bug"):
        make_trainer(tmp_path, [monitor(schedule=every(1))], max_steps=6).fit(model, token_loader())
    assert hook_count(model) == 0


def test_state_dict_round_trip_and_resume_does_not_refire(tmp_path):
    def make(**kw):
        key = "mechmon/logits/norm_mean"
        rules = [
            Threshold(key, level=0.0, name="test_marker"),
            Trend(key, window=5, name="test_trend"),  # window: values of earlier evaluations
            Emergence(key, level=100.0, name="test_emergence", warmup=1),  # baseline
            Collapse(key, name="test_collapse"),  # running extreme
        ]
        return monitor(rules=rules, **kw)

    class AtResume(pl.Callback):  # the rule states the resumed run starts training with
        def on_train_start(self, trainer, pl_module):
            self.states = {r.name: r.state_dict() for r in second.engine.publisher.rules if r.name.startswith("test_")}

    first = make()
    trainer = make_trainer(tmp_path, [first], max_steps=4)
    trainer.fit(TinyLM(), token_loader())  # stopped mid-run: evaluations at 1, 2, 4
    ckpt_path = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt_path)
    saved = torch.load(ckpt_path, weights_only=False)["callbacks"][first.state_key]
    assert saved["last_step"] == 4 and saved["rules"]["test_marker|mechmon/logits/norm_mean"]["active"] is True
    assert [a["rule"] for a in saved["alerts"]] == ["test_marker"]
    before = {r.name: r.state_dict() for r in first.engine.publisher.rules if r.name.startswith("test_")}
    assert len(before["test_trend"]["values"]) == 3 and before["test_collapse"]["extreme"] is not None

    second, probe = make(), AtResume()
    resumed = make_trainer(
        tmp_path, [second, probe], max_steps=8, logger=TensorBoardLogger(tmp_path, name="tb2", version=0)
    )
    resumed.fit(TinyLM(), token_loader(), ckpt_path=ckpt_path)
    assert probe.states == before  # windows, baselines and extremes restored before training goes on
    fired = [(a.rule, a.step) for a in second.alerts]
    assert fired[0] == ("test_marker", 1) and all(s > 4 and r != "test_marker" for r, s in fired[1:])  # no refire
    [trend] = [r for r in second.engine.publisher.rules if r.name == "test_trend"]
    assert trend.values[:3] == before["test_trend"]["values"]  # the window kept growing from there
    acc = read_events(tmp_path / "tb2")
    assert scalar_steps(acc, "mechmon/logits/norm_mean") == [6, 8]  # schedule continues on the restored step
    assert "mechmon/alerts/test_marker" not in acc.Tags()["scalars"]


def test_unsupported_module_fails_in_setup_with_guidance(tmp_path):
    class NotATransformer(TinyLM):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Linear(3, 3)

    with pytest.raises(RuntimeError, match=r"no adapter for NotATransformer. Looked at .*model: Linear.*ModuleAdapter"):
        make_trainer(tmp_path, [monitor()], max_steps=1).fit(NotATransformer(), token_loader())


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"probes": []}, ValueError),
        ({"probes": [LogitsProbe(), LogitsProbe()]}, ValueError),
        ({"probes": ["induction"]}, TypeError),
        ({"schedule": "often"}, TypeError),
        ({"namespace": "Mech Mon"}, ValueError),
        ({"rules": [object()]}, TypeError),
        ({"on_alert": [42]}, TypeError),
        ({"adapter": 3}, TypeError),
        ({"log_dir": 7}, TypeError),
    ],
)
def test_constructor_validation(kwargs, error):
    with pytest.raises(error):
        MechMonitor(**kwargs)


def test_numerical_stability_probes_in_a_real_fit(tmp_path):
    from mechmon import NLMProbe, WeightsProbe

    mon = monitor(probes=[LogitsProbe(), WeightsProbe(), NLMProbe()], schedule=every(2))
    model = TinyLM()
    make_trainer(tmp_path, [mon], max_steps=4, accumulate_grad_batches=2).fit(model, token_loader())
    acc = read_events(tmp_path / "tb")
    tags = acc.Tags()["scalars"]
    head = "transformer.wte.weight"  # GPT-2 ties lm_head to the embedding: found by identity
    for key in [
        "weights/norm",
        f"weights/norm/{head}",
        "nlm/cos_grad",
        f"nlm/cos_grad/{head}",
        "nlm/cos_update",
        "nlm/par_frac",
        "logits/accuracy_frac",
        "logits/gap_frac_near_absorb",
        "logits/absorb_gap_nats",
    ]:
        assert scalar_steps(acc, f"mechmon/{key}") == [1, 2, 4], key
    assert scalar_steps(acc, "mechmon/weights/norm_growth") == [2, 4]  # a growth needs a previous evaluation
    assert all(-1 <= e.value <= 1 for e in acc.Scalars("mechmon/nlm/cos_grad"))
    assert all(e.value != 0 for e in acc.Scalars("mechmon/nlm/cos_grad"))  # gradients were seen each time
    gaps = {round(e.value, 6) for e in acc.Scalars("mechmon/logits/absorb_gap_nats")}
    assert len(gaps) == 1 and 16.6 <= gaps.pop() <= 16.64 + math.log(63) + 0.06  # fp32, V = 64, measured once
    assert "mechmon/alerts/probe_failed" not in tags and hook_count(model) == 0
