"""The reduction at 2 and 4 real gloo ranks: every op equal to an explicit loop, NaN kept, and the same bytes sent
per rank at every world size (one ``all_reduce`` per op bucket, no ``all_gather``)."""

import json
import math
from pathlib import Path

import pytest

from tests.helpers.ranks import run_ranks

SCRIPT = Path(__file__).with_name("reduce_worker.py")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    results = {}
    for world in (2, 4):
        out = tmp_path_factory.mktemp(f"reduce{world}")
        done = run_ranks(SCRIPT, world, out, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        results[world] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    return results


def same(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("world", [2, 4])
def test_every_reduce_op_equals_an_explicit_loop_on_every_rank(worlds, world):
    for r in worlds[world]:
        for name, want in r["want"].items():
            assert same(r["got"][name], want), (world, name, r["got"][name], want)
        assert math.isnan(r["got"]["peak"][0]) and r["got"]["peak"][3] == -math.inf  # rank 1's NaN survives MAX
        assert r["dtypes"]["count"] == "torch.int64"  # reduced in float64, copied back exactly
        assert r["got"]["failures"] == [0.0, float(world > 2)]  # only rank 2 failed


def test_each_rank_sends_the_same_bytes_at_every_world_size(worlds):
    sent = {world: [r["sent"] for r in ranks] for world, ranks in worlds.items()}
    first = sent[2][0]
    assert [s["op"] for s in first] == ["RedOpType.SUM", "RedOpType.MAX"] and worlds[2][0]["collectives"] == 2
    # SUM: count 3 + total 4 + failures 2, then the NaN counts of peak 4, low 3, times 2; MAX: peak, low, times
    assert [s["numel"] for s in first] == [3 + 4 + 2 + 4 + 3 + 2, 4 + 3 + 2]
    assert all(s["bytes"] == 8 * s["numel"] for s in first)  # float64
    assert all(per_rank == first for ranks in sent.values() for per_rank in ranks)
