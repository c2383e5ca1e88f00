"""Real 2-process gloo DDP, plain loop: two all_reduces per scheduled step, identical values, rank 0 writes."""

import json
from pathlib import Path

from tests.helpers.ranks import run_ranks

SCRIPT = Path(__file__).with_name("plain_ddp.py")


def test_plain_loop_under_ddp(tmp_path):
    done = run_ranks(SCRIPT, tmp_path, timeout=300)  # a deadlock would end here, in the timeout
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["adapter"] == "StructuralAdapter"  # the nanoGPT-shaped model found inside the DDP wrapper
        # attach: the models and the schedules compared (step 0); every(2) over 6 steps, none otherwise; step 1:
        # the collapse probe's rows, taken from training, held on every rank
        assert r["collectives"] == {"0": 2, "1": 3, "2": 2, "4": 2, "6": 2}
        assert r["hooks_after"] == 0 and r["hooks_during"]["3"] == r["hooks_during"]["5"] == 0
        assert r["hooks_during"]["2"] > 0
    assert r0["latest"] == r1["latest"] and r0["alerts"] == r1["alerts"] == [["marker", 1]]
    assert "mechmon/repr_collapse/mean_cos" in r0["latest"] and "mechmon/induction/score_max" in r0["latest"]
    files = sorted(tmp_path.rglob("events.out.tfevents.*"))
    assert len(files) == 1 and files[0].name.split(".")[-2] == str(r0["pid"])


def test_a_budget_thins_both_ranks_alike(tmp_path):
    done = run_ranks(SCRIPT, tmp_path, 0.01, timeout=300)  # ranks that disagreed would hang: the timeout
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["collectives"] == r1["collectives"] and r0["latest"] == r1["latest"]
    evaluated = [s for s in r0["collectives"] if s != "0"]  # step 0: the schedules compared at attach
    assert len(evaluated) < 4  # fewer than the 4 evaluations of every(2) over 6 steps
    assert r0["latest"]["mechmon/monitor/stride"] >= 2
