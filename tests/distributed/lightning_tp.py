"""Lightning's ``ModelParallelStrategy`` (tensor parallel over 2 CPU ranks, gloo): ``python lightning_tp.py OUT``.

The LightningModule applies tensor parallel in ``configure_model`` on the strategy's ``tensor_parallel`` mesh (the
output head gathers its logits: ``ColwiseParallel(output_layouts=Replicate())``, HF's ``colwise_rep``); the
``MechMonitor`` callback watches 3 steps. Each rank first trains the same model unsharded with a plain ``Monitor``
(the reference), then writes ``OUT/rank<r>.json``.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from mechmon import MechMonitor, Monitor  # noqa: E402
from tests.helpers import plain_run  # noqa: E402
from tests.helpers.archs import tensor_parallel_llama, tiny_model  # noqa: E402

OUT, STEPS, CTX = Path(sys.argv[1]), 3, 128


def probes() -> list:
    from mechmon import InductionProbe, LogitsProbe, NLMProbe, WeightsProbe

    return [InductionProbe(), LogitsProbe(), WeightsProbe(), NLMProbe()]


class TensorParallelLM(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_model("llama").train()

    def configure_model(self) -> None:
        tensor_parallel_llama(self.model, self.device_mesh["tensor_parallel"], vocab_parallel=False)

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def reference(data: torch.Tensor) -> dict:
    model = tiny_model("llama").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer=optimizer, probes=probes(), schedule=1, budget=None, log_dir=None)
    plain_run(monitor, model, optimizer, STEPS, data)
    return monitor.latest


def main() -> None:
    from lightning.pytorch.strategies import ModelParallelStrategy

    rows = list(torch.randint(1, 256, (2 * STEPS, CTX), generator=torch.Generator().manual_seed(0)))
    want = reference(torch.stack(rows).view(STEPS, 2, CTX))
    monitor = MechMonitor(probes=probes(), schedule=1, budget=None, log_dir=None)
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2, process_group_backend="gloo")
    trainer = pl.Trainer(
        max_steps=STEPS, accelerator="cpu", devices=2, strategy=strategy, callbacks=[monitor], logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, default_root_dir=OUT,
        use_distributed_sampler=False,  # one data-parallel replica: both ranks read the rows in order
    )  # fmt: skip
    trainer.fit(TensorParallelLM(), DataLoader(rows, batch_size=2))
    result = {"reference": want, "sharded": monitor.engine.latest, "disabled": sorted(monitor.engine.disabled)}
    (OUT / f"rank{trainer.global_rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
