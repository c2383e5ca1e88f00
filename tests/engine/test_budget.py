"""The overhead budget: a slow monitor thins its own cadence to stay under its share of wall time."""

import time

import pytest
import torch

from mechmon import LogitsProbe, Monitor
from mechmon.engine.budget import Budget
from tests.conftest import plain_run, tiny_gpt2


class SlowLogits(LogitsProbe):
    """LogitsProbe whose evaluation takes 40 ms more (a stand-in for a costly probe on a big model)."""

    def evaluate(self):
        time.sleep(0.04)


def run(budget, steps=60):
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = Monitor(model, optimizer=optimizer, probes=[SlowLogits()], schedule=1, log_dir=None, budget=budget)
    logged = []
    monitor.publisher.listeners.append(lambda values, step: logged.append((step, dict(values))))
    plain_run(monitor, model, optimizer, steps)
    return monitor, [(s, v) for s, v in logged if "mechmon/logits/norm_mean" in v]


def test_a_budget_stretches_the_cadence_and_logs_it():
    unlimited, every_step = run(None)
    assert [s for s, _ in every_step] == list(range(1, 61))
    monitor, evaluated = run(0.05)
    steps = [s for s, _ in evaluated]
    assert steps[0] == 1 and len(steps) < 20  # thinned
    strides = [v["mechmon/monitor/stride"] for _, v in evaluated]
    assert strides[-1] >= 4 and all(b in (a / 2, a, a * 2) for a, b in zip(strides, strides[1:], strict=False))
    shares = [v["mechmon/monitor/overhead_frac"] for _, v in evaluated]
    assert shares[:2] == [0, 0]  # the first evaluation is the baseline, not counted (it shows from the next one)
    assert 0 < shares[-1] < max(shares)  # the share falls once the stride has grown
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert gaps[-1] > 1  # every evaluation of a stretched cadence still runs whole (hooks on that step only)
    assert all(len(v) > 10 for _, v in evaluated)
    assert monitor.state_dict()["budget"]["stride"] == strides[-1]


def test_the_stride_follows_the_agreed_share():
    budget = Budget(0.1)
    assert budget.admits()
    assert budget.agree(spent=2.0, elapsed=10.0) == pytest.approx(0.2) and budget.stride == 2
    budget.skip()
    assert budget.admits()  # one skipped, the second due step runs
    budget.agree(spent=2.0, elapsed=100.0)  # 2 %: under half the budget
    assert budget.stride == 1
    restored = Budget(0.1)
    restored.load_state_dict({**budget.state_dict(), "stride": 8})
    assert restored.stride == 8


def test_the_first_evaluation_is_the_baseline_and_not_counted():
    budget = Budget(0.1)
    budget.add(5.0)  # step 1: one-time costs, one step into the run
    budget.add(0.5)
    assert budget.measured()[0] == 0.5
    restored = Budget(0.1)
    restored.load_state_dict(budget.state_dict())
    restored.add(0.25)  # a resumed run counts from its first evaluation on
    assert restored.measured()[0] == 0.75


def test_the_default_budget_is_one_percent_unless_a_schedule_is_given():
    assert Monitor(log_dir=None).budget.share == 0.01
    assert Monitor(log_dir=None, schedule=10).budget is None
    assert Monitor(log_dir=None, schedule=10, budget=0.02).budget.share == 0.02
    assert Monitor(log_dir=None, budget=None).budget is None
    with pytest.raises(ValueError, match=r"Monitor\(budget=\.\.\.\) must be 'auto', None"):
        Monitor(budget="fast")


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1])
def test_a_budget_outside_0_1_fails_at_construction(bad):
    with pytest.raises(ValueError, match=r"Monitor\(budget=\.\.\.\) must be a number > 0 < 1"):
        Monitor(budget=bad)
