"""Faults injected as real runs meet them: none reaches the training loop (issue "Never harm the run")."""

import errno
import math

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from mechmon import LogitsProbe, MechMonitor, Monitor, at, every, union
from mechmon.probe import StreamingProbe
from tests.helpers import (
    CTX,
    VOCAB,
    TinyLM,
    hook_count,
    make_trainer,
    plain_run,
    read_events,
    scalar_steps,
    tiny_gpt2,
    token_loader,
)


def test_a_full_disk_stops_the_writing_not_the_run(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    monkeypatch.setattr(SummaryWriter, "flush", full)
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], schedule=every(1), log_dir=tmp_path)
    with pytest.warns(UserWarning, match=r"stopped writing metrics after TensorBoardWriter.scalars raised OSError"):
        plain_run(monitor, model, optimizer, 3)
    assert set(monitor.latest) >= {"mechmon/logits/norm_mean"} and hook_count(model) == 0

    lightning = MechMonitor(probes=[LogitsProbe()], schedule=every(1), log_dir=tmp_path / "own")
    with pytest.warns(UserWarning, match="stopped writing metrics"):
        trainer = make_trainer(tmp_path, [lightning], max_steps=3, logger=False)
        trainer.fit(TinyLM(), token_loader())
    assert trainer.global_step == 3 and "mechmon/logits/norm_mean" in trainer.callback_metrics


class PatternCounter(StreamingProbe):
    """A streaming probe on the training forward's attention patterns."""

    name = "pattern_counter"
    requires = ("blocks.*.attn.hook_pattern",)

    def setup(self, model, adapter, device):
        self.add_state("n", torch.zeros(()), "sum")

    def update(self, captures, batch):
        self.n += len(captures)

    def compute(self):
        return {self.key("n"): self.n}


def test_a_capture_hook_failing_inside_the_training_forward_disables_its_probe_only(tmp_path):
    model = TinyLM()  # SDPA: the training forward's attention returns no probabilities
    mon = MechMonitor(probes=[PatternCounter(), LogitsProbe()], schedule=every(1))
    with pytest.warns(UserWarning, match="probe 'pattern_counter' raised RuntimeError: the attention module returned"):
        trainer = make_trainer(tmp_path, [mon], max_steps=3)
        trainer.fit(model, token_loader())
    assert trainer.global_step == 3 and mon.engine.disabled == {"pattern_counter"}
    assert [(a.rule, a.step) for a in mon.alerts] == [("probe_failed", 1)]
    assert "mechmon/logits/norm_mean" in trainer.callback_metrics and hook_count(model) == 0


def test_schedules_built_from_ints_and_schedules_that_raise():
    assert [s for s in range(1, 21) if union(5, at([7]))(s)] == [1, 5, 7, 10, 15, 20]
    with pytest.raises(ValueError, match=r"Monitor\(schedule=...\) must be a callable step -> bool \(at step 1"):
        Monitor(schedule=lambda step: 1 / 0)
    with pytest.raises(TypeError, match=r"at\(steps=...\) must be an int >= 0, got 1.7"):
        at([1.7])
    with pytest.raises(TypeError, match=r"every\(first=...\) must be True or False"):
        every(5, first="no")

    def flaky(step):
        if step == 3:
            raise KeyError("lookup table ends")
        return True

    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe(schedule=flaky)], log_dir=None)
    with pytest.warns(UserWarning, match="the schedule of probe 'logits' raised KeyError at step 3"):
        plain_run(monitor, model, optimizer, 4)
    assert [(a.rule, a.step) for a in monitor.alerts] == [("probe_failed", 3)] and hook_count(model) == 0


