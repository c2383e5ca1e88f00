"""Every alert that fires is visible in each view: two alerts at one step, read back from the real event files."""

import torch

from mechmon import LogitsProbe, Monitor, Threshold, every
from mechmon.console import ConsoleView
from mechmon.events import load_run
from tests.callbacks.helpers import read_events
from tests.conftest import plain_run, tiny_gpt2


def test_two_alerts_at_one_step_are_both_in_the_text_entry_the_count_and_the_bar(tmp_path):
    rules = [Threshold("mechmon/logits/norm_mean", 0.0, name="first"), Threshold("mechmon/logits/max_mean", -100.0,
                                                                                name="second")]  # fmt: skip
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], schedule=every(1), rules=rules,
                      log_dir=tmp_path)  # fmt: skip
    view = ConsoleView(False, None, [], "mechmon", True)
    plain_run(monitor, model, optimizer, 2)
    for alert in monitor.alerts:
        view.alert(alert)
    acc = read_events(tmp_path)
    texts = [e for e in acc.Tensors("mechmon/alerts/text_summary") if e.step == 1]
    last = texts[-1].tensor_proto.string_val[0].decode()  # what TensorBoard's Text tab shows at step 1
    assert "`first`" in last and "`second`" in last
    assert [(e.step, e.value) for e in acc.Scalars("mechmon/alerts/count")] == [(1, 2.0)]
    assert sorted(text.split("`")[1] for _, text in load_run(tmp_path).alerts) == ["first", "second"]
    assert view.bar_items()["alert"] == "2 alerts@1: first, second"
