"""The monitor never harms the run it watches: unwritable logs, failing probes, crashes, NaN, long fits."""

import gc
import tracemalloc
import warnings

import lightning.pytorch as pl
import pytest
import torch

from mechmon import CollapseProbe, InductionProbe, LogitsProbe, MechMonitor, RoutingProbe, WeightsProbe, every
from mechmon.probe import StreamingProbe
from tests.helpers import TinyLM, hook_count, make_trainer, tiny_moe, token_loader


def test_unwritable_tensorboard_folder_gives_one_warning_and_training_goes_on(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # a folder below a regular file cannot be made, whoever runs the test
    mon = MechMonitor(probes=[LogitsProbe()], schedule=every(1), log_dir=blocker / "mechmon")
    model = TinyLM()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, [mon], max_steps=5, logger=False)
        trainer.fit(model, token_loader())
    ours = [w for w in seen if "cannot write TensorBoard files" in str(w.message)]
    assert len(ours) == 1 and trainer.global_step == 5
    assert "mechmon/logits/norm_mean" in trainer.callback_metrics  # the metrics still reach the trainer
    assert hook_count(model) == 0


class Raising(StreamingProbe):
    """Raises in the chosen method."""

    name = "raising"
    requires = ("logits",)

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def setup(self, model, adapter, device):
        self.add_state("n", torch.zeros(()), "sum")

    def update(self, captures, batch):
        if self.where == "update":
            raise RuntimeError("update broke")
        self.n += 1

    def compute(self):
        if self.where == "compute":
            raise RuntimeError("compute broke")
        return {self.key("n"): self.n}


class CrashAt(TinyLM):
    def training_step(self, batch, batch_idx):
        if batch_idx == 3:  # step 4 is scheduled: the streaming hooks are attached when this raises
            raise RuntimeError("user bug")
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("path", ["update", "compute", "snapshot", "crash", "nan"])
def test_no_hook_stays_registered_on_any_path(tmp_path, path):
    model = CrashAt() if path == "crash" else TinyLM()
    probes = [InductionProbe(period=10, batch_size=2), Raising(path), CollapseProbe()]
    if path == "snapshot":
        probes[0].snapshot = lambda adapter: (_ for _ in ()).throw(RuntimeError("forward broke"))
    if path == "nan":
        model.model.lm_head.register_forward_hook(lambda m, a, out: out * float("nan"))
        base = hook_count(model)
    mon = MechMonitor(probes=probes, schedule=every(2))
    trainer = make_trainer(tmp_path, [mon], max_steps=6)
    if path == "crash":
        with pytest.raises(RuntimeError, match="user bug"):
            trainer.fit(model, token_loader())
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, token_loader())
        assert trainer.global_step == 6
    assert hook_count(model) == (base if path == "nan" else 0)
    rules = {a.rule for a in mon.alerts}
    if path in ("update", "compute", "snapshot"):
        assert "probe_failed" in rules and len(mon.engine.disabled) == 1
    if path == "nan":
        assert "non_finite" in rules


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def test_memory_is_flat_over_a_thousand_steps(tmp_path):
    """Live tensors and Python allocations at step 300 and step 1,200 of a fit probed every 10 steps (90 evaluations).

    Tracing starts at step 100 so that objects merely replaced since (latest metrics, buffers) are traced in both
    snapshots and only growth shows; the writer thread is drained before each snapshot (an image in flight there is
    not growth).
    """
    marks = {}

    class Meter(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 100:
                tracemalloc.start()
            if trainer.global_step == 300:
                mon.engine.flush()
                marks["tensors"], marks["start"] = live_tensors(), tracemalloc.take_snapshot()
            if trainer.global_step == 1200:
                mon.engine.flush()
                marks["tensors_end"], marks["end"] = live_tensors(), tracemalloc.take_snapshot()
                tracemalloc.stop()

    model = TinyLM(tiny_moe("olmoe"))
    probes = [LogitsProbe(), CollapseProbe(), WeightsProbe(), RoutingProbe(), InductionProbe(period=10, batch_size=2)]
    mon = MechMonitor(probes=probes, schedule=every(10))
    trainer = make_trainer(tmp_path, [mon, Meter()], max_steps=1200)
    trainer.fit(model, token_loader(n=16, batch=2))
    growth = sum(s.size_diff for s in marks["end"].compare_to(marks["start"], "filename"))
    print(f"live tensors {marks['tensors']} -> {marks['tensors_end']}; python heap growth {growth / 1024:.1f} KiB")
    assert marks["tensors_end"] <= marks["tensors"]
    assert growth < 64 * 1024
    assert not mon.engine.disabled and hook_count(model) == 0
