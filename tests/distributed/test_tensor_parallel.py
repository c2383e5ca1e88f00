"""Tensor parallel (DTensor ``parallelize_module``, 2 gloo ranks) and FSDP2 x TP (2 x 2, 4 ranks): every key the
monitor logs equals the same model's, trained unsharded in one process on the same rows; a probe failing on one
rank is disabled on every rank at that step, and no rank hangs."""

import json
import math
from pathlib import Path

import pytest

from tests.helpers.ranks import rank_results, run_ranks

SCRIPT = Path(__file__).with_name("tp_worker.py")


@pytest.fixture(scope="module", params=["tp", "fsdp_tp"])
def ranks(request, tmp_path_factory):
    world = 2 if request.param == "tp" else 4
    return rank_results(SCRIPT, request.param, tmp_path_factory.mktemp(request.param), world)


def test_every_key_equals_the_unsharded_model(ranks):
    for r in ranks:
        reference, sharded = r["reference"], r["sharded"]
        assert r["disabled"] == ["tokens"]  # the probe that failed on the last rank only, disabled on every rank
        assert [a[:2] for a in r["alerts"]] == [["probe_failed", 2]] and "1 rank(s), first rank" in r["alerts"][0][2]
        assert reference["mechmon/tokens/count"] == 2 * 128 * (len(ranks) // 2)  # every row once: 2 x 128 a replica
        assert sharded.keys() == reference.keys() and len(reference) > 60
        wrong = {
            k: (sharded[k], v)
            for k, v in reference.items()
            if not (math.isnan(v) and math.isnan(sharded[k])) and sharded[k] != pytest.approx(v, rel=1e-5, abs=1e-6)
        }
        assert not wrong


def test_every_rank_logs_the_same_values(ranks):
    assert all(r["sharded"] == ranks[0]["sharded"] for r in ranks[1:])


def test_lightning_model_parallel_strategy_on_cpu_equals_the_unsharded_model(tmp_path):
    done = run_ranks(SCRIPT.with_name("lightning_tp.py"), tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for r in (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)):
        assert r["disabled"] == [] and r["sharded"].keys() == r["reference"].keys() and len(r["reference"]) > 30
        for key, value in r["reference"].items():
            assert r["sharded"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_hugging_face_tensor_parallel_plan_equals_the_unsharded_model(tmp_path):
    """``from_pretrained(tp_plan="auto")``: HF's own plan, whose gradients come in other layouts than the weights."""
    done = run_ranks(SCRIPT.with_name("hf_tp_worker.py"), tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for r in (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)):
        assert r["o_proj"] == "(Shard(dim=1),)"  # HF sharded the weights itself (DTensors)
        assert r["sharded"].keys() == r["reference"].keys() and len(r["reference"]) > 60
        for key, value in r["reference"].items():
            same = math.isnan(value) and math.isnan(r["sharded"][key])
            assert same or r["sharded"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
