"""``mechmon scan`` over checkpoints a real run saved: the same values as the live run, resumable, failure-tolerant."""

import math
import shutil

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mechmon import CollapseProbe, InductionProbe, LogitsProbe, MechMonitor, Monitor, RankProbe, WeightsProbe
from mechmon.cli import read_run
from mechmon.replay import find_checkpoints, scan
from tests.conftest import TinyLM, make_trainer, tiny_gpt2, token_loader
from tests.test_cli import mechmon_command

EVERY = 3


def probes():
    return [InductionProbe(period=10, batch_size=4), CollapseProbe(), RankProbe(), WeightsProbe()]


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """A Lightning fit with the monitor on and a checkpoint at every scheduled step (3, 6, 9)."""
    root = tmp_path_factory.mktemp("live")
    saver = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=EVERY, save_top_k=-1, filename="{step}")
    pl.seed_everything(0)
    trainer = make_trainer(root, [MechMonitor(probes=probes(), schedule=EVERY), saver], 9, enable_checkpointing=True)
    trainer.fit(TinyLM(lr=3e-3), token_loader())
    return root


def compare(live, scanned, steps):
    """Every scanned key equals the live run's at the same step; returns how many values were compared."""
    compared = 0
    for key, series in scanned.items():
        if "/alerts" in key:
            continue
        live_values = dict(live[key])
        for step, value in series:
            assert step in steps
            assert value == pytest.approx(live_values[step], abs=1e-5, nan_ok=True), (key, step)
            compared += 1
    return compared


def test_a_scan_of_a_runs_checkpoints_equals_the_live_run_at_every_key(live_run, tmp_path):
    result = scan([live_run / "ckpt"], tmp_path, probes=probes(), model_factory=TinyLM, progress=False)
    assert result.evaluated == [3, 6, 9] and not result.failed
    live, _ = read_run(live_run / "tb")
    scanned, _ = read_run(tmp_path)
    replayed = {"induction", "prev_token", "repr_collapse", "repr_rank", "weights"}
    live_keys = {k for k in live if k.split("/")[1] in replayed}
    assert set(scanned) - {k for k in scanned if "/alerts" in k} == live_keys
    assert compare(live, scanned, {3, 6, 9}) > 80
    # the growth needs a previous evaluation: the live run had step 1, the scan starts at step 3
    assert [s for s, _ in scanned["mechmon/weights/norm_growth"]] == [6, 9]


def test_a_scan_resumes_where_it_stopped_and_goes_on_past_a_broken_checkpoint(live_run, tmp_path):
    ckpts = sorted((live_run / "ckpt").iterdir())
    first = scan(ckpts[:2], tmp_path / "run", probes=probes(), model_factory=TinyLM, progress=False)
    assert first.evaluated == [3, 6]
    (tmp_path / "step=7.ckpt").write_bytes(b"not a checkpoint")  # a truncated download, a disk error
    again = scan([*ckpts, tmp_path / "step=7.ckpt"], tmp_path / "run", probes=probes(), model_factory=TinyLM)
    assert again.skipped == [3, 6] and again.evaluated == [9]
    assert [p.name for p, _ in again.failed] == ["step=7.ckpt"] and "\n" not in again.failed[0][1]
    live, _ = read_run(live_run / "tb")
    scanned, _ = read_run(tmp_path / "run")
    assert [s for s, _ in scanned["mechmon/induction/score_max"]] == [3, 6, 9]  # no step written twice
    compare(live, scanned, {3, 6, 9})


def test_hf_folders_and_prefixed_state_dicts_are_read_with_their_steps(tmp_path):
    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = torch.randint(1, 64, (4, 4, 48), generator=torch.Generator().manual_seed(0))
    (tmp_path / "sd").mkdir()
    live = Monitor(model, optimizer=optimizer, probes=probes(), schedule=2, log_dir=tmp_path / "live")
    for step, batch in enumerate(batches, start=1):
        with live.step(step, batch):
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        if step % 2 == 0:
            model.save_pretrained(tmp_path / "hf" / f"checkpoint-{step}")
            wrapped = {f"model.{k}": v for k, v in model.state_dict().items()}  # a LightningModule's keys
            torch.save(wrapped, tmp_path / "sd" / f"model_step{step}.pt")
    live.close()
    found, refused = find_checkpoints([tmp_path / "hf", tmp_path / "sd"])
    assert [(c.step, c.format) for c in found] == [(2, "hf"), (2, "state_dict"), (4, "hf"), (4, "state_dict")]
    assert not refused
    batch = live.probes[1].probe_batch  # the probe batch the live run took from its first training batch
    from_hf = scan([tmp_path / "hf"], tmp_path / "a", probes=probes(), batch=batch, progress=False)
    from_sd = scan([tmp_path / "sd"], tmp_path / "b", probes=probes(), batch=batch, model_factory=tiny_gpt2)
    assert from_hf.evaluated == from_sd.evaluated == [2, 4]
    reference, _ = read_run(tmp_path / "live")
    for folder in ("a", "b"):
        assert compare(reference, read_run(tmp_path / folder)[0], {2, 4}) > 50


def test_probes_that_read_the_training_forward_are_refused_before_any_checkpoint_is_read(tmp_path):
    with pytest.raises(ValueError, match="'logits' reads the training forward"):
        scan([tmp_path], tmp_path / "out", probes=[LogitsProbe()], model_factory=TinyLM)
    with pytest.raises(ValueError, match="no checkpoint found"):
        scan([tmp_path], tmp_path / "out", model_factory=TinyLM)


def test_the_scan_command_measures_a_folder_and_names_a_missing_factory(live_run, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(live_run / "ckpt", folder)
    (tmp_path / "factory.py").write_text("from tests.conftest import TinyLM\n\ndef build():\n    return TinyLM()\n")
    args = ["scan", str(folder), "--out", str(tmp_path / "run"), "--probes", "repr_rank,weights"]
    missing = mechmon_command(*args)
    assert missing.returncode == 2 and "--model-factory" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    done = mechmon_command(*args, "--model-factory", "factory:build", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 checkpoints measured" in done.stderr
    rank = read_run(tmp_path / "run")[0]["mechmon/repr_rank/rankme"]
    assert [s for s, _ in rank] == [3, 6, 9] and all(math.isfinite(v) for _, v in rank)
