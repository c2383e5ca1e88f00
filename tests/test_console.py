"""The console: a panel that fits 80 x 24 with the alerts first, quiet when piped, inside Lightning's progress bar."""

import io

import lightning.pytorch as pl
import pytest
import torch
from rich.console import Console

from mechmon import InductionProbe, LogitsProbe, MechMonitor, Monitor, Threshold
from mechmon.alerts import Alert
from mechmon.console import ConsoleView
from tests.helpers import TinyLM, make_trainer, tiny_gpt2, token_loader


def terminal(width=80, height=24):
    return Console(file=io.StringIO(), width=width, height=height, force_terminal=True, color_system=None)


def test_the_panel_fits_80_by_24_with_alerts_loss_and_speed_first():
    headlines = ["mechmon/induction/score_max", "mechmon/logits/softmax_collapse_frac"]
    view = ConsoleView(console=terminal(), headlines=headlines, live=False)
    values = {f"mechmon/probe{i:02d}/stat_with_a_long_descriptive_name_{i}": i / 7 for i in range(40)}
    values |= {"mechmon/logits/loss_nats": 2.345, headlines[0]: 0.41, headlines[1]: 0.0}
    view.update(50, values)
    view.update(100, values)
    for step in range(7):
        reason = "mechmon/induction/score_max rose from 0.04 to 0.41 (level 0.3): emergence " * 3
        view.alert(Alert("induction_emergence", headlines[0], 100 + step, 0.41, "info", reason))
    out = terminal()
    out.print(view.panel())
    lines = out.file.getvalue().rstrip("\n").splitlines()
    assert len(lines) <= 23 and max(len(line) for line in lines) <= 80  # the cursor keeps the 24th line
    assert lines[0].startswith("mechmon  step 100") and "steps/s" in lines[0] and "train loss 2.345" in lines[0]
    assert [line.split()[0] for line in lines[1:6]] == ["102", "103", "104", "105", "106"]  # the last 5 alerts
    metrics = [line.split()[0] for line in lines[6:] if line.strip() and not set(line.strip()) <= set("━─ ")]
    assert metrics[1:3] == ["induction/score_max", "logits/softmax_collapse_frac"]  # headlines, after the header
    assert "more: mechmon summary" in lines[-1]


def test_piped_output_gets_alert_lines_as_they_fire_and_no_panel():
    piped = Console(file=io.StringIO(), width=120)  # not a terminal: what `| tee log` gives
    view = ConsoleView(console=piped)
    assert not view.live_enabled
    view.update(1, {"mechmon/induction/score_max": 0.1})
    view.alert(Alert("marker", "mechmon/induction/score_max", 1, 0.1, "warning", "a reason"))
    assert piped.file.getvalue() == "mechmon warning at step 1: marker - a reason\n"
    assert (
        ConsoleView(console=terminal()).live_enabled
        and not ConsoleView(console=terminal(), bar_owned=True).live_enabled
    )


@pytest.mark.parametrize("bar", ["tqdm", "rich"])
def test_with_lightnings_progress_bar_the_values_go_inside_it(tmp_path, bar, capsys):
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    seen = {}

    class Peek(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            seen.update(trainer.progress_bar_callback.get_metrics(trainer, pl_module))

    marker = Threshold("mechmon/logits/norm_mean", level=0.0, name="marker")
    monitor = MechMonitor(probes=[InductionProbe(period=10, batch_size=2), LogitsProbe()], schedule=2, rules=[marker])
    progress = TQDMProgressBar() if bar == "tqdm" else RichProgressBar()
    trainer = make_trainer(tmp_path, [monitor, progress, Peek()], max_steps=4, enable_progress_bar=True)
    trainer.fit(TinyLM(), token_loader())
    assert list(seen)[0] == "alert" and seen["alert"] == "marker@1" and seen["induction"]
    assert "get_metrics" not in vars(trainer.progress_bar_callback)  # the bar is left as it was
    printed = capsys.readouterr()  # stderr, or the Rich bar's own console (stdout), above the bar
    assert "mechmon warning at step 1: marker" in (printed.err if bar == "tqdm" else printed.out)


def test_the_training_loss_is_measured_without_another_sync():
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], schedule=1, log_dir=None)
    batch = torch.randint(1, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with monitor.step(1, batch):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
    monitor.close()
    assert monitor.latest["mechmon/logits/loss_nats"] == pytest.approx(loss.item(), rel=1e-5)
