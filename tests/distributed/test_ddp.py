"""Real 2-process DDP on CPU (gloo): two all_reduces per scheduled step, same decisions on both ranks, rank 0 writes."""

import json
from pathlib import Path

import pytest

from tests.helpers.ranks import run_ranks

SCRIPT = Path(__file__).with_name("ddp_fit.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    done = run_ranks(SCRIPT, out, timeout=300)  # a deadlock would end here, in the timeout
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, results, done.stderr


def test_two_fixed_size_all_reduces_per_scheduled_step_on_every_rank(ranks):
    _, results, _ = ranks
    for r in results:
        assert r["world"] == 2 and r["global_step"] == 8
        # at attach (step 0): the models, then the schedules compared once. Schedule every(2): steps 1, 2, 4, 6, 8;
        # two all_reduces each (SUM, MAX) for all five probes, none on other steps; at step 1 one more, tiny: every
        # rank holds the rows that the plateau probes (collapse, rank) take from training
        assert r["collectives"] == {"0": 2, "1": 3, "2": 2, "4": 2, "6": 2, "8": 2}
        assert r["kinds"] == ["all_reduce"]


def test_both_ranks_reach_the_same_decisions_and_values(ranks):
    _, (r0, r1), _ = ranks
    assert r0["alerts"] == r1["alerts"]
    assert [(rule, step) for rule, step, _ in r0["alerts"]] == [("marker", 1), ("probe_failed", 4)]
    assert r0["callback_metrics"] == r1["callback_metrics"]
    # the summed state counts both ranks' tokens: 2 ranks x 4 rows x 48 tokens (last logged at step 2)
    assert r0["callback_metrics"]["mechmon/flaky/tokens"] == 2 * 4 * 48


def test_probe_failing_on_one_rank_is_disabled_on_both_without_deadlock(ranks):
    _, (r0, r1), stderr = ranks
    assert r0["disabled"] == r1["disabled"] == ["flaky"]
    assert "probe 'flaky' raised RuntimeError: only rank 1 sees this on rank 1" in stderr
    assert "raised on 1 rank(s), first rank 1" in r0["alerts"][1][2]
    assert r0["hooks"] == r1["hooks"] == 0


def test_only_rank_zero_writes_tensorboard_files(ranks):
    out, (r0, r1), _ = ranks
    files = sorted(out.rglob("events.out.tfevents.*"))
    assert len(files) == 1 and files[0].name.split(".")[-2] == str(r0["pid"]) != str(r1["pid"])
