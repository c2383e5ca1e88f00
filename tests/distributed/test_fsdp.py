"""FSDP on CPU: Lightning's FSDPStrategy refuses a CPU accelerator, so this covers the same parts with torch's own
FSDP2 (``fully_shard``) over 2 gloo processes: weight norms and gradient alignment of sharded parameters, and a
probe forward that runs under the wrapper, all equal to the same probes on the unsharded model."""

import json
from pathlib import Path

import pytest

from tests.distributed import run_ranks

SCRIPT = Path(__file__).with_name("fsdp_worker.py")


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
