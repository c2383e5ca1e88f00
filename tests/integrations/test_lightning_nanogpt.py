"""nanoGPT's model wrapped in a short LightningModule, monitored with no adapter (the SDPA tap gives the patterns)."""

import lightning.pytorch as pl
import torch

from mechmon import CollapseProbe, InductionProbe, LogitsProbe, MechMonitor, every
from tests.helpers import CTX, VOCAB, hook_count, make_trainer, read_events, scalar_steps
from tests.helpers.nanogpt import gpt


class NanoLM(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = gpt()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.model(x, y)[1]

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def loader():
    rows = torch.randint(1, VOCAB, (16, CTX + 1), generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(list(zip(rows[:, :-1], rows[:, 1:], strict=True)), batch_size=4)


def test_nanogpt_in_a_lightning_module_is_monitored_with_no_adapter(tmp_path):
    module = NanoLM()
    probes = [InductionProbe(period=10, batch_size=2), LogitsProbe(), CollapseProbe()]
    mon = MechMonitor(probes=probes, schedule=every(2))
    make_trainer(tmp_path, [mon], max_steps=4).fit(module, loader())
    acc = read_events(tmp_path / "tb")
    for key in ["induction/score_max", "prev_token/score_max", "logits/norm_mean", "repr_collapse/mean_cos"]:
        assert scalar_steps(acc, f"mechmon/{key}") == [1, 2, 4], key
    assert all(0 < e.value < 1 for e in acc.Scalars("mechmon/induction/score_max"))
    assert not mon.engine.disabled and hook_count(module) == 0
