"""A real fit with the plateau family: keys in the event file, the first training batch as probe batch, no hooks."""

import torch

from mechmon import AttentionProgressProbe, CollapseProbe, MechMonitor, RankProbe, RepetitionProbe, every
from mechmon.naming import KEY_RE
from tests.helpers import CTX, TinyLM, hook_count, make_trainer, read_events, scalar_steps, token_loader


def test_fit_writes_per_layer_plateau_keys(tmp_path):
    omega = torch.zeros(CTX, CTX)
    omega[torch.arange(1, CTX), torch.arange(0, CTX - 1)] = 1
    probes = [CollapseProbe(), RankProbe(), RepetitionProbe(gen_len=4), AttentionProgressProbe(omega)]
    mon = MechMonitor(probes=probes, schedule=every(2))
    model = TinyLM()
    trainer = make_trainer(tmp_path, [mon], max_steps=6)
    trainer.fit(model, token_loader())
    first_batch = next(iter(token_loader()))
    assert all(torch.equal(p.probe_batch, first_batch) for p in probes)  # 4 rows < max_rows 8: all kept
    acc = read_events(tmp_path / "tb")
    tags = acc.Tags()["scalars"]
    layered = [
        f"{stat}/L{i:02d}" for stat in ("repr_collapse/mean_cos", "repr_rank/rankme", "apm/score") for i in (0, 1)
    ]
    keys = layered + [
        "repr_collapse/mean_cos",
        "repr_collapse/loss_nats",
        "repr_rank/rankme",
        "repr_rank/rankme_frac/L01",
        "repr_rank/part_ratio",
        "repetition/model_frac",
        "repetition/data_frac",
        "repetition/excess",
        "apm/score",
        "apm/loss_nats",
    ]
    for key in keys:
        assert f"mechmon/{key}" in tags, key
        assert scalar_steps(acc, f"mechmon/{key}") == [1, 2, 4, 6], key
        assert KEY_RE.match(f"mechmon/{key}")
    for key in ["repr_collapse/mean_cos/L01", "repetition/model_frac", "apm/score"]:
        assert all(-1 <= e.value <= 1 for e in acc.Scalars(f"mechmon/{key}"))
    assert all(1 <= e.value <= 32 for e in acc.Scalars("mechmon/repr_rank/rankme/L00"))
    assert not mon.engine.disabled and hook_count(model) == 0


def test_probe_batch_that_cannot_be_read_disables_only_that_probe(tmp_path):
    mon = MechMonitor(probes=[CollapseProbe(), RepetitionProbe(gen_len=CTX)], schedule=every(2))
    trainer = make_trainer(tmp_path, [mon], max_steps=4)
    trainer.fit(TinyLM(), token_loader())  # gen_len = CTX leaves no prompt: RepetitionProbe fails in take_batch
    assert mon.engine.disabled == {"repetition"}
    assert [a.rule for a in mon.alerts] == ["probe_failed"]
    assert "mechmon/repr_collapse/mean_cos" in trainer.callback_metrics
