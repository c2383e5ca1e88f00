"""Every alert that fires is visible in each view: two alerts at one step, read back from the real event files."""

import torch

from mechmon import LogitsProbe, Monitor, Threshold, every
from mechmon.console import ConsoleView
from mechmon.events import load_run
from tests.helpers import plain_run, read_events, tiny_gpt2


def run(tmp_path, levels: tuple[float, float], steps: int) -> Monitor:
    """A logits-probe run with two threshold rules, ``first`` on norm_mean and ``second`` on max_mean."""
    rules = [Threshold("mechmon/logits/norm_mean", levels[0], name="first"),
             Threshold("mechmon/logits/max_mean", levels[1], name="second")]  # fmt: skip
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], schedule=every(1), rules=rules,
                      log_dir=tmp_path)  # fmt: skip
    plain_run(monitor, model, optimizer, steps)
    return monitor


def test_two_alerts_at_one_step_are_both_in_the_text_entry_the_count_and_the_bar(tmp_path):
    monitor = run(tmp_path, (0.0, -100.0), 2)
    view = ConsoleView(False, None, [], "mechmon", True)
    for alert in monitor.alerts:
        view.alert(alert)
    acc = read_events(tmp_path)
    texts = [e for e in acc.Tensors("mechmon/alerts/text_summary") if e.step == 1]
    last = texts[-1].tensor_proto.string_val[0].decode()  # what TensorBoard's Text tab shows at step 1
    assert "`first`" in last and "`second`" in last
    assert [(e.step, e.value) for e in acc.Scalars("mechmon/alerts/count")] == [(1, 2.0)]
    assert sorted(text.split("`")[1] for _, text in load_run(tmp_path).alerts) == ["first", "second"]
    assert view.bar_items()["alert"] == "2 alerts@1: first, second"


def test_a_chart_is_shaded_past_its_level_only(tmp_path):
    """``first`` never passes its level (no band: beyond_level is the level), ``second`` always (the value)."""
    run(tmp_path, (1000.0, -100.0), 3)
    acc = read_events(tmp_path)

    def series(tag):
        return [e.value for e in acc.Scalars(tag)]

    healthy, alarming = "mechmon/logits/norm_mean", "mechmon/logits/max_mean"
    assert series(f"{healthy}/beyond_level") == series(f"{healthy}/alert_level") == [1000.0] * 3
    assert series(f"{alarming}/beyond_level") == series(alarming) and series(f"{alarming}/alert_level") == [-100.0] * 3


def test_rules_sharing_a_name_that_fire_together_are_one_alert_with_both_reasons(tmp_path):
    rules = [Threshold("mechmon/logits/norm_mean", 0.0, name="same"),
             Threshold("mechmon/logits/max_mean", -100.0, name="same", severity="critical")]  # fmt: skip
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], schedule=every(1), rules=rules,
                      log_dir=tmp_path)  # fmt: skip
    plain_run(monitor, model, optimizer, 1)
    [alert] = monitor.alerts
    assert "logits/norm_mean" in alert.reason and "logits/max_mean" in alert.reason
    assert alert.severity == "critical"  # the louder of the two is kept
    assert [(e.step, e.value) for e in read_events(tmp_path).Scalars("mechmon/alerts/count")] == [(1, 1.0)]