def test_nan_weights_give_one_non_finite_alert_naming_the_keys():
    from mechmon import WeightsProbe

    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe(), WeightsProbe()], log_dir=None, schedule=1)
    data = torch.randint(1, VOCAB, (3, 2, CTX), generator=torch.Generator().manual_seed(0))
    for step, batch in enumerate(data, start=1):
        with monitor.step(step, batch):
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step == 2:
                with torch.no_grad():
                    model.lm_head.weight.fill_(float("nan"))  # tied to the embedding: everything downstream is NaN
    monitor.close()
    steps = [a.step for a in monitor.alerts if a.rule == "non_finite"]
    assert steps == [2, 3]  # weights at 2 (poisoned after that step's update), the logits of step 3's forward
    assert all("metrics became non-finite" in a.reason for a in monitor.alerts if a.rule == "non_finite")


def test_a_rule_on_a_key_no_probe_logs_is_warned_about_with_the_nearest_key():
    from mechmon import Threshold

    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rules = [Threshold("mechmon/logits/norm_man", 1.0, name="typo"), Threshold("mechmon/logitz/norm_mean", 1.0)]
    with pytest.warns(UserWarning, match=r"rule 'threshold' watches mechmon/logitz/norm_mean, which no probe logs"):
        monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], rules=rules, log_dir=None)
    with pytest.warns(
        UserWarning, match=r"'typo' watches mechmon/logits/norm_man.*did you mean mechmon/logits/norm_mean"
    ):
        plain_run(monitor, model, optimizer, 1)


def test_a_context_shorter_than_the_induction_batch_fails_at_setup_naming_the_fix():
    from mechmon import InductionProbe

    model = tiny_gpt2()  # n_positions = CTX = 48
    with pytest.raises(ValueError, match=r"InductionProbe\(period=50\) needs sequences of 100 tokens, but the model's "
                                         r"context is 48; pass InductionProbe\(period=24\)"):  # fmt: skip
        Monitor(model, probes=[InductionProbe(period=50)], log_dir=None)  # an explicit period is kept, or refused
    with pytest.warns(UserWarning, match="period 24 is used"):  # the default fits the context
        Monitor(model, probes=[InductionProbe()], log_dir=None).close()


def test_a_probe_disabled_before_a_resume_runs_again_after_it_with_a_warning():
    def broken(batch):
        raise KeyError("no labels here")

    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = Monitor(model, optimizer=optimizer, probes=[LogitsProbe(targets=broken)], schedule=1, log_dir=None)
    with pytest.warns(UserWarning, match="probe 'logits' raised KeyError"):
        plain_run(first, model, optimizer, 2)
    assert first.disabled == {"logits"}
    fixed = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], schedule=1, log_dir=None)
    with pytest.warns(UserWarning, match=r"probes \['logits'\] were disabled in the run this state comes from"):
        fixed.load_state_dict(first.state_dict())
    plain_run(fixed, model, optimizer, 2)
    assert not fixed.disabled and "mechmon/logits/norm_mean" in fixed.latest


@pytest.mark.parametrize(
    "precision,logits_dtype",
    [
        ("32-true", torch.float32),
        ("bf16-mixed", torch.bfloat16),
        ("16-mixed", torch.bfloat16),  # on CPU Lightning runs 16-mixed as bf16-mixed (and warns)
        ("bf16-true", torch.bfloat16),
    ],
)
def test_the_default_loss_dtype_is_the_one_the_loss_is_computed_in(tmp_path, precision, logits_dtype):
    from mechmon.functional.logits import loss_dtype_for, measured_absorption_gap

    assert loss_dtype_for(torch.bfloat16) == loss_dtype_for(torch.float16) == torch.float32
    assert loss_dtype_for(torch.float64) == torch.float64
    module, seen = TinyLM(), []
    module.model.lm_head.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    mon = MechMonitor(probes=[LogitsProbe()], schedule=every(1))
    trainer = make_trainer(tmp_path, [mon], max_steps=2, precision=precision)
    trainer.fit(module, token_loader())
    assert seen[0] == logits_dtype  # the head really produced half-precision logits under the 16-bit precisions
    fp32_gap = measured_absorption_gap(VOCAB, torch.float32, torch.device("cpu")).item()
    assert trainer.callback_metrics["mechmon/logits/absorb_gap_nats"].item() == pytest.approx(fp32_gap)
    assert "softmax_collapse" not in [a.rule for a in mon.alerts]


