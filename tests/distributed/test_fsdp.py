"""FSDP on CPU: Lightning's FSDPStrategy refuses a CPU accelerator, so this covers the same parts with torch's own
FSDP2 (``fully_shard``) and FSDP1 (``FullyShardedDataParallel``) over 2 gloo processes: the probes' pieces against
the unsharded model, and the real ``Monitor`` in a training loop over each wrapper, its collectives counted at
``torch.distributed``."""

import json
import math
from pathlib import Path

import pytest

from tests.helpers.ranks import run_ranks

SCRIPT = Path(__file__).with_name("fsdp_worker.py")
MONITOR_SCRIPT = Path(__file__).with_name("fsdp_monitor.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    done = run_ranks(SCRIPT, out, timeout=300)  # a hang kills every rank and fails here
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_lightning_fsdp_strategy_needs_a_gpu():
    import lightning.pytorch as pl

    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        pl.Trainer(accelerator="cpu", devices=2, strategy="fsdp")


@pytest.mark.parametrize("probe", ["weights", "nlm"])
def test_sharded_weight_statistics_are_summed_across_ranks_and_match_the_full_model(ranks, probe):
    for r in ranks:
        ref, fsdp = r[probe]["ref"], r[probe]["fsdp"]
        assert r["local_rows"] == 32  # each rank holds half of the 64-row embedding
        assert all(ref["replicated"].values()) and not any(fsdp["replicated"].values())
        assert fsdp["collectives"] == 1
        for key, value in ref["values"].items():
            assert fsdp["values"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_probe_forward_runs_under_the_wrapper(ranks):
    for r in ranks:
        ref, fsdp = r["collapse"]["ref"]["values"], r["collapse"]["fsdp"]["values"]
        assert ref.keys() == fsdp.keys() and "mechmon/repr_collapse/mean_cos" in ref
        for key, value in ref.items():
            assert fsdp[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        assert r["hooks_after"] == r["hooks_before"]  # ours are gone; FSDP2's stay


@pytest.fixture(scope="module", params=["fsdp2", "fsdp1"])
def monitored(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    done = run_ranks(MONITOR_SCRIPT, out, request.param, timeout=300)  # a hang kills every rank and fails here
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"{request.param}_rank{r}.json").read_text()) for r in (0, 1)]


def test_the_monitor_under_fsdp_sends_two_all_reduces_per_scheduled_step_and_the_ranks_agree(monitored):
    for r in monitored:
        assert r["collectives"] == {"0": 2, "1": 2, "2": 2, "4": 2}  # attach: models, schedules; SUM, MAX at 1, 2, 4
        assert r["alerts"] == [] and r["disabled"] == []
        assert r["hooks_after"] == r["hooks_before"]  # the wrapper's hooks stay, ours are gone
    first, second = (r["latest"] for r in monitored)
    assert len(first) > 30 and first == second  # the same reduced values on both ranks, every key
    assert all(math.isfinite(v) for v in first.values())


def test_the_monitor_under_fsdp_logs_the_full_models_weight_norm(monitored):
    for r in monitored:  # measured: 1.7e-9 (FSDP2) and 8.5e-9 (FSDP1) relative from the gathered float64 norm
        assert r["latest"]["mechmon/weights/norm"] == pytest.approx(r["full_norm"], rel=1e-7)
