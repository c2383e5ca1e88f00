"""Lightning's DDP strategy with ranks that disagree: ``python tests/distributed/disagree_fit.py WORLD OUT [CASE]``.

``short_rows`` (default): rank 1's rows hold 60 real tokens (masked when its batches are collated), too few for
``ICLProbe(early=10, late=100)``; the other ranks' rows are whole. ``schedule``: the induction probe's schedule reads
state only rank 0 holds past step 1. Each rank writes ``OUT/rank<r>.json``.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from mechmon import ICLProbe, InductionProbe, LogitsProbe, MechMonitor, every  # noqa: E402
from tests.helpers import VOCAB, TinyLM, tiny_gpt2  # noqa: E402

WORLD, OUT, CTX = int(sys.argv[1]), Path(sys.argv[2]), 128
CASE = sys.argv[3] if len(sys.argv) > 3 else "short_rows"


def rank_local_schedule(step: int) -> bool:
    """Reads state that only rank 0 holds past step 1 (the constructor tries step 1 only)."""
    if step > 1 and dist.is_initialized() and dist.get_rank() > 0:
        raise KeyError("every")
    return step % 2 == 0


class PaddedLM(TinyLM):
    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss


def collate(rows: list[torch.Tensor]) -> dict:
    ids = torch.stack(rows)
    mask = torch.ones_like(ids)
    if dist.get_rank() == 1 and CASE == "short_rows":
        mask[:, 60:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def main() -> None:
    pl.seed_everything(0, verbose=False)
    if CASE == "schedule":
        probes = [InductionProbe(period=10, batch_size=2, schedule=rank_local_schedule), LogitsProbe()]
    else:
        probes = [ICLProbe(early=10, late=100), InductionProbe(period=10, batch_size=2), LogitsProbe()]
    monitor = MechMonitor(probes=probes, schedule=every(2))
    trainer = pl.Trainer(
        max_steps=6, accelerator="cpu", devices=WORLD, strategy="ddp", callbacks=[monitor], logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, default_root_dir=OUT,
    )  # fmt: skip
    data = list(torch.randint(1, VOCAB, (48, CTX), generator=torch.Generator().manual_seed(0)))
    trainer.fit(PaddedLM(tiny_gpt2(ctx=CTX)), DataLoader(data, batch_size=2, collate_fn=collate))
    result = {
        "rank": trainer.global_rank,
        "steps": trainer.global_step,
        "disabled": sorted(monitor.engine.disabled),
        "latest": monitor.engine.latest,
        "alerts": [[a.rule, a.step] for a in monitor.alerts],
    }
    (OUT / f"rank{trainer.global_rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