def test_the_probe_batch_taken_from_training_comes_back_with_the_state():
    from mechmon import CollapseProbe

    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = Monitor(model, optimizer=optimizer, probes=[CollapseProbe()], schedule=1, log_dir=None)
    plain_run(first, model, optimizer, 2)
    batch = first.probes[0].probe_batch.clone()
    resumed = Monitor(model, optimizer=optimizer, probes=[CollapseProbe()], schedule=1, log_dir=None)
    resumed.load_state_dict(first.state_dict())
    other = torch.randint(1, VOCAB, (2, CTX), generator=torch.Generator().manual_seed(9))
    with resumed.step(3, other):  # another data order after the resume
        model(input_ids=other, labels=other).loss.backward()
        optimizer.step()
    resumed.close()
    assert torch.equal(resumed.probes[0].probe_batch, batch) and "mechmon/repr_collapse/mean_cos" in resumed.latest


def test_a_one_token_probe_batch_fails_at_construction_naming_the_fix():
    from mechmon import CollapseProbe, RankProbe

    for probe in (RankProbe, CollapseProbe):
        with pytest.raises(ValueError, match=r"batch=\.\.\.\) has no row with 2 or more real tokens"):
            probe(torch.randint(1, VOCAB, (1, 1)))


def test_an_all_padding_first_batch_is_skipped_and_the_probe_batch_taken_from_the_next():
    from mechmon import CollapseProbe, RankProbe

    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer=optimizer, probes=[CollapseProbe(), RankProbe()], schedule=1, log_dir=None)
    ids = torch.randint(1, VOCAB, (2, CTX), generator=torch.Generator().manual_seed(0))
    padded = {"input_ids": ids, "attention_mask": torch.zeros_like(ids)}
    real = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with pytest.warns(UserWarning, match="skipped a training batch with no row of 2 or more real tokens"):
        for step, batch in enumerate([padded, real, real], start=1):
            with monitor.step(step, batch):
                model(**batch, labels=ids).loss.backward()
                optimizer.step()
    monitor.close()
    assert torch.equal(monitor.probes[0].probe_batch, ids) and not monitor.disabled and not monitor.alerts
    values = [monitor.latest[f"mechmon/{k}"] for k in ("repr_collapse/mean_cos", "repr_rank/rankme")]
    assert all(math.isfinite(v) for v in values) and values[1] > 2


class RowCounter(StreamingProbe):
    """Counts the logits rows the training forward produced while its hooks were attached."""

    name = "row_counter"
    requires = ("logits",)

    def setup(self, model, adapter, device):
        self.add_state("rows", torch.zeros(()), "sum")

    def update(self, captures, batch):
        self.rows += captures["logits"].shape[0]

    def compute(self):
        return {self.key("rows"): self.rows}


