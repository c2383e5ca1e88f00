"""The overhead budget: a slow monitor thins its own cadence to stay under its share of wall time."""

import time

import pytest
import torch

from mechmon import LogitsProbe, Monitor, WeightsProbe, at
from mechmon.engine.budget import MAX_STRIDE, WINDOW, Budget
from tests.helpers import plain_run, tiny_gpt2


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
    if budget is None:
        plain_run(monitor, model, optimizer, steps)
    else:
        with pytest.warns(UserWarning, match="takes .* of wall time even at every 8th due step"):
            plain_run(monitor, model, optimizer, steps)
    return monitor, [(s, v) for s, v in logged if "mechmon/logits/norm_mean" in v]


def test_a_budget_stretches_the_cadence_and_logs_it():
    unlimited, every_step = run(None)
    assert [s for s, _ in every_step] == list(range(1, 61))
    monitor, evaluated = run(0.05)
    steps = [s for s, _ in evaluated]
    assert steps[0] == 1 and len(steps) < 20  # thinned
    strides = [v["mechmon/monitor/stride"] for _, v in evaluated]
    assert strides[-1] == MAX_STRIDE and all(b in (a / 2, a, a * 2) for a, b in zip(strides, strides[1:], strict=False))
    shares = [v["mechmon/monitor/overhead_frac"] for _, v in evaluated]
    assert shares[:2] == [0, 0]  # the first evaluation is the baseline, not counted (it shows from the next one)
    assert shares[-1] > 0.05  # 40 ms on steps of a few ms: over budget even at the cap (and warned, see below)
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
    restored.load_state_dict({"stride": 64})  # a state from before the cap
    assert restored.stride == MAX_STRIDE


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


class SlowAtFirst(LogitsProbe):
    """Slow for its first 4 evaluations only (one-time costs): the budget must not keep the schedule thinned."""

    calls = 0

    def evaluate(self):
        SlowAtFirst.calls += 1
        if SlowAtFirst.calls <= 4:
            time.sleep(0.2)


def test_a_thinned_schedule_never_starves_and_a_probes_own_steps_are_kept():
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    probes = [SlowAtFirst(), WeightsProbe(schedule=at([37, 38]))]
    monitor = Monitor(model, optimizer=optimizer, probes=probes, schedule=2, log_dir=None, budget=0.05)
    logged = []
    monitor.publisher.listeners.append(lambda values, step: logged.append((step, dict(values))))
    with pytest.warns(UserWarning, match="over its budget of 5.0%: it now evaluates every 2nd due step"):
        plain_run(monitor, model, optimizer, 160)
    steps = [s for s, v in logged if "mechmon/logits/norm_mean" in v]
    strides = [v["mechmon/monitor/stride"] for _, v in logged if "mechmon/monitor/stride" in v]
    assert max(strides) >= 2 and max(strides) <= MAX_STRIDE
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert max(gaps) <= 2 * MAX_STRIDE and steps[-1] >= 160 - 2 * MAX_STRIDE  # evaluated to the end of the run
    weights = [s for s, v in logged if "mechmon/weights/norm" in v]
    assert weights == [37, 38]  # a probe's own steps are never thinned


def test_the_stride_never_passes_eight_and_says_when_the_budget_cannot_be_kept():
    budget = Budget(0.01)
    with pytest.warns(UserWarning) as warned:
        for _ in range(6):
            budget.agree(spent=5.0, elapsed=10.0)  # 50 %, whatever the stride
    assert budget.stride == MAX_STRIDE
    messages = [str(w.message) for w in warned]
    assert len(messages) == 2 and "every 2nd due step" in messages[0] and "even at every 8th" in messages[1]


def test_the_share_is_taken_over_the_recent_window():
    budget = Budget(0.1)
    budget.add(0.0)  # the baseline
    for _ in range(WINDOW):
        budget.add(1.0)
    assert budget.measured()[0] == WINDOW
    for _ in range(WINDOW):
        budget.add(0.001)  # the slow evaluations leave the window
    assert budget.measured()[0] == pytest.approx(WINDOW * 0.001)
