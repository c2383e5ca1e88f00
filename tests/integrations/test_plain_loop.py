"""A plain PyTorch loop with ``mechmon.Monitor``: ``with monitor.step(step, batch):`` around each micro-batch."""

import pytest
import torch
import torch.nn.functional as F

from mechmon import CollapseProbe, InductionProbe, LogitsProbe, Monitor, NLMProbe, Threshold, WeightsProbe, every
from tests.helpers import CTX, VOCAB, hook_count, read_events, scalar_steps, tiny_gpt2


def data(n, seed=0):
    return torch.randint(1, VOCAB, (n, 4, CTX), generator=torch.Generator().manual_seed(seed))


def monitor_for(model, optimizer, log_dir, **kwargs):
    marker = Threshold("mechmon/logits/norm_mean", level=0.0, name="marker")
    probes = [InductionProbe(period=10, batch_size=2), LogitsProbe(), NLMProbe(), WeightsProbe(), CollapseProbe()]
    return Monitor(
        model, optimizer=optimizer, probes=probes, schedule=every(2), rules=[marker], log_dir=log_dir, **kwargs
    )


def train(monitor, model, optimizer, steps, start=1, accumulation=1, hooks=None):
    batches = data(steps * accumulation, seed=start)
    for step in range(start, steps + 1):
        for micro in range(accumulation):
            batch = batches[(step - start) * accumulation + micro]
            with monitor.step(step, batch):
                if hooks is not None:
                    hooks[(step, micro)] = hook_count(model)
                model(input_ids=batch, labels=batch).loss.backward()
                if micro == accumulation - 1:
                    optimizer.step()
                    optimizer.zero_grad()


def test_plain_loop_hooks_only_scheduled_steps_and_resumes_from_its_state_dict(tmp_path):
    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = monitor_for(model, optimizer, tmp_path / "a")
    hooks = {}
    train(monitor, model, optimizer, steps=4, accumulation=2, hooks=hooks)
    state = monitor.state_dict()
    monitor.close()
    assert hooks[(3, 0)] == hooks[(3, 1)] == 0  # an unscheduled step: no hook on the model
    assert hooks[(2, 0)] > 0 and hooks[(2, 1)] > 0  # a scheduled step: the logits hook for both micro-batches
    assert hook_count(model) == 0
    acc = read_events(tmp_path / "a")
    for key in ["induction/score_max", "logits/norm_mean", "nlm/cos_grad", "weights/norm", "repr_collapse/mean_cos"]:
        assert scalar_steps(acc, f"mechmon/{key}") == [1, 2, 4], key
    assert all(e.value != 0 for e in acc.Scalars("mechmon/nlm/cos_grad"))
    assert [a.rule for a in monitor.alerts] == ["marker"] and not monitor.disabled
    assert monitor.latest["mechmon/logits/norm_mean"] == pytest.approx(
        acc.Scalars("mechmon/logits/norm_mean")[-1].value
    )

    resumed = monitor_for(model, optimizer, tmp_path / "b")
    resumed.load_state_dict(state)
    train(resumed, model, optimizer, steps=8, start=5)
    resumed.close()
    acc = read_events(tmp_path / "b")
    assert scalar_steps(acc, "mechmon/logits/norm_mean") == [6, 8]
    assert [(a.rule, a.step) for a in resumed.alerts] == [("marker", 1)]  # restored, not fired again


def test_without_an_optimizer_argument_any_optimizer_of_the_model_is_hooked(tmp_path):
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    other = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # another model's optimizer
    monitor = monitor_for(model, None, tmp_path)
    for step, batch in enumerate(data(2), start=1):
        with monitor.step(step, batch):
            model(input_ids=batch, labels=batch).loss.backward()
            other.step()
            optimizer.step()
            optimizer.zero_grad()
    monitor.close()
    assert scalar_steps(read_events(tmp_path), "mechmon/nlm/cos_grad") == [1, 2]
    assert hook_count(model) == 0


def test_an_exception_in_the_block_removes_the_hooks_and_reaches_the_caller(tmp_path):
    model = tiny_gpt2()
    monitor = monitor_for(model, torch.optim.SGD(model.parameters(), lr=0.1), None)
    try:
        with monitor.step(1, data(1)[0]):
            raise KeyError("user bug")
    except KeyError:
        pass
    assert hook_count(model) == 0


def test_accumulation_written_inside_one_step_block_pairs_each_forward_with_its_own_targets():
    """nanoGPT's loop shape: one ``with monitor.step(step, (X, Y))`` around all micro-batches, fetching the next
    ``(X, Y)`` after each forward. Each forward's logits must meet its own targets."""
    from tests.helpers.nanogpt import gpt

    model = gpt()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], schedule=1, log_dir=None)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 64, (8, 2, 49), generator=gen)
    X, Y = data[0, :, :-1], data[0, :, 1:].contiguous()
    losses = []
    with pytest.warns(UserWarning, match="several training forwards ran inside one monitor.step"):
        with monitor.step(1, (X, Y)):
            for micro in range(1, 5):
                logits, loss = model(X, Y)
                losses.append(F.cross_entropy(logits.flatten(0, 1).double(), Y.flatten(), reduction="sum").item())
                X, Y = data[micro, :, :-1], data[micro, :, 1:].contiguous()  # the next micro-batch, as nanoGPT
                (loss / 4).backward()
            optimizer.step()
            optimizer.zero_grad()
    monitor.close()
    assert monitor.latest["mechmon/logits/loss_nats"] == pytest.approx(sum(losses) / (4 * 2 * 48), rel=1e-6)