class TwoOptimizers(TinyLM):
    """Manual optimization stepping two optimizers per batch: Lightning's global_step advances by 2."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.hooked: list[int] = []

    def training_step(self, batch, batch_idx):
        self.hooked.append(hook_count(self.model))
        first, second = self.optimizers()
        loss = self.model(input_ids=batch, labels=batch).loss
        self.manual_backward(loss)
        first.step(), second.step(), first.zero_grad(), second.zero_grad()

    def configure_optimizers(self):
        blocks = list(self.model.transformer.h.parameters())
        ids = {id(p) for p in blocks}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return torch.optim.SGD(blocks, lr=0.01), torch.optim.SGD(rest, lr=0.01)


def test_manual_optimization_with_two_optimizers_evaluates_every_scheduled_step_once(tmp_path):
    module = TwoOptimizers()
    mon = MechMonitor(probes=[RowCounter()], schedule=every(5))
    trainer = make_trainer(tmp_path, [mon], max_steps=20)
    trainer.fit(module, token_loader(n=40))
    assert trainer.global_step == 20
    # due steps 1, 5, 10, 15, 20 fall in the batches ending at global steps 2, 6, 10, 16, 20
    assert scalar_steps(read_events(tmp_path / "tb"), "mechmon/row_counter/rows") == [2, 6, 10, 16, 20]
    assert trainer.callback_metrics["mechmon/row_counter/rows"].item() == 4  # one batch of 4 rows, not a sum
    scheduled = {0, 2, 4, 7, 9}  # batch indices ending at the steps above
    assert [i for i, n in enumerate(module.hooked) if n] == sorted(scheduled)
    assert hook_count(module.model) == 0


def test_a_second_thread_driving_the_same_monitor_gets_one_clear_error_and_the_first_goes_on():
    import threading

    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], schedule=every(1), log_dir=None)
    batch = torch.randint(1, VOCAB, (2, CTX))
    errors: list[BaseException] = []

    def loop(first: int, steps: int) -> None:
        try:
            for step in range(first, first + steps):
                with monitor.step(step, batch):
                    model(input_ids=batch, labels=batch).loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
        except BaseException as err:  # what reaches this thread's training loop
            errors.append(err)

    main = threading.Thread(target=loop, args=(1, 3))
    main.start()
    main.join()
    other = threading.Thread(target=loop, args=(4, 3))
    other.start()
    other.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "one Monitor serves one training loop" in str(errors[0])
    loop(4, 2)  # the main thread is not the first either: one loop per monitor, whichever thread
    assert len(errors) == 2 and monitor.last_step == 3 and hook_count(model) == 0
    monitor.close()


def test_logits_a_fused_head_never_makes_are_a_warning_not_a_critical_alert():
    """A loop that computes its loss from the hidden states and the head's weight (a fused or chunked LM head, as
    TRL's ``fused_lm_head`` or Liger's fused linear cross-entropy do): full logits never exist."""
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], schedule=every(1), log_dir=None)
    batch = torch.randint(1, VOCAB, (2, CTX))
    with pytest.warns(UserWarning, match=r"logits/.* could not be measured at step 1 .*without calling the model"):
        for step in (1, 2, 3):
            with monitor.step(step, batch):
                hidden = model.transformer(input_ids=batch).last_hidden_state
                logits = torch.nn.functional.linear(hidden, model.lm_head.weight)  # the head module is never called
                torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten()).backward()
                optimizer.step()
                optimizer.zero_grad()
    monitor.close()
    assert math.isnan(monitor.latest["mechmon/logits/softmax_collapse_frac"])
    assert [a.rule for a in monitor.alerts] == []  # NaN since the first evaluation: not measured, no non_finite


def test_a_value_that_becomes_nan_still_fires_non_finite():
    from mechmon.alerts import NonFinite

    rule = NonFinite("mechmon/x/y")
    assert rule.update(1, math.nan, measured=False) is None  # its whole family NaN: nothing was measured
    assert rule.update(2, 1.0) is None
    assert rule.update(3, math.nan, measured=False).rule == "non_finite"  # it was finite: it became non-finite
    assert NonFinite("mechmon/x/z").update(1, math.inf, measured=False).rule == "non_finite"  # a measured overflow


def test_a_warmup_from_learning_rate_zero_is_not_a_non_finite_alert():
    """The update cosine of a step that moved nothing (lr 0 at step 1, as linear warmups start) is not measured."""
    from mechmon import NLMProbe

    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, s / 2))  # lr 0 at the first step
    monitor = Monitor(model, optimizer=optimizer, probes=[NLMProbe()], schedule=1, budget=None, log_dir=None)
    optimizer.register_step_post_hook(lambda *_: warmup.step())
    with pytest.warns(UserWarning, match=r"mechmon/nlm/cos_update could not be measured at step 1"):
        plain_run(monitor, model, optimizer, 3)
    assert monitor.alerts == [] and math.isfinite(monitor.latest["mechmon/nlm/cos_update"])
