"""A LitGPT-shaped Lightning Fabric loop with ``Fabric(callbacks=[MechMonitor(...)])``: no other change to the loop."""

import lightning as L
import torch
from lightning.fabric.loggers import TensorBoardLogger

from mechmon import InductionProbe, LogitsProbe, MechMonitor, NLMProbe, RankProbe, Threshold, every
from tests.helpers import CTX, VOCAB, hook_count, read_events, scalar_steps
from tests.helpers.nanogpt import gpt


def batches(n, seed=0):
    data = torch.randint(1, VOCAB, (n, 4, CTX + 1), generator=torch.Generator().manual_seed(seed))
    return [(row[:, :-1], row[:, 1:]) for row in data]  # nanoGPT's (x, y): y is x shifted by one


def run(tmp_path, name, steps, start=0, resume=None):
    marker = Threshold("mechmon/logits/norm_mean", level=0.0, name="marker")
    probes = [InductionProbe(period=10, batch_size=2), LogitsProbe(), NLMProbe(), RankProbe()]
    monitor = MechMonitor(probes=probes, schedule=every(2), rules=[marker])
    logger = TensorBoardLogger(tmp_path, name=name, version=0)
    fabric = L.Fabric(accelerator="cpu", devices=1, callbacks=[monitor], loggers=[logger])
    model = gpt()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = fabric.setup(model, optimizer)
    state = {"model": model, "optimizer": optimizer, "monitor": monitor}
    if resume is not None:
        fabric.load(resume, state)
    for x, y in batches(steps, seed=start)[: steps - start]:
        logits, loss = model(x, y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    fabric.save(tmp_path / f"{name}.ckpt", state)
    monitor.close()
    return monitor, model


def test_fabric_loop_logs_through_its_logger_and_round_trips_save_and_load(tmp_path):
    first, model = run(tmp_path, "a", steps=4)
    acc = read_events(tmp_path / "a")
    for key in ["induction/score_max", "logits/norm_mean", "logits/accuracy_frac", "nlm/cos_grad", "repr_rank/rankme"]:
        assert scalar_steps(acc, f"mechmon/{key}") == [1, 2, 4], key
    assert all(e.value != 0 for e in acc.Scalars("mechmon/nlm/cos_grad"))
    assert hook_count(model) == 0 and not first.engine.disabled and [a.rule for a in first.alerts] == ["marker"]

    second, _ = run(tmp_path, "b", steps=8, start=4, resume=tmp_path / "a.ckpt")
    acc = read_events(tmp_path / "b")
    assert scalar_steps(acc, "mechmon/logits/norm_mean") == [6, 8]  # the step count came back with the state
    assert "mechmon/alerts/marker" not in acc.Tags()["scalars"]
    assert [(a.rule, a.step) for a in second.alerts] == [("marker", 1)]
