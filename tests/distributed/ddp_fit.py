"""A 2-process CPU (gloo) DDP fit with MechMonitor; each rank writes what it saw to ``<out>/rank<r>.json``.

Run by tests/distributed/test_ddp.py as ``python tests/distributed/ddp_fit.py OUT``; Lightning's DDP launcher starts
rank 1 by running the same command again. The probe ``flaky`` raises on rank 1 only, at step 4.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import mechmon  # noqa: E402
from mechmon import CollapseProbe, InductionProbe, LogitsProbe, MechMonitor, RankProbe, Threshold, every  # noqa: E402
from mechmon.probe import StreamingProbe  # noqa: E402
from tests.helpers import TinyLM, hook_count, token_loader  # noqa: E402

OUT = Path(sys.argv[1])
PACKAGE = os.path.dirname(mechmon.__file__) + os.sep  # not any path with 'mechmon' in it (.venv)
STEP = {"now": 0}
CALLS: list[tuple[int, str]] = []


def counting(name, fn):
    """Count the collectives that mechmon's own code issues, by the step they happen in."""

    def wrapper(*args, **kwargs):
        if sys._getframe(1).f_code.co_filename.startswith(PACKAGE):
            CALLS.append((STEP["now"], name))
        return fn(*args, **kwargs)

    return wrapper


for _name in ["all_gather", "all_reduce", "all_gather_into_tensor", "broadcast", "reduce", "barrier", "all_to_all"]:
    setattr(dist, _name, counting(_name, getattr(dist, _name)))


class Flaky(StreamingProbe):
    """Counts tokens; raises on rank 1 at step 4 only."""

    name = "flaky"
    requires = ("logits",)

    def setup(self, model, adapter, device):
        self.add_state("tokens", torch.zeros(()), "sum")
        self.to(device)

    def update(self, captures, batch):
        if dist.get_rank() == 1 and STEP["now"] == 4:
            raise RuntimeError("only rank 1 sees this")
        self.tokens += captures["logits"].shape[0] * captures["logits"].shape[1]

    def compute(self):
        return {self.key("tokens"): self.tokens}


def pager_timing_out(alert) -> None:
    """A user's alert webhook that fails (rank 0 only calls it): the fit must go on, on both ranks."""
    raise TimeoutError("pager webhook timed out")


class Clock(pl.Callback):
    def on_train_batch_start(self, trainer, *args):
        STEP["now"] = trainer.global_step + 1  # the optimizer step this batch belongs to


def main() -> None:
    pl.seed_everything(0, verbose=False)
    marker = Threshold("mechmon/logits/norm_mean", level=0.0, name="marker")
    probes = [InductionProbe(period=10, batch_size=2), LogitsProbe(), CollapseProbe(), RankProbe(), Flaky()]
    monitor = MechMonitor(probes=probes, schedule=every(2), rules=[marker], on_alert=[pager_timing_out])
    model = TinyLM()
    trainer = pl.Trainer(
        max_steps=8,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        callbacks=[Clock(), monitor],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=OUT,
    )
    trainer.fit(model, token_loader(n=64))
    rank = trainer.global_rank
    calls: dict[int, int] = {}
    for step, _ in CALLS:
        calls[step] = calls.get(step, 0) + 1
    result = {
        "rank": rank,
        "pid": os.getpid(),
        "world": trainer.world_size,
        "global_step": trainer.global_step,
        "collectives": {str(k): v for k, v in sorted(calls.items())},
        "kinds": sorted({name for _, name in CALLS}),
        "alerts": [[a.rule, a.step, a.reason] for a in monitor.alerts],
        "disabled": sorted(monitor.engine.disabled),
        "hooks": hook_count(model),
        "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("mechmon/")},
    }
    (OUT / f"rank{rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
