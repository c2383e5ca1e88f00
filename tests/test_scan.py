"""``mechmon scan`` over checkpoints a real run saved: the same values as the live run, resumable, failure-tolerant."""

import math
import shutil
import time

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mechmon import CollapseProbe, InductionProbe, LogitsProbe, MechMonitor, Monitor, RankProbe, WeightsProbe
from mechmon.cli import read_run
from mechmon.replay import find_checkpoints, scan
from tests.helpers import TinyLM, make_trainer, mechmon_command, plant, tiny_gpt2, token_loader

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
            assert value == pytest.approx(live_values[step], abs=1e-5), (key, step)  # a NaN on both sides fails
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
    (tmp_path / "factory.py").write_text("from tests.helpers import TinyLM\n\ndef build():\n    return TinyLM()\n")
    args = ["scan", str(folder), "--out", str(tmp_path / "run"), "--probes", "repr_rank,weights"]
    missing = mechmon_command(*args)
    assert missing.returncode == 2 and "--model-factory" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    done = mechmon_command(*args, "--model-factory", "factory:build", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 checkpoints measured" in done.stderr
    rank = read_run(tmp_path / "run")[0]["mechmon/repr_rank/rankme"]
    assert [s for s, _ in rank] == [3, 6, 9] and all(math.isfinite(v) for _, v in rank)


def steps_of(run_dir, key="mechmon/induction/score_max"):
    return [s for s, _ in read_run(run_dir)[0][key]]


def test_a_scan_state_file_from_elsewhere_never_runs_code_and_the_scan_starts_afresh(live_run, tmp_path):
    ckpts = sorted((live_run / "ckpt").iterdir())
    scan(ckpts[:2], tmp_path / "run", probes=probes(), model_factory=TinyLM, progress=False)
    plant(tmp_path / "run" / "mechmon_scan.pt", tmp_path / "pwned")
    with pytest.warns(UserWarning, match="cannot use .*mechmon_scan.pt .*the scan starts afresh"):
        again = scan(ckpts, tmp_path / "run", probes=probes(), model_factory=TinyLM, progress=False)
    assert not (tmp_path / "pwned").exists() and again.evaluated == [3, 6, 9]
    assert steps_of(tmp_path / "run") == [3, 6, 9]  # the first scan's events are hidden, not shown twice


def test_a_scan_killed_after_writing_events_but_before_recording_them_shows_each_step_once(live_run, tmp_path):
    """The state a kill leaves in that window: events of steps 3, 6, 9 on disk, the record saying only step 3."""
    ckpts = sorted((live_run / "ckpt").iterdir())
    scan(ckpts[:1], tmp_path / "one", probes=probes(), model_factory=TinyLM, progress=False)
    scan(ckpts, tmp_path / "run", probes=probes(), model_factory=TinyLM, progress=False)
    shutil.copy(tmp_path / "one" / "mechmon_scan.pt", tmp_path / "run" / "mechmon_scan.pt")
    again = scan(ckpts, tmp_path / "run", probes=probes(), model_factory=TinyLM, progress=False)
    assert again.skipped == [3] and again.evaluated == [6, 9]
    assert steps_of(tmp_path / "run") == [3, 6, 9]


def test_a_scan_killed_at_any_moment_neither_repeats_nor_skips_a_step(live_run, tmp_path):
    """A real kill (SIGKILL) of the command as soon as its first events reach the disk, then a rerun."""
    out = tmp_path / "run"
    args = ["scan", str(live_run / "ckpt"), "--out", str(out), "--probes", "repr_rank", "--model-factory", "f:build"]
    (tmp_path / "f.py").write_text("from tests.helpers import TinyLM\n\ndef build():\n    return TinyLM()\n")
    proc = mechmon_command(*args, cwd=tmp_path, wait=False)
    deadline = time.monotonic() + 120
    written = lambda: any(f.stat().st_size > 400 for f in out.glob("events.out.tfevents.*"))  # noqa: E731
    while time.monotonic() < deadline and proc.poll() is None and not written():
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    done = mechmon_command(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert steps_of(out, "mechmon/repr_rank/rankme") == [3, 6, 9]


def test_a_damaged_first_hf_folder_is_reported_and_the_scan_goes_on(tmp_path):
    model = tiny_gpt2()
    for step in (2, 4):
        model.save_pretrained(tmp_path / "hf" / f"checkpoint-{step}")
    (tmp_path / "hf" / "checkpoint-2" / "config.json").write_text('{"model_type": "gpt2", "n_layer": ')
    result = scan([tmp_path / "hf"], tmp_path / "out", probes=[WeightsProbe()], progress=False)
    assert result.evaluated == [4] and [p.name for p, _ in result.failed] == ["checkpoint-2"]


def test_a_checkpoint_holding_the_model_twice_is_refused_unless_a_prefix_is_chosen(tmp_path):
    model = tiny_gpt2()
    state = model.state_dict()
    both = {**{f"model.{k}": v for k, v in state.items()}, **{f"ema.{k}": v * 0.5 for k, v in state.items()}}
    torch.save(both, tmp_path / "step=5.pt")
    refused = scan([tmp_path / "step=5.pt"], tmp_path / "a", probes=[WeightsProbe()], model_factory=tiny_gpt2)
    assert refused.evaluated == [] and "prefixes ['ema', 'model']" in refused.failed[0][1]
    ema = scan([tmp_path / "step=5.pt"], tmp_path / "b", probes=[WeightsProbe()], model_factory=tiny_gpt2, prefix="ema")
    full = scan([tmp_path / "step=5.pt"], tmp_path / "c", probes=[WeightsProbe()], model_factory=tiny_gpt2,
                prefix="model")  # fmt: skip
    assert ema.evaluated == full.evaluated == [5]
    assert ema.latest["mechmon/weights/norm"] == pytest.approx(0.5 * full.latest["mechmon/weights/norm"])


@pytest.mark.parametrize("content", ["garbage", "floats", "planted"])
def test_a_bad_batch_file_is_one_line_and_exit_code_2(live_run, tmp_path, content):
    path = tmp_path / "batch.pt"
    if content == "garbage":
        path.write_bytes(b"\x80not a tensor file")
    elif content == "floats":
        torch.save(torch.rand(2, 16), path)
    else:
        plant(path, tmp_path / "pwned")
    done = mechmon_command("scan", str(live_run / "ckpt"), "--out", str(tmp_path / "o"), "--batch", str(path))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--batch" in done.stderr and not (tmp_path / "pwned").exists()
