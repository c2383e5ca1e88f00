"""Count device-to-host transfers made by mechmon code during a real fit."""

import os

import lightning.pytorch as pl
import torch

from mechmon import (
    AttentionProgressProbe,
    CollapseProbe,
    InductionProbe,
    LogitsProbe,
    MechMonitor,
    NLMProbe,
    RankProbe,
    RepetitionProbe,
    WeightsProbe,
    every,
)
from tests.helpers import CTX, TinyLM, make_trainer, token_loader

MECHMON_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep + "mechmon"
SYNCING = ["item", "tolist", "__bool__", "cpu", "numpy", "__float__", "__int__"]


class StepRecorder(pl.Callback):
    def __init__(self, counter):
        self.counter, self.per_step = counter, {}

    def on_train_batch_end(self, trainer, *args):
        self.per_step[trainer.global_step] = self.per_step.get(trainer.global_step, 0) + self.counter["n"]
        self.counter["n"] = 0


def test_one_transfer_per_scheduled_step_and_none_otherwise(tmp_path, monkeypatch):
    counter = {"n": 0}

    def wrap(name):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            import sys

            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(MECHMON_DIR):
                counter["n"] += 1
            return original(self, *args, **kwargs)

        return counted

    probes = [InductionProbe(period=20, batch_size=2), LogitsProbe(), WeightsProbe(), NLMProbe()]
    # the plateau family, with its probe batch taken from the first training batch and RankMe's host-side finish
    # (CPU tensors from numpy, no device work)
    probes += [CollapseProbe(), RankProbe(), RepetitionProbe(gen_len=3), AttentionProgressProbe(torch.eye(CTX))]
    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, wrap(name))
    monitor = MechMonitor(probes=probes, schedule=every(3), image_schedule=every(6))
    recorder = StepRecorder(counter)
    # the recorder runs after the monitor, so each step's count includes the monitor's work on that step
    make_trainer(tmp_path, [monitor, recorder], max_steps=9).fit(TinyLM(), token_loader())
    scheduled = {s for s in range(1, 10) if every(3)(s)}
    assert scheduled == {1, 3, 6, 9}
    assert {s: n for s, n in recorder.per_step.items() if n} == {s: 1 for s in scheduled}
    assert not monitor.engine.disabled
